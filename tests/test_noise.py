"""Training noise is real noise; inference has none."""
import numpy as np
import torch
import torch.nn.functional as F

from selftrain.noise import ImageDataset, clean_batch, flip_crop, randaugment


def test_flip_crop_outputs_are_crops_of_the_padded_or_flipped_image():
    x = torch.randint(0, 256, (16, 1, 28, 28), dtype=torch.uint8)
    out = flip_crop(x, torch.Generator().manual_seed(0))
    assert out.shape == (16, 1, 28, 28)
    padded = F.pad(x.float(), (2, 2, 2, 2), mode="reflect")
    flipped = padded.flip(3)
    seen_flip = set()
    for i in range(16):
        candidates = {
            (f, dy, dx)
            for f, src in ((False, padded), (True, flipped))
            for dy in range(5)
            for dx in range(5)
            if torch.equal(src[i, :, dy : dy + 28, dx : dx + 28], out[i])
        }
        assert candidates, f"image {i} is not a crop of its padded or flipped self"
        seen_flip |= {f for f, _, _ in candidates}
    assert seen_flip == {False, True}
    again = flip_crop(x, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)
    assert not torch.equal(out, flip_crop(x, torch.Generator().manual_seed(1)))


def test_randaugment_changes_images_and_keeps_shape_and_dtype():
    imgs = np.random.default_rng(0).integers(0, 256, (8, 28, 28, 1), dtype=np.uint8)
    ds = ImageDataset(imgs, np.arange(8), randaugment("rand-m9-n2-mstd0.5", 28, 1))
    out = torch.stack([ds[i][0] for i in range(8)])
    assert out.dtype == torch.uint8 and out.shape == (8, 1, 28, 28)
    assert not torch.equal(out, torch.from_numpy(imgs).permute(0, 3, 1, 2))


def test_clean_batch_is_a_fixed_function_of_the_pixels():
    imgs = np.random.default_rng(0).integers(0, 256, (4, 28, 28, 1), dtype=np.uint8)
    a, b = clean_batch(imgs), clean_batch(imgs)
    assert torch.equal(a, b)
    assert float(a.min()) >= -1 and float(a.max()) <= 1
    torch.testing.assert_close(a[0, 0], torch.from_numpy(imgs[0, ..., 0]).float() / 127.5 - 1)
