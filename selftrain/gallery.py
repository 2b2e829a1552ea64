"""The pseudo-label gallery: which unlabeled images the teacher called what, how sure it was, and what
filtering and balancing did with each (kept, dropped, duplicated); the images whose pseudo-label changed
since the previous generation; and, where the true labels are known, the teacher's confident mistakes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from selftrain import artifacts, logits
from selftrain.data import load_split
from selftrain.rendering import plain, png_bytes, pyplot, tile_sheet

KEPT, DROPPED, DUPLICATED = "#2e7d32", "#c62828", "#1565c0"  # frame colours: green, red, blue


@dataclass(frozen=True)
class Teacher:
    """The teacher's call on every unlabeled row: its class and confidence (probability of that class)."""

    label: np.ndarray  # int64 (N,)
    confidence: np.ndarray  # float64 (N,)

    @classmethod
    def from_store(cls, uri: str) -> Teacher:
        store = logits.read_store(uri)
        if store.indices is not None:  # top-k rows are in descending order
            return cls(store.indices[:, 0].astype(np.int64), np.exp(store.values[:, 0].astype(np.float64)))
        log_probs = store.values.astype(np.float64)
        return cls(log_probs.argmax(1), np.exp(log_probs.max(1)))


def copies_per_row(pseudo: str, rows: int) -> np.ndarray:
    """How many times filter-balance put each unlabeled row in the student's set (0: dropped)."""
    picked = artifacts.load_shards(pseudo, "pseudo")["rows"]
    return np.bincount(picked.astype(np.int64), minlength=rows)


def counts(teacher: Teacher, copies: np.ndarray, classes: tuple[str, ...]) -> dict[str, dict[str, int]]:
    """Per class (the teacher's call): predicted, kept (once or more), dropped, duplicated (more than once),
    after_balance (with copies) — the same per-class figures as filter-balance's counts.json."""
    out = {}
    for c, name in enumerate(classes):
        mine = copies[teacher.label == c]
        out[name] = {
            "predicted": int(len(mine)),
            "kept": int((mine > 0).sum()),
            "dropped": int((mine == 0).sum()),
            "duplicated": int((mine > 1).sum()),
            "after_balance": int(mine.sum()),
        }
    return out


def _spread(order: np.ndarray, n: int) -> np.ndarray:
    """`n` items of `order` evenly spaced from its first to its last (all when there are fewer)."""
    if len(order) <= n:
        return order
    return order[np.linspace(0, len(order) - 1, n).round().astype(int)]


def render(
    images: np.ndarray,
    classes: tuple[str, ...],
    teacher: Teacher,
    copies: np.ndarray,
    title: str,
    previous: Teacher | None = None,
    truth: np.ndarray | None = None,
    per_class: int = 10,
) -> bytes:
    """The gallery as PNG bytes: one row per class, the teacher's confidence falling left to right (spread over
    the whole range, so the kept and the dropped both show), a frame for what balancing did; then the rows
    that changed class since the previous teacher, and the confident mistakes where the truth is known."""
    plt = pyplot()
    rows: list[tuple[str, list[tuple[Any, str]]]] = []  # (row label, [(image row, caption)])
    marks = {0: "dropped", 1: "kept"}  # else xN copies
    for c, name in enumerate(classes):
        mine = np.flatnonzero(teacher.label == c)
        order = mine[np.argsort(-teacher.confidence[mine], kind="stable")]
        rows.append(
            (
                name,
                [
                    (i, f"{teacher.confidence[i]:.2f} {marks.get(copies[i], f'x{copies[i]}')}")
                    for i in _spread(order, per_class)
                ],
            )
        )
    if previous is not None:
        changed = np.flatnonzero(previous.label != teacher.label)
        changed = changed[np.argsort(-teacher.confidence[changed], kind="stable")][:per_class]
        rows.append(
            ("changed", [(i, f"{classes[previous.label[i]][:8]}>{classes[teacher.label[i]][:8]}") for i in changed])
        )
    if truth is not None:
        wrong = np.flatnonzero((truth != teacher.label) & (copies > 0))
        wrong = wrong[np.argsort(-teacher.confidence[wrong], kind="stable")][:per_class]
        rows.append(("mistakes", [(i, f"{classes[teacher.label[i]][:8]} (is {classes[truth[i]][:8]})") for i in wrong]))

    def colour(i: Any) -> str:
        return DROPPED if copies[i] == 0 else DUPLICATED if copies[i] > 1 else KEPT

    h, w = images.shape[1:3]
    border, gap = max(1, h // 14), (max(4, h * 3 // 10), max(2, w // 7))  # room above each tile for its caption
    sheet = tile_sheet(
        [[images[i] for i, _ in tiles] or [None] for _, tiles in rows],
        [[colour(i) for i, _ in tiles] for _, tiles in rows],
        border,
        gap,
    )
    cell_h, cell_w = h + 2 * border + gap[0], w + 2 * border + gap[1]
    fig = plt.figure(figsize=(per_class * 1.05, len(rows) * 1.25))
    ax = fig.add_axes((0, 0, 1, 0.95))
    ax.imshow(sheet, interpolation="nearest")
    ax.set_axis_off()
    for r, (label, tiles) in enumerate(rows):
        top = r * cell_h + gap[0]
        ax.text(-1, top + border + h / 2, plain(label), ha="right", va="center", fontsize=8)
        for c, (i, caption) in enumerate(tiles):
            ax.text(
                c * cell_w + gap[1] + border + w / 2,
                top - 0.5,
                plain(caption),
                ha="center",
                va="bottom",
                fontsize=6,
                color=colour(i),
            )
    legend = "frame: green kept, blue duplicated by balancing (xN copies), red dropped; caption: teacher confidence"
    fig.suptitle(plain(f"{title}\n{legend}"), fontsize=8)
    data = png_bytes(fig)
    plt.close(fig)
    return data


def gallery(
    data: str,
    logits_store: str,
    pseudo: str,
    title: str,
    previous_logits: str | None = None,
    truth: np.ndarray | None = None,
) -> tuple[bytes, dict[str, Any]]:
    """The gallery PNG of one generation and its per-class counts."""
    unlabeled = load_split(data, "unlabeled")
    teacher = Teacher.from_store(logits_store)
    copies = copies_per_row(pseudo, len(unlabeled))
    previous = Teacher.from_store(previous_logits) if previous_logits and artifacts.exists(previous_logits) else None
    png = render(unlabeled.images, unlabeled.classes, teacher, copies, title, previous, truth)
    summary: dict[str, Any] = {"per_class": counts(teacher, copies, unlabeled.classes)}
    if previous is not None:
        summary["changed_since_previous"] = int((previous.label != teacher.label).sum())
    if truth is not None:
        kept = copies > 0
        summary["kept_correct"] = float((truth[kept] == teacher.label[kept]).mean()) if kept.any() else None
    return png, summary
