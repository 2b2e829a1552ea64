"""A user's own images: class-per-folder trees (labeled, val, test) and a flat-or-nested folder of unlabeled images.

Any fsspec URI works (local path, s3://bucket/prefix). Images are decoded with Pillow,
converted to the configured channel count and resized to the configured square size.
"""

from __future__ import annotations

import io

import fsspec
import numpy as np
from PIL import Image, UnidentifiedImageError

from selftrain.data import UNLABELED, DataError, Split

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def _fs(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    fs, path = fsspec.core.url_to_fs(uri)
    if not fs.exists(path):
        raise DataError(f"folder '{uri}' not found")
    if not fs.isdir(path):
        raise DataError(f"'{uri}' is a file; expected a folder of images")
    return fs, path.rstrip("/")


def _decode(fs: fsspec.AbstractFileSystem, path: str, size: int, channels: int) -> np.ndarray:
    try:
        with fs.open(path, "rb") as f:
            img: Image.Image = Image.open(io.BytesIO(f.read()))
            img.load()
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise DataError(f"cannot read image '{path}': {e}") from None
    img = img.convert("L" if channels == 1 else "RGB")
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BILINEAR)
    arr = np.asarray(img, dtype=np.uint8)
    return arr[..., None] if channels == 1 else arr


def _images_under(fs: fsspec.AbstractFileSystem, path: str) -> list[str]:
    return sorted(p for p in fs.find(path) if p.lower().endswith(IMAGE_EXTENSIONS))


def read_class_folders(uri: str, size: int, channels: int, classes: tuple[str, ...] | None = None) -> Split:
    """Read `uri/<class>/<image>`; `classes` fixes the class list (val/test must use the labeled set's classes)."""
    fs, root = _fs(uri)
    entries = fs.ls(root, detail=True)
    stray = [e["name"] for e in entries if e["type"] != "directory" and e["name"].lower().endswith(IMAGE_EXTENSIONS)]
    if stray:
        raise DataError(
            f"'{uri}' must hold one folder per class, but image '{stray[0]}' lies at its top level; move images into class folders (e.g. labeled/cat/001.png)"
        )
    found = sorted(e["name"].rstrip("/").rsplit("/", 1)[-1] for e in entries if e["type"] == "directory")
    if not found:
        raise DataError(f"'{uri}' has no class folders; expected '{uri}/<class name>/<images>'")
    if classes is None:
        classes = tuple(found)
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise DataError(f"'{uri}' has class folder(s) {unknown} not among the labeled classes {list(classes)}")
    images, labels, ids = [], [], []
    for label, name in enumerate(classes):
        files = _images_under(fs, f"{root}/{name}") if name in found else []
        if name in found and not files:
            raise DataError(f"class folder '{root}/{name}' has no images ({', '.join(IMAGE_EXTENSIONS)})")
        for f in files:
            images.append(_decode(fs, f, size, channels))
            labels.append(label)
            ids.append(f[len(root) + 1 :])
    if not images:
        raise DataError(f"'{uri}' holds no images")
    return Split(np.stack(images), np.array(labels, dtype=np.int64), np.array(ids, dtype=str), classes)


def read_image_folder(uri: str, size: int, channels: int, classes: tuple[str, ...]) -> Split:
    """Read every image below `uri` (any nesting) as unlabeled."""
    fs, root = _fs(uri)
    files = _images_under(fs, root)
    if not files:
        raise DataError(f"unlabeled folder '{uri}' holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    images = np.stack([_decode(fs, f, size, channels) for f in files])
    return Split(images, np.full(len(files), UNLABELED, dtype=np.int64), np.array([f[len(root) + 1 :] for f in files]), classes)
