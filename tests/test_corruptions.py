"""The -C corruptions: deterministic, shape/dtype-preserving, and harder with severity for a trained model."""

import numpy as np
import pytest
import torch
from torch import nn

from selftrain.data import fashion_mnist
from selftrain.robustness.corruptions import CORRUPTIONS, SEVERITIES, corrupt


@pytest.fixture(scope="module")
def fmnist():
    train_x, train_y, test_x, test_y = fashion_mnist.load()
    return train_x, train_y, test_x, test_y


def test_the_fifteen_corruptions():
    assert len(CORRUPTIONS) == 15 and "jpeg_compression" in CORRUPTIONS and "frost" in CORRUPTIONS


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_deterministic_and_shape_preserving(fmnist, name):
    images = fmnist[2][:16]
    rgb = np.repeat(fmnist[2][16:20], 3, axis=3)
    a, b = corrupt(images, name, 3, seed=7), corrupt(images, name, 3, seed=7)
    assert a.dtype == np.uint8 and a.shape == images.shape
    assert np.array_equal(a, b), "same seed must give byte-identical images"
    assert not np.array_equal(a, images), "severity 3 must change the images"
    assert corrupt(rgb, name, 5, seed=7).shape == rgb.shape
    assert np.array_equal(images, fmnist[2][:16]), "the input must not be modified"


def test_seed_changes_random_corruptions(fmnist):
    images = fmnist[2][:16]
    assert not np.array_equal(corrupt(images, "gaussian_noise", 2, 0), corrupt(images, "gaussian_noise", 2, 1))
    # deterministic ones do not depend on the seed
    assert np.array_equal(corrupt(images, "contrast", 2, 0), corrupt(images, "contrast", 2, 1))


def test_bad_input_is_refused(fmnist):
    with pytest.raises(ValueError, match="unknown corruption 'rain'"):
        corrupt(fmnist[2][:2], "rain", 1, 0)
    with pytest.raises(ValueError, match="severity must be 1-5"):
        corrupt(fmnist[2][:2], "fog", 6, 0)
    with pytest.raises(ValueError, match="uint8"):
        corrupt(fmnist[2][:2].astype(np.float32), "fog", 1, 0)


def _small_trained_model(train_x, train_y):
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 7 * 7, 10),
    )
    opt = torch.optim.Adam(model.parameters(), 2e-3)
    x = torch.tensor(train_x[:6000]).permute(0, 3, 1, 2).float() / 255
    y = torch.from_numpy(train_y[:6000]).long()
    for _ in range(2):
        for i in range(0, len(x), 100):
            loss = nn.functional.cross_entropy(model(x[i : i + 100]), y[i : i + 100])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def _error(model, images, labels):
    with torch.no_grad():
        pred = model(torch.tensor(images).permute(0, 3, 1, 2).float() / 255).argmax(1).numpy()
    return float((pred != labels).mean())


def test_error_rises_with_severity(fmnist):
    train_x, train_y, test_x, test_y = fmnist
    model = _small_trained_model(train_x, train_y)
    images, labels = test_x[:400], test_y[:400]
    clean = _error(model, images, labels)
    assert clean < 0.25, f"the small model did not train (clean error {clean:.2f})"
    errors = np.array(
        [[_error(model, corrupt(images, name, s, 0), labels) for s in SEVERITIES] for name in CORRUPTIONS]
    )
    per_severity = errors.mean(axis=0)
    assert np.all(np.diff(per_severity) > 0), f"mean error over corruptions must rise with severity: {per_severity}"
    assert per_severity[0] > clean
    # per corruption, monotone within noise (400 images: a standard error of ~2 points): none gets easier,
    # and nearly all get clearly harder
    for name, row in zip(CORRUPTIONS, errors):
        assert row[-1] >= row[0] - 0.02, f"{name} got easier with severity: {row}"
    harder = [name for name, row in zip(CORRUPTIONS, errors) if row[-1] > row[0] + 0.02]
    assert len(harder) >= 13, f"only {harder} are clearly harder at severity 5 than 1:\n{errors.round(3)}"
