"""A user's own images: class-per-folder trees (labeled, val, test) and a flat-or-nested folder of unlabeled images.

Any fsspec URI works (local path, s3://bucket/prefix). Images are decoded with Pillow as an image viewer shows
them (EXIF orientation applied, 16-bit images scaled to 8 bits), converted to the configured channel count and
resized to the configured square size, so any mode and any size is accepted.

Reading never stops at the first bad file: every problem of the whole tree is collected (`Problem`), so
one run of `selftrain check-data` (or `prepare`) names them all. Only regular files are read, each up to
`data.max_file_mb`: a FIFO, a device or an endless file cannot hang or exhaust the reader. Hidden entries (a name
starting with '.', e.g. `.ipynb_checkpoints/`) are left out and listed; symlinked folders are followed.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
from dataclasses import dataclass
from typing import Any

import fsspec
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from selftrain.data import UNLABELED, DataError, Split

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def printable(text: str) -> str:
    """`text` safe to print on any terminal: a file name's undecodable bytes (kept by Python as surrogates) escaped."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


@dataclass(frozen=True)
class Problem:
    """One bad file or folder and why, in words. `skippable`: leaving it out still leaves a usable split
    (`data.skip_bad`); a missing folder or a labeled class without images is not. `ignored`: left out by rule (a
    hidden folder), listed so nobody wonders where it went, never an error."""

    path: str
    reason: str
    skippable: bool = True
    ignored: bool = False

    def __str__(self) -> str:
        return f"{printable(self.path)}: {self.reason}"


class BadInput(DataError):
    """The input data has problems; all of them are in `problems`, with what was left out by rule (`ignored`)."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        errors = [p for p in problems if not p.ignored]
        lines = "\n".join(f"  {p}" for p in errors)
        fix = (
            "fix or remove them, or set data.skip_bad: true to leave the bad files out"
            if all(p.skippable for p in errors)
            else "fix them (data.skip_bad cannot leave out a missing folder, overlapping folders or a labeled class "
            "without images)"
        )
        super().__init__(f"{len(errors)} problem(s) in the input data:\n{lines}\n{fix}")


@dataclass(frozen=True)
class File:
    """An image file found by a listing: what `prepare` reads, and what tells DVC and Prefect that it changed."""

    path: str
    size: int
    version: str  # its mtime on a local disk, its ETag on S3: changes when the file does


@dataclass(frozen=True)
class Read:
    """A folder's images as a split, with the content hash (blake2b of the file's bytes) of each row."""

    split: Split
    digests: list[str]


def _folder(uri: str, problems: list[Problem]) -> tuple[fsspec.AbstractFileSystem, str] | None:
    fs, path = fsspec.core.url_to_fs(uri)
    if not fs.exists(path):
        problems.append(Problem(uri, "folder not found", skippable=False))
        return None
    if not fs.isdir(path):
        problems.append(Problem(uri, "is a file; expected a folder of images", skippable=False))
        return None
    return fs, path.rstrip("/")


def _hidden(name: str) -> bool:
    return name.rsplit("/", 1)[-1].startswith(".")


def _resolve(
    fs: fsspec.AbstractFileSystem, name: str, info: dict[str, Any], problems: list[Problem]
) -> dict[str, Any] | None:
    """`info` of a listed entry, a symlink's replaced by its target's (fsspec lists a local symlink as 'other')."""
    if not info.get("islink"):
        return info
    try:
        return {**fs.info(name), "islink": True}  # fsspec's info() of a path follows the link
    except OSError as e:
        why = "a symlink loop" if e.errno == errno.ELOOP else "a symlink to nothing"
        problems.append(Problem(name, f"{why}: left out"))
        return None


def _real(fs: fsspec.AbstractFileSystem, path: str) -> str:
    return os.path.realpath(path) if _is_local(fs) else path


def _is_local(fs: fsspec.AbstractFileSystem) -> bool:
    return "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))


def list_images(
    fs: fsspec.AbstractFileSystem,
    root: str,
    problems: list[Problem],
    max_bytes: int,
    _seen: frozenset[str] = frozenset(),
) -> list[File]:
    """Every image file below `root` (any nesting), sorted, adding to `problems` what is left out and why: hidden
    entries (listed as ignored), non-regular files, files over `max_bytes`, broken or looping symlinks. Symlinked
    folders are followed (fsspec's find does not enter them), each real folder once."""
    seen = _seen | {_real(fs, root)}
    files: list[File] = []
    hidden: list[str] = []
    for name, info in sorted(fs.find(root, withdirs=True, detail=True).items()):
        name = name.rstrip("/")
        if name == root or any(name.startswith(h + "/") for h in hidden):
            continue
        if _hidden(name):
            hidden.append(name)
            if info["type"] == "directory" or name.lower().endswith(IMAGE_EXTENSIONS):
                problems.append(Problem(name, "hidden (its name starts with '.'): left out", ignored=True))
            continue
        if info["type"] == "directory":
            continue
        resolved = _resolve(fs, name, info, problems)
        if resolved is None:
            continue
        if resolved["type"] == "directory":  # a symlinked folder: find listed it as an entry and did not enter it
            real = _real(fs, name)
            if any(real == s or s.startswith(real + "/") for s in seen):
                problems.append(Problem(name, "a symlink to a folder that contains it (a loop): left out"))
            else:
                files += list_images(fs, name, problems, max_bytes, seen)
            continue
        if not name.lower().endswith(IMAGE_EXTENSIONS):
            continue
        if resolved["type"] != "file":
            problems.append(Problem(name, "not a regular file (a FIFO, a device or a socket): not read"))
        elif resolved["size"] > max_bytes:
            problems.append(
                Problem(
                    name,
                    f"{resolved['size'] / 2**20:.0f} MiB, over data.max_file_mb ({max_bytes / 2**20:.0f}): not read",
                )
            )
        else:
            version = resolved.get("ETag") or resolved.get("mtime") or resolved.get("LastModified") or ""
            files.append(File(name, int(resolved["size"]), str(version)))
    return sorted(files, key=lambda f: f.path)


def _pixels(img: Image.Image, channels: int) -> Image.Image:
    """`img` as 8-bit L or RGB, as a viewer shows it: 16-bit grey scaled (65535 -> 255), not clipped."""
    if img.mode.startswith("I"):  # I;16, I;16B, I (16-bit PNG and TIFF): 16-bit range
        arr = np.asarray(img).astype(np.float64) / 257.0
        img = Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), mode="L")
    return img.convert("L" if channels == 1 else "RGB")


def _decode(
    fs: fsspec.AbstractFileSystem, f: File, size: int, channels: int, max_bytes: int
) -> tuple[np.ndarray, str] | str:
    """The image as an array and the content hash of its bytes, or why it cannot be one."""
    try:
        with fs.open(f.path, "rb") as fh:
            raw = fh.read(max_bytes + 1)  # never more: a file that grew since the listing cannot exhaust memory
    except OSError as e:
        return f"cannot be read ({e.strerror or e})"
    if not raw:
        return "empty file (zero bytes)"
    if len(raw) > max_bytes:
        return f"over data.max_file_mb ({max_bytes / 2**20:.0f} MiB): not read"
    try:
        img: Image.Image = Image.open(io.BytesIO(raw))
        img.load()
        img = _pixels(ImageOps.exif_transpose(img), channels)
    except Image.DecompressionBombError as e:
        return f"too many pixels to decode safely ({e})"
    except UnidentifiedImageError:
        return "not an image (Pillow recognises no image format in it)"
    except (OSError, SyntaxError, ValueError) as e:
        # Pillow's messages for cut-short files say "truncated"; others (a broken chunk, a bad header, a colour mode
        # it cannot convert, e.g. LAB to grey) vary
        return f"truncated image ({e})" if "truncated" in str(e).lower() else f"corrupt or unconvertible image ({e})"
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BILINEAR)
    arr = np.asarray(img, dtype=np.uint8)
    return (arr[..., None] if channels == 1 else arr), hashlib.blake2b(raw, digest_size=16).hexdigest()


def _read_files(
    fs: fsspec.AbstractFileSystem, files: list[File], size: int, channels: int, max_bytes: int, problems: list[Problem]
) -> tuple[list[np.ndarray], list[str], list[str]]:
    images, kept, digests = [], [], []
    for f in files:
        out = _decode(fs, f, size, channels, max_bytes)
        if isinstance(out, str):
            problems.append(Problem(f.path, out))
        else:
            images.append(out[0])
            kept.append(f.path)
            digests.append(out[1])
    return images, kept, digests


def _split(
    images: list[np.ndarray], labels: list[int], ids: list[str], classes: tuple[str, ...], size: int, channels: int
) -> Split:
    stacked = np.stack(images) if images else np.zeros((0, size, size, channels), dtype=np.uint8)
    return Split(stacked, np.array(labels, dtype=np.int64), np.array(ids, dtype=str), classes)


def class_folders(fs: fsspec.AbstractFileSystem, root: str, problems: list[Problem]) -> dict[str, str]:
    """Class name -> its folder under `root`: hidden folders left out (listed), symlinked folders followed; an image
    lying beside the class folders is a problem."""
    found: dict[str, str] = {}
    for e in fs.ls(root, detail=True):
        name = e["name"].rstrip("/")
        if _hidden(name):
            if e["type"] == "directory" or name.lower().endswith(IMAGE_EXTENSIONS):
                problems.append(Problem(name, "hidden (its name starts with '.'): left out, not a class", ignored=True))
            continue
        resolved = _resolve(fs, name, e, problems)
        if resolved is None:
            continue
        if resolved["type"] == "directory":
            found[name.rsplit("/", 1)[-1]] = name
        elif name.lower().endswith(IMAGE_EXTENSIONS):
            problems.append(Problem(name, f"image outside the class folders: move it into one ({root}/<class>/...)"))
    return dict(sorted(found.items()))


def read_class_folders(
    uri: str,
    size: int,
    channels: int,
    max_bytes: int,
    problems: list[Problem],
    classes: tuple[str, ...] | None = None,
    *,
    labeled: bool = False,
) -> Read | None:
    """Read `uri/<class>/<image>`, adding every problem to `problems`; `classes` fixes the class list (val/test
    must use the labeled set's classes). None when the folder itself is unusable."""
    found_fs = _folder(uri, problems)
    if found_fs is None:
        return None
    fs, root = found_fs
    found = class_folders(fs, root, problems)
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
    digests: list[str] = []
    for label, name in enumerate(classes):
        if name not in found:
            continue
        files = list_images(fs, found[name], problems, max_bytes)
        if not files:
            # a labeled class with no images cannot be learned; an empty val/test class only has nothing to measure
            problems.append(
                Problem(
                    f"{root}/{name}",
                    f"empty class folder (no {', '.join(IMAGE_EXTENSIONS)} files)",
                    skippable=not labeled,
                )
            )
            continue
        read, kept, hashes = _read_files(fs, files, size, channels, max_bytes, problems)
        if labeled and not read:
            problems.append(Problem(f"{root}/{name}", "no readable image in this labeled class", skippable=False))
        images += read
        labels += [label] * len(read)
        ids += [f[len(root) + 1 :] for f in kept]
        digests += hashes
    return Read(_split(images, labels, ids, classes, size, channels), digests)


def read_image_folder(
    uri: str, size: int, channels: int, max_bytes: int, classes: tuple[str, ...], problems: list[Problem]
) -> Read | None:
    """Read every image below `uri` (any nesting) as unlabeled, adding every problem to `problems`."""
    found_fs = _folder(uri, problems)
    if found_fs is None:
        return None
    fs, root = found_fs
    files = list_images(fs, root, problems, max_bytes)
    if not files:
        problems.append(
            Problem(uri, f"unlabeled folder holds no images ({', '.join(IMAGE_EXTENSIONS)})", skippable=False)
        )
        return None
    images, kept, digests = _read_files(fs, files, size, channels, max_bytes, problems)
    return Read(
        _split(images, [UNLABELED] * len(images), [f[len(root) + 1 :] for f in kept], classes, size, channels), digests
    )


def fingerprint(uri: str, max_bytes: int) -> dict[str, Any]:
    """What changes when any image below `uri` is added, removed or rewritten: the count, the bytes and a sha256
    over every image's (path, size, mtime or ETag), from a listing alone (no image is read)."""
    problems: list[Problem] = []
    found_fs = _folder(uri, problems)
    if found_fs is None:
        return {"uri": uri, "missing": True}
    fs, root = found_fs
    files = list_images(fs, root, problems, max_bytes)
    digest = hashlib.sha256()
    for f in files:
        digest.update(f"{f.path[len(root) + 1 :]}\t{f.size}\t{f.version}\n".encode("utf-8", "surrogateescape"))
    for p in problems:  # what was left out, and why, is part of what prepare would see
        digest.update(f"{p.path}\t{p.reason}\n".encode("utf-8", "surrogateescape"))
    return {"uri": uri, "files": len(files), "bytes": sum(f.size for f in files), "sha256": digest.hexdigest()}


def _location(uri: str) -> tuple[str, str]:
    fs, path = fsspec.core.url_to_fs(uri)
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol, (os.path.realpath(path) if _is_local(fs) else path.rstrip("/"))


def overlapping(folders: dict[str, str]) -> list[Problem]:
    """One problem per pair of split folders that are the same folder or one inside the other (test images would be
    read into a training split): local paths compared after resolving symlinks."""
    where = {name: _location(uri) for name, uri in folders.items()}
    problems = []
    names = list(folders)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            (pa, la), (pb, lb) = where[a], where[b]
            if pa != pb:
                continue
            if la == lb:
                how = "is the same folder as"
            elif la.startswith(lb + "/"):
                how = "lies inside"
            elif lb.startswith(la + "/"):
                how = "contains"
            else:
                continue
            problems.append(
                Problem(
                    folders[a],
                    f"the {a} folder {how} the {b} folder ({folders[b]}): each split needs its own folder",
                    skippable=False,
                )
            )
    return problems
