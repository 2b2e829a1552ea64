"""A user's own images: class-per-folder trees (labeled, val, test) and a flat-or-nested folder of unlabeled images.

Any fsspec URI works (local path, s3://bucket/prefix). Images are decoded with Pillow,
converted to the configured channel count and resized to the configured square size, so any mode
and any size is accepted.

Reading never stops at the first bad file: every problem of the whole tree is collected (`Problem`), so
one run of `selftrain check-data` (or `prepare`) names them all.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import fsspec
import numpy as np
from PIL import Image, UnidentifiedImageError

from selftrain.data import UNLABELED, DataError, Split

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


@dataclass(frozen=True)
class Problem:
    """One bad file or folder and why, in words. `skippable`: leaving it out still leaves a usable split
    (`data.skip_bad`); a missing folder or a labeled class without images is not."""

    path: str
    reason: str
    skippable: bool = True

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


class BadInput(DataError):
    """The input data has problems; all of them are in `problems`."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        lines = "\n".join(f"  {p}" for p in problems)
        fix = (
            "fix or remove them, or set data.skip_bad: true to leave the bad files out"
            if all(p.skippable for p in problems)
            else "fix them (data.skip_bad cannot leave out a missing folder or a labeled class without images)"
        )
        super().__init__(f"{len(problems)} problem(s) in the input data:\n{lines}\n{fix}")


def _folder(uri: str, problems: list[Problem]) -> tuple[fsspec.AbstractFileSystem, str] | None:
    fs, path = fsspec.core.url_to_fs(uri)
    if not fs.exists(path):
        problems.append(Problem(uri, "folder not found", skippable=False))
        return None
    if not fs.isdir(path):
        problems.append(Problem(uri, "is a file; expected a folder of images", skippable=False))
        return None
    return fs, path.rstrip("/")


def _decode(fs: fsspec.AbstractFileSystem, path: str, size: int, channels: int) -> np.ndarray | str:
    """The image as an array, or why it cannot be one."""
    try:
        with fs.open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        return f"cannot be read ({e.strerror or e})"
    if not raw:
        return "empty file (zero bytes)"
    try:
        img: Image.Image = Image.open(io.BytesIO(raw))
        img.load()
    except UnidentifiedImageError:
        return "not an image (Pillow recognises no image format in it)"
    except (OSError, SyntaxError, ValueError) as e:
        # Pillow's messages for cut-short files say "truncated"; others (a broken chunk, a bad header) vary
        return f"truncated image ({e})" if "truncated" in str(e).lower() else f"corrupt image ({e})"
    img = img.convert("L" if channels == 1 else "RGB")
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BILINEAR)
    arr = np.asarray(img, dtype=np.uint8)
    return arr[..., None] if channels == 1 else arr


def _read_files(fs: fsspec.AbstractFileSystem, files: list[str], size: int, channels: int, problems: list[Problem]) -> tuple[list[np.ndarray], list[str]]:
    images, kept = [], []
    for f in files:
        img = _decode(fs, f, size, channels)
        if isinstance(img, str):
            problems.append(Problem(f, img))
        else:
            images.append(img)
            kept.append(f)
    return images, kept


def _images_under(fs: fsspec.AbstractFileSystem, path: str) -> list[str]:
    return sorted(p for p in fs.find(path) if p.lower().endswith(IMAGE_EXTENSIONS))


def _split(images: list[np.ndarray], labels: list[int], ids: list[str], classes: tuple[str, ...], size: int, channels: int) -> Split:
    stacked = np.stack(images) if images else np.zeros((0, size, size, channels), dtype=np.uint8)
    return Split(stacked, np.array(labels, dtype=np.int64), np.array(ids, dtype=str), classes)


def read_class_folders(
    uri: str, size: int, channels: int, problems: list[Problem], classes: tuple[str, ...] | None = None, *, labeled: bool = False
) -> Split | None:
    """Read `uri/<class>/<image>`, adding every problem to `problems`; `classes` fixes the class list (val/test
    must use the labeled set's classes). None when the folder itself is unusable."""
    found_fs = _folder(uri, problems)
    if found_fs is None:
        return None
    fs, root = found_fs
    entries = fs.ls(root, detail=True)
    for e in entries:
        if e["type"] != "directory" and e["name"].lower().endswith(IMAGE_EXTENSIONS):
            problems.append(Problem(e["name"], f"image outside the class folders: move it into one ({uri}/<class>/...)"))
    found = sorted(e["name"].rstrip("/").rsplit("/", 1)[-1] for e in entries if e["type"] == "directory")
    if not found:
        problems.append(Problem(uri, "no class folders; expected <folder>/<class name>/<images>", skippable=False))
        return None
    if classes is None:
        classes = tuple(found)
    for name in sorted(set(found) - set(classes)):
        problems.append(Problem(f"{root}/{name}", f"class folder not among the labeled classes {list(classes)}"))
    images: list[np.ndarray] = []
    labels: list[int] = []
    ids: list[str] = []
    for label, name in enumerate(classes):
        if name not in found:
            continue
        files = _images_under(fs, f"{root}/{name}")
        if not files:
            # a labeled class with no images cannot be learned; an empty val/test class only has nothing to measure
            problems.append(Problem(f"{root}/{name}", f"empty class folder (no {', '.join(IMAGE_EXTENSIONS)} files)", skippable=not labeled))
            continue
        read, kept = _read_files(fs, files, size, channels, problems)
        if labeled and not read:
            problems.append(Problem(f"{root}/{name}", "no readable image in this labeled class", skippable=False))
        images += read
        labels += [label] * len(read)
        ids += [f[len(root) + 1 :] for f in kept]
    return _split(images, labels, ids, classes, size, channels)


def read_image_folder(uri: str, size: int, channels: int, classes: tuple[str, ...], problems: list[Problem]) -> Split | None:
    """Read every image below `uri` (any nesting) as unlabeled, adding every problem to `problems`."""
    found_fs = _folder(uri, problems)
    if found_fs is None:
        return None
    fs, root = found_fs
    files = _images_under(fs, root)
    if not files:
        problems.append(Problem(uri, f"unlabeled folder holds no images ({', '.join(IMAGE_EXTENSIONS)})", skippable=False))
        return None
    images, kept = _read_files(fs, files, size, channels, problems)
    return _split(images, [UNLABELED] * len(images), [f[len(root) + 1 :] for f in kept], classes, size, channels)
