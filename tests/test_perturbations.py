"""-P sequences and the -A hard-set filter: deterministic, shape-preserving, and as the reference code pairs frames."""

import numpy as np
import pytest

from selftrain.data import fashion_mnist
from selftrain.robustness.hard_set import select_hard
from selftrain.robustness.metrics import NOISE_SEQUENCES
from selftrain.robustness.perturbations import PERTURBATIONS, perturbation_sequences


@pytest.fixture(scope="module")
def images():
    return fashion_mnist.load()[2][:12]


def test_the_perturbation_kinds():
    assert set(PERTURBATIONS) == {
        "gaussian_noise",
        "shot_noise",
        "motion_blur",
        "zoom",
        "translate",
        "rotate",
        "tilt",
        "scale",
        "brightness",
    }
    assert set(NOISE_SEQUENCES) <= set(PERTURBATIONS)


@pytest.mark.parametrize("name", PERTURBATIONS)
def test_sequences_are_deterministic_and_shape_preserving(images, name):
    a = perturbation_sequences(images, name, frames=10, seed=4)
    assert a.dtype == np.uint8 and a.shape == (12, 10, 28, 28, 1)
    assert np.array_equal(a, perturbation_sequences(images, name, frames=10, seed=4)), (
        "same seed must give byte-identical frames"
    )
    assert not np.array_equal(a[:, -1], images), "the last frame must differ from the clean image"
    # every sequence starts from the clean image (Hendrycks' make_cifar_p.py: `seq.append(img)` first, noise kinds too)
    assert np.array_equal(a[:, 0], images)
    if name in NOISE_SEQUENCES:
        # then independent draws of one strength: each noisy frame differs from the clean one and from the others
        assert all(not np.array_equal(a[:, j], images) for j in range(1, 10))
        assert not np.array_equal(a[:, 1], a[:, 2])
    else:
        # a gradual perturbation moves away from the clean image frame by frame
        dist = [np.abs(a[:, j].astype(int) - images.astype(int)).mean() for j in range(10)]
        assert dist[-1] > dist[1] > 0, f"{name}: distance to the clean image does not grow ({dist})"


def test_bad_sequence_requests_are_refused(images):
    with pytest.raises(ValueError, match="unknown perturbation 'spin'"):
        perturbation_sequences(images, "spin", 10, 0)
    with pytest.raises(ValueError, match="at least 2 frames"):
        perturbation_sequences(images, "zoom", 1, 0)


def test_hard_set_keeps_only_what_the_reference_gets_wrong():
    labels = np.array([0, 1, 2, 3, 4, 5, 6, 7])
    preds = np.array([0, 2, 2, 0, 4, 1, 6, 0])
    assert select_hard(labels, preds, size=10, seed=0).tolist() == [1, 3, 5, 7]
    some = select_hard(labels, preds, size=2, seed=0)
    assert len(some) == 2 and set(some) <= {1, 3, 5, 7} and np.array_equal(some, np.sort(some))
    assert np.array_equal(some, select_hard(labels, preds, size=2, seed=0))
    with pytest.raises(ValueError, match="classifies all 8 pool images correctly"):
        select_hard(labels, labels, size=2, seed=0)
