"""The four splits (labeled, unlabeled with labels withheld, val, test) and the optional holdout pool, deterministic for
a seed."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from selftrain.data import UNLABELED, DataError, Split, fashion_mnist, folders
from selftrain.params import DataParams

log = logging.getLogger("selftrain")


TRAINING = ("labeled", "unlabeled")
EVALUATION = ("val", "test", "holdout")  # holdout: the -A set is filtered from it


def make_splits(p: DataParams, seed: int) -> dict[str, Split]:
    """The splits; refuses input with any problem unless `data.skip_bad` leaves the bad files out."""
    return read_splits(p, seed)[0]


def read_splits(p: DataParams, seed: int) -> tuple[dict[str, Split], list[folders.Problem]]:
    """The splits and the problems left out of them: hidden folders always (listed, never an error), bad files and
    training images that duplicate an evaluation image only with `data.skip_bad`; otherwise any problem raises
    BadInput naming every one of them."""
    if p.source == "fashion_mnist":
        splits = _fashion_mnist(p, seed)
        check_splits(splits)
        return splits, []
    assert p.folders is not None  # enforced by DataParams
    uris = {name: uri for name, uri in p.folders.model_dump().items() if uri is not None}
    overlap = folders.overlapping(uris)
    problems = list(overlap)
    size, channels, cap = p.image_size, p.channels, p.max_file_mb * 2**20
    labeled = folders.read_class_folders(p.folders.labeled, size, channels, cap, problems, labeled=True)
    classes = labeled.split.classes if labeled is not None else None
    # every folder is read even when an earlier one is unusable, so one run names every problem
    read = {
        "labeled": labeled,
        "unlabeled": folders.read_image_folder(p.folders.unlabeled, size, channels, cap, classes or (), problems),
        "val": folders.read_class_folders(p.folders.val, size, channels, cap, problems, classes),
        "test": folders.read_class_folders(p.folders.test, size, channels, cap, problems, classes),
    }
    if p.folders.holdout:
        read["holdout"] = folders.read_class_folders(p.folders.holdout, size, channels, cap, problems, classes)
    found = {name: r for name, r in read.items() if r is not None}
    leaked = {} if overlap else _leaks(found, uris, problems)  # folders that overlap share every image: said once
    errors = [q for q in problems if not q.ignored]
    if errors and not (p.skip_bad and all(q.skippable for q in errors)):
        raise folders.BadInput(problems)
    if problems:
        log.warning("left out %d file(s) or folder(s):\n%s", len(problems), "\n".join(f"  {q}" for q in problems))
    splits = {name: r.split if name not in leaked else r.split.subset(leaked[name]) for name, r in found.items()}
    check_splits(splits)
    return splits, problems


def _leaks(
    read: dict[str, folders.Read], uris: dict[str, str], problems: list[folders.Problem]
) -> dict[str, np.ndarray]:
    """Training images (labeled, unlabeled) byte-identical to an evaluation image (val, test, holdout): one problem
    each, and per training split the rows to keep without them."""
    seen = {
        d: f"{uris[name]}/{i}"
        for name in EVALUATION
        if name in read
        for d, i in zip(read[name].digests, read[name].split.ids)
    }
    keep = {}
    for name in TRAINING:
        if name not in read:
            continue
        r = read[name]
        copies = [row for row, d in enumerate(r.digests) if d in seen]
        for row in copies:
            copy = seen[r.digests[row]]
            problems.append(
                folders.Problem(
                    f"{uris[name]}/{r.split.ids[row]}",
                    f"byte-identical to {copy}: an evaluation image would be trained on",
                )
            )
        if copies:
            keep[name] = np.setdiff1d(np.arange(len(r.split)), copies)
    return keep


def listing(p: DataParams) -> dict[str, Any]:
    """What `prepare` reads, as a fingerprint that changes when the input data does, read from listings alone: for
    folders, each split folder's image count, bytes and a hash of every (path, size, mtime or ETag); for Fashion-MNIST,
    its files' pinned sha256 (fashion_mnist.FILES). DVC's `list-data` stage writes it for `prepare` to depend on, and
    the Prefect flow's cache keys `prepare` by it, so neither runner reuses splits of images that have changed."""
    if p.source == "fashion_mnist":
        return {"source": "fashion_mnist", "files": dict(fashion_mnist.FILES)}
    assert p.folders is not None  # enforced by DataParams
    cap = p.max_file_mb * 2**20
    return {
        "source": "folders",
        "folders": {
            name: folders.fingerprint(uri, cap) for name, uri in p.folders.model_dump().items() if uri is not None
        },
    }


def check_data(p: DataParams, seed: int) -> list[folders.Problem]:
    """Every problem of the input data at once (nothing is written): bad files and folders, then what makes
    the splits unusable (an empty split, a class missing from the labeled set); with none, what is left out by rule
    (hidden folders: `ignored`)."""
    try:
        _, ignored = read_splits(p.model_copy(update={"skip_bad": False}), seed)
    except folders.BadInput as e:
        return e.problems
    except DataError as e:
        return [folders.Problem("(splits)", str(e), skippable=False)]
    return ignored


def check_splits(splits: dict[str, Split]) -> None:
    """Refuse sets a self-training run cannot learn from; each message says which split and why."""
    for name, s in splits.items():
        if len(s) == 0:
            raise DataError(f"the {name} split is empty")
    labeled = splits["labeled"]
    present = np.unique(labeled.labels)
    if len(present) < 2:
        raise DataError(
            f"the labeled split has {len(present)} class(es) {[labeled.classes[i] for i in present]}; need at least 2"
        )
    missing = sorted(set(range(len(labeled.classes))) - set(present.tolist()))
    if missing:
        raise DataError(f"the labeled split has no images of class(es) {[labeled.classes[i] for i in missing]}")
    shapes = {name: s.images.shape[1:] for name, s in splits.items()}
    if len(set(shapes.values())) != 1:
        raise DataError(f"splits disagree on image shape: {shapes}")


def _fashion_mnist(p: DataParams, seed: int) -> dict[str, Split]:
    if p.channels != 1 or p.image_size != 28:
        raise DataError("Fashion-MNIST is 28x28 grayscale: set data.image_size: 28 and data.channels: 1")
    train_x, train_y, test_x, test_y = fashion_mnist.load(p.fashion_mnist_dir)
    rng = np.random.default_rng(seed)
    labeled, val, pool = [], [], []
    for c in range(len(fashion_mnist.CLASSES)):
        rows = rng.permutation(np.flatnonzero(train_y == c))
        need = p.labeled_per_class + p.val_per_class
        if need > len(rows):
            raise DataError(
                f"data.labeled_per_class + data.val_per_class = {need} exceeds the {len(rows)} images of a class"
            )
        labeled.append(rows[: p.labeled_per_class])
        val.append(rows[p.labeled_per_class : need])
        pool.append(rows[need:])
    pool_rows = np.concatenate(pool)
    if p.unlabeled > len(pool_rows):
        raise DataError(
            f"data.unlabeled = {p.unlabeled} exceeds the {len(pool_rows)} training images left after labeled and val"
        )
    unlabeled = np.sort(rng.choice(pool_rows, size=p.unlabeled, replace=False))
    test_rows = np.arange(len(test_x))
    if p.test is not None:
        if p.test > len(test_x):
            raise DataError(f"data.test = {p.test} exceeds the {len(test_x)} test images")
        test_rows = np.sort(rng.choice(test_rows, size=p.test, replace=False))
    # its own RNG stream, so that adding the holdout split left the other splits of a seed unchanged
    rest = np.setdiff1d(pool_rows, unlabeled)
    holdout = np.sort(np.random.default_rng([seed, 1]).choice(rest, size=min(p.holdout, len(rest)), replace=False))

    def take(x: np.ndarray, y: np.ndarray, rows: np.ndarray, prefix: str, withhold: bool = False) -> Split:
        labels = np.full(len(rows), UNLABELED, dtype=np.int64) if withhold else y[rows]
        return Split(x[rows], labels, np.array([f"{prefix}-{r}" for r in rows]), fashion_mnist.CLASSES)

    return {
        "labeled": take(train_x, train_y, np.sort(np.concatenate(labeled)), "train"),
        "unlabeled": take(train_x, train_y, unlabeled, "train", withhold=True),
        "val": take(train_x, train_y, np.sort(np.concatenate(val)), "train"),
        "test": take(test_x, test_y, test_rows, "t10k"),
        **({"holdout": take(train_x, train_y, holdout, "train")} if len(holdout) else {}),
    }


def withheld_labels(p: DataParams, ids: np.ndarray) -> np.ndarray | None:
    """The true labels of unlabeled images, where the source has them (the embedded Fashion-MNIST: its
    unlabeled split only withholds them); None for a user's folders."""
    if p.source != "fashion_mnist":
        return None
    _, train_y, _, _ = fashion_mnist.load(p.fashion_mnist_dir)
    return train_y[np.array([int(str(i).split("-", 1)[1]) for i in ids], dtype=np.int64)].astype(np.int64)
