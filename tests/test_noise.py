"""Training noise is real noise; inference has none."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from selftrain.inputs import clean_batch, normalize
from selftrain.noise import ImageDataset, flip_crop, pil_policy, train_batch
from selftrain.params import TrainParams


def test_flip_crop_at_scale_one_is_an_exact_shift_of_the_image_or_its_flip():
    x = torch.randint(1, 256, (16, 1, 28, 28), dtype=torch.uint8)
    out = flip_crop(x, (1.0, 1.0), torch.Generator().manual_seed(0))
    assert out.shape == (16, 1, 28, 28)
    padded = F.pad(x.float(), (2, 2, 2, 2))  # zero padding, pad = 28 // 14
    seen_flip = set()
    for i in range(16):
        candidates = {
            (f, dy, dx)
            for f, src in ((False, padded), (True, padded.flip(3)))
            for dy in range(5)
            for dx in range(5)
            if torch.allclose(src[i, :, dy : dy + 28, dx : dx + 28], out[i], atol=1e-3)
        }
        assert candidates, f"image {i} is not a shifted copy of itself or its flip"
        seen_flip |= {f for f, _, _ in candidates}
    assert seen_flip == {False, True}
    assert torch.equal(out, flip_crop(x, (1.0, 1.0), torch.Generator().manual_seed(0)))
    assert not torch.equal(out, flip_crop(x, (1.0, 1.0), torch.Generator().manual_seed(1)))


def test_large_scale_jitter_shrinks_and_enlarges():
    x = torch.full((64, 1, 28, 28), 200, dtype=torch.uint8)  # all-bright: black area = zero padding
    out = flip_crop(x, (0.5, 2.0), torch.Generator().manual_seed(0))
    covered = (out > 100).float().mean(dim=(1, 2, 3))
    assert covered.min() < 0.5  # shrunk towards 0.5x: most of the frame is padding
    assert (covered == 1).sum() > 10  # enlarged: the image fills the frame
    s1 = flip_crop(x, (0.8, 1.2), torch.Generator().manual_seed(0))
    assert (s1 > 100).float().mean(dim=(1, 2, 3)).min() > 0.5


@pytest.mark.parametrize("policy", ["s2", "s3", "s4", "noisy_student"])
def test_pil_policies_change_images_and_keep_shape_and_dtype(policy):
    imgs = np.random.default_rng(0).integers(0, 256, (8, 28, 28, 1), dtype=np.uint8)
    pil = pil_policy(TrainParams(augment=policy), 28, 1)
    ds = ImageDataset(imgs, np.arange(8), pil)
    out = torch.stack([ds[i][0] for i in range(8)])
    assert out.dtype == torch.uint8 and out.shape == (8, 1, 28, 28)
    assert not torch.equal(out, torch.from_numpy(imgs).permute(0, 3, 1, 2))


def test_policies_without_pil_noise():
    assert pil_policy(TrainParams(augment="s1"), 28, 1) is None
    assert pil_policy(TrainParams(augment="s4", randaugment_layers=0), 28, 1) is None
    x = torch.randint(0, 256, (4, 1, 28, 28), dtype=torch.uint8)
    assert torch.equal(train_batch(x, "none", torch.Generator()), normalize(x))


def test_clean_batch_is_a_fixed_function_of_the_pixels():
    imgs = np.random.default_rng(0).integers(0, 256, (4, 28, 28, 1), dtype=np.uint8)
    a, b = clean_batch(imgs), clean_batch(imgs)
    assert torch.equal(a, b)
    assert float(a.min()) >= -1 and float(a.max()) <= 1
    torch.testing.assert_close(a[0, 0], torch.from_numpy(imgs[0, ..., 0]).float() / 127.5 - 1)
