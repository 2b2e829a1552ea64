"""Image splits: the in-memory form every stage reads and writes (uint8 NHWC images, labels, ids)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from selftrain import artifacts

SPLITS = ("labeled", "unlabeled", "val", "test")
OPTIONAL_SPLITS = ("holdout",)  # images no split uses; the -A robustness set is filtered from them
UNLABELED = -1  # label value of an image whose label is withheld


class DataError(ValueError):
    """Input data is missing, unreadable or laid out wrongly; the message names the file or folder."""


@dataclass(frozen=True)
class Split:
    images: np.ndarray  # uint8, (N, H, W, C)
    labels: np.ndarray  # int64, (N,); UNLABELED where withheld
    ids: np.ndarray  # str, (N,): where each image came from
    classes: tuple[str, ...]

    def __post_init__(self) -> None:
        n = len(self.images)
        if self.images.ndim != 4 or self.images.dtype != np.uint8:
            raise DataError(f"images must be uint8 (N, H, W, C), got {self.images.dtype} {self.images.shape}")
        if len(self.labels) != n or len(self.ids) != n:
            raise DataError(f"split has {n} images but {len(self.labels)} labels and {len(self.ids)} ids")

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, rows: np.ndarray) -> Split:
        return Split(self.images[rows], self.labels[rows], self.ids[rows], self.classes)


def save_split(uri: str, split: Split) -> None:
    artifacts.save_arrays(
        uri,
        images=split.images,
        labels=split.labels,
        ids=split.ids.astype(str),
        classes=np.array(split.classes, dtype=str),
    )


def load_split(data_uri: str, name: str) -> Split:
    """Load one named split from a `prepare` output directory."""
    if name not in SPLITS + OPTIONAL_SPLITS:
        raise ValueError(f"unknown split '{name}', expected one of {SPLITS + OPTIONAL_SPLITS}")
    artifacts.require_complete(data_uri)
    return read_split(artifacts.join(data_uri, f"{name}.npz"))


def read_split(uri: str) -> Split:
    """A split saved by save_split at `uri`."""
    a = artifacts.load_arrays(uri)
    return Split(a["images"], a["labels"].astype(np.int64), a["ids"], tuple(str(c) for c in a["classes"]))


def split_column(data_uri: str, name: str, column: str) -> artifacts.NpzColumn:
    """One array of a split (images, labels or ids), to read in row batches without loading the split."""
    artifacts.require_complete(data_uri)
    return artifacts.npz_column(artifacts.join(data_uri, f"{name}.npz"), column)


def split_classes(data_uri: str, name: str) -> tuple[str, ...]:
    """The class names of one split, read without its images."""
    classes = split_column(data_uri, name, "classes")
    return tuple(str(c) for batch in classes.batches(slice(None), max(classes.shape[0], 1)) for c in batch)


def has_split(data_uri: str, name: str) -> bool:
    return artifacts.exists(artifacts.join(data_uri, f"{name}.npz"))
