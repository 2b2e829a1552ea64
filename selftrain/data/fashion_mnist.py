"""Fashion-MNIST from its original IDX files: a Debian package's copy, a given folder, or the official download.

The IDX reader is written here rather than taken from torchvision because torchvision's
FashionMNIST insists on its own folder layout and checks the .gz files' md5, and Debian
recompresses them; we check the sha256 of the decompressed bytes instead, which is the
same whichever way the files were compressed.
"""

from __future__ import annotations

import gzip
import hashlib
import os
from pathlib import Path

import fsspec
import numpy as np

from selftrain.data import DataError

CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
# sha256 of the decompressed IDX bytes
FILES = {
    "train-images-idx3-ubyte.gz": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte.gz": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte.gz": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte.gz": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
KNOWN_DIRS = ("/usr/share/datasets/fashion-mnist",)  # Debian/Ubuntu: apt-get install dataset-fashion-mnist
OFFICIAL_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "selftrain" / "fashion-mnist"


def _has_all(directory: Path) -> bool:
    return all((directory / f).is_file() for f in FILES)


def _download(url: str, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        target = dest / name
        if target.is_file():
            continue
        tmp = target.with_suffix(".part")
        with fsspec.open(url.rstrip("/") + "/" + name, "rb") as src, open(tmp, "wb") as out:
            out.write(src.read())
        os.replace(tmp, target)


def locate(directory: str | None = None, url: str = OFFICIAL_URL) -> Path:
    """Find the four .gz files: `directory` if given, else known places, else download to the cache."""
    if directory is not None:
        d = Path(directory)
        if not _has_all(d):
            missing = [f for f in FILES if not (d / f).is_file()]
            raise DataError(f"data.fashion_mnist_dir '{d}' lacks {', '.join(missing)}")
        return d
    for d in (*map(Path, KNOWN_DIRS), CACHE_DIR):
        if _has_all(d):
            return d
    try:
        _download(url, CACHE_DIR)
    except Exception as e:  # any network or filesystem failure ends in the same advice
        raise DataError(
            f"Fashion-MNIST not found in {', '.join(KNOWN_DIRS)} or {CACHE_DIR}, and downloading from {url} failed "
            f"({type(e).__name__}: {e}). Install it (Debian/Ubuntu: apt-get install dataset-fashion-mnist), "
            "or put the four .gz files in a folder and set data.fashion_mnist_dir."
        ) from None
    return CACHE_DIR


def _read_idx(path: Path, expected_sha256: str) -> np.ndarray:
    try:
        raw = gzip.decompress(path.read_bytes())
    except (OSError, EOFError) as e:
        raise DataError(f"'{path}' is not a readable gzip file ({e}); delete it and fetch it again") from None
    digest = hashlib.sha256(raw).hexdigest()
    if digest != expected_sha256:
        raise DataError(
            f"'{path}' has sha256 {digest} after decompression, expected {expected_sha256}: corrupt or not "
            "Fashion-MNIST"
        )
    ndim = raw[3]  # IDX header: two zero bytes, a type byte (0x08 = uint8), the number of dimensions
    dims = np.frombuffer(raw, dtype=">u4", count=ndim, offset=4)
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(tuple(int(d) for d in dims))


def load(
    directory: str | None = None, url: str = OFFICIAL_URL
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Return (train_images, train_labels, test_images, test_labels); images uint8 (N, 28, 28, 1)."""
    d = locate(directory, url)
    arrays = [_read_idx(d / name, sha) for name, sha in FILES.items()]
    train_x, train_y, test_x, test_y = arrays
    return train_x[..., None], train_y.astype(np.int64), test_x[..., None], test_y.astype(np.int64)
