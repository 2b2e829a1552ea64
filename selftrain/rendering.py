"""What a user looks at: the per-generation table (markdown) and plots (PNG, and CSV for `dvc plots`)."""

from __future__ import annotations

import csv
import io
from typing import Any

import numpy as np

from selftrain import artifacts

ROWS = (("val top-1", "val_top1"), ("test top-1", "test_top1"), ("test top-5", "test_top5"))
# robustness headline figures, in percent except mT5D; lower is better except -A top-1
ROBUSTNESS_ROWS = (
    ("mCE (vs reference)", "mCE"),
    ("relative mCE", "relative_mCE"),
    ("mean -C error", "mean_corruption_error"),
    ("mFR (vs reference)", "mFR"),
    ("mFP", "mFP"),
    ("mT5D", "mT5D"),
    ("-A top-1", "hard_top1"),
)
UNSCALED = {"mT5D"}  # a distance in rank positions, not a fraction
HISTORY_EXTRA = (("mCE", "mCE"), ("mFR", "mFR"), ("-A top-1", "hard_top1"))


def cell(text: Any) -> str:
    """`text` as one markdown table cell: a `|` in a user's class name would otherwise split the row."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def plain(text: str) -> str:
    """`text` drawn literally by matplotlib: two `$` in one label (class names like `x_{$`) would start mathtext,
    which fails to render on anything that is not TeX."""
    return text.replace("$", r"\$")


def generation_table(metrics: dict[str, Any], promoted: dict[str, Any] | None = None) -> str:
    """A markdown table of one generation's teacher vs student, and the promotion verdict."""
    lines = ["| metric | teacher | student | student - teacher |", "|---|---:|---:|---:|"]
    for label, key in ROWS:
        if key in metrics["teacher"]:
            t, s = metrics["teacher"][key], metrics["student"][key]
            lines.append(f"| {label} | {100 * t:.2f} % | {100 * s:.2f} % | {100 * (s - t):+.2f} |")
    for label, key in ROBUSTNESS_ROWS:
        if key in metrics["teacher"]:
            f = 1 if key in UNSCALED else 100
            t, s = f * metrics["teacher"][key], f * metrics["student"][key]
            lines.append(f"| {label} | {t:.2f} | {s:.2f} | {s - t:+.2f} |")
    if "robustness_reference" in metrics:
        ref = metrics["robustness_reference"]
        lines += ["", f"robustness reference: {ref['name']} ({ref['checkpoint']}, sha256 {ref['sha256'][:12]}…)"]
        for role in ("teacher", "student"):
            for key, names in ((metrics[role].get("robustness") or {}).get("left_out") or {}).items():
                lines.append(
                    f"{role} {key} leaves out {', '.join(names)}: the reference made no "
                    f"{'flip' if key == 'mFR' else 'error'} there, so it is undefined"
                )
    if promoted is not None:
        lines += [
            "",
            f"promoted: **{promoted['promoted']}** ({promoted['checkpoint']}, sha256 {promoted['sha256'][:12]}…)",
            f"why: {promoted['reason']}",
        ]
    return "\n".join(lines)


def balance_table(counts: dict[str, Any]) -> str:
    """A markdown table of the pseudo-labels per class: predicted, over the confidence threshold, after balancing."""
    t = counts["total"]
    lines = [
        f"{counts['kind']} pseudo-labels, confidence threshold {counts['threshold']}, "
        + (f"balanced to {counts['per_class_target']} per class: " if counts["per_class_target"] else "not balanced: ")
        + f"{t['above_threshold']:,} of {t['unlabeled']:,} unlabeled images above the threshold, "
        f"{t['after_balance']:,} in the student's training set " + f"({t['unique_after_balance']:,} distinct)",
        "",
        "| class | predicted | above threshold | class threshold | selected | after balance (with copies) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, c in counts["per_class"].items():
        lines.append(
            f"| {cell(name)} | {c['predicted']} | {c['above_threshold']} | {c['class_threshold']:.2f} | "
            f"{c['selected']} | {c['after_balance']} |"
        )
    return "\n".join(lines)


def history_table(record: dict[str, Any]) -> str:
    """A markdown table with one row per generation of the chain that ends in `record`."""
    extra = [(label, key) for label, key in HISTORY_EXTRA if all(f"student_{key}" in r for r in record["history"])]
    head = "".join(f" teacher {label} | student {label} |" for label, _ in extra)
    lines = [
        "| generation | teacher | student | teacher val | student val | teacher test | student test |"
        f"{head} promoted |",
        "|---|---|---|---:|---:|---:|---:|" + "---:|" * (2 * len(extra)) + "---|",
    ]
    for r in record["history"]:
        cells = "".join(f" {100 * r[f'teacher_{key}']:.2f} | {100 * r[f'student_{key}']:.2f} |" for _, key in extra)
        lines.append(
            f"| {r['generation']} | {cell(r['teacher_model'])} | {cell(r['student_model'])} | "
            f"{100 * r['teacher_val_top1']:.2f} % | "
            f"{100 * r['student_val_top1']:.2f} % | {100 * r['teacher_test_top1']:.2f} % | "
            f"{100 * r['student_test_top1']:.2f} % |{cells} {r['promoted']} |"
        )
    verdict = "passed" if record["passed"] else "**failed: the chain stops here**"
    lines += ["", f"{record['generation']} gate {verdict}: {record['reason']}"]
    return "\n".join(lines)


def _csv(rows: list[dict[str, Any]]) -> bytes:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue().encode()


def png_bytes(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return buf.getvalue()


def write_report(
    out: str,
    record: dict[str, Any],
    counts: dict[str, Any],
    metrics: dict[str, Any],
    gallery: dict[str, bytes] | None = None,
) -> list[str]:
    """Write report.md, accuracy/confidence/class-count plots and error vs severity (PNG) and their data (CSV) into
    `out`,
    and the pseudo-label gallery's files when given (gallery.png, gallery.json)."""
    plt = pyplot()

    history = record["history"]
    files: dict[str, bytes] = {}
    # Accuracy per generation: generation 0 is the supervised teacher, generation k its k-th student.
    gens = [0] + [int(r["generation"].removeprefix("gen")) for r in history]
    acc = [
        {
            "generation": 0,
            "model": history[0]["teacher_model"],
            "test_top1": history[0]["teacher_test_top1"],
            "val_top1": history[0]["teacher_val_top1"],
        }
    ] + [
        {
            "generation": g,
            "model": r["student_model"],
            "test_top1": r["student_test_top1"],
            "val_top1": r["student_val_top1"],
        }
        for g, r in zip(gens[1:], history)
    ]
    files["generations.csv"] = _csv(acc)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(gens[1:], [100 * r["teacher_test_top1"] for r in history], "o--", label="teacher (test)")
    ax.plot(gens[1:], [100 * r["student_test_top1"] for r in history], "o-", label="student (test)")
    ax.axhline(100 * history[0]["teacher_test_top1"], color="grey", lw=0.8, ls=":", label="supervised teacher")
    ax.set(xlabel="generation", ylabel="top-1 accuracy (%)", title="Accuracy per generation", xticks=gens[1:])
    ax.legend()
    files["accuracy.png"] = png_bytes(fig)

    hist = counts["confidence_histogram"]
    bins = np.arange(len(hist["all"])) / 100.0
    files["confidence.csv"] = _csv(
        [
            {"confidence": f"{b:.2f}", "all": a, "after_balance": k}
            for b, a, k in zip(bins, hist["all"], hist["after_balance"])
        ]
    )
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.bar(bins, hist["all"], width=0.01, align="edge", alpha=0.5, label="all unlabeled")
    ax.bar(
        bins,
        hist["after_balance"],
        width=0.01,
        align="edge",
        alpha=0.7,
        label="pseudo-labeled (after balance, with copies)",
    )
    ax.axvline(counts["threshold"], color="red", lw=1, label=f"threshold {counts['threshold']}")
    ax.set(
        xlabel="teacher's top probability", ylabel="images", title=f"{record['generation']}: pseudo-label confidence"
    )
    ax.legend()
    files["confidence.png"] = png_bytes(fig)

    classes = list(counts["per_class"])
    per = counts["per_class"]
    files["class_counts.csv"] = _csv(
        [{"class": c, "before": per[c]["above_threshold"], "after_balance": per[c]["after_balance"]} for c in classes]
    )
    fig, ax = plt.subplots(figsize=(7, 4))
    x = np.arange(len(classes))
    ax.bar(x - 0.2, [per[c]["above_threshold"] for c in classes], 0.4, label="above threshold")
    ax.bar(x + 0.2, [per[c]["after_balance"] for c in classes], 0.4, label="after balance")
    ax.set_xticks(x, [plain(c) for c in classes], rotation=45, ha="right")
    ax.set(ylabel="images", title=f"{record['generation']}: pseudo-labels per class")
    ax.legend()
    files["class_counts.png"] = png_bytes(fig)
    plt.close("all")
    files.update(robustness_files(metrics))
    files.update(gallery or {})

    files["report.md"] = (
        f"# selftrain: {record['generation']}\n\n{history_table(record)}\n\n## This "
        f"generation\n\n{generation_table(metrics)}\n\n"
        f"## Pseudo-labels per class\n\n{balance_table(counts)}\n\n"
        "![accuracy](accuracy.png)\n![confidence](confidence.png)\n![per-class counts](class_counts.png)\n"
        + ("![error vs severity](corruption_error.png)\n" if "corruption_error.png" in files else "")
        + ("\n## Pseudo-label gallery\n\n![pseudo-label gallery](gallery.png)\n" if "gallery.png" in files else "")
    ).encode()
    for name, data in files.items():
        artifacts.write_bytes(artifacts.join(out, name), data)
    return sorted(files)


def pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    return plt


def tile_sheet(
    cells: list[list[np.ndarray | None]],
    frames: list[list[str | None]] | None = None,
    border: int = 2,
    gap: tuple[int, int] = (2, 2),
) -> np.ndarray:
    """One RGB uint8 image of equally sized tiles in rows: each tile inside a `border`-pixel frame of its colour
    (matplotlib colour, none = white), `gap` = (above, left) white pixels before each frame; an empty cell
    stays white. Tile (r, c)'s top-left image pixel is at (r * cell_h + gap[0] + border, c * cell_w + gap[1] + border).

    Drawn by hand as one image because one matplotlib axes per tile costs about 40 ms to lay out and render:
    the 120-tile gallery took 5 s that way."""
    from matplotlib.colors import to_rgb

    h, w = next(t for row in cells for t in row if t is not None).shape[:2]
    cell_h, cell_w = h + 2 * border + gap[0], w + 2 * border + gap[1]
    sheet = np.full((len(cells) * cell_h, max(map(len, cells)) * cell_w, 3), 255, np.uint8)
    for r, row in enumerate(cells):
        for c, img in enumerate(row):
            if img is None:
                continue
            y, x = r * cell_h + gap[0], c * cell_w + gap[1]
            colour = frames[r][c] if frames else None
            if colour is not None:
                sheet[y : y + h + 2 * border, x : x + w + 2 * border] = np.round(255 * np.array(to_rgb(colour)))
            sheet[y + border : y + border + h, x + border : x + border + w] = img  # (h, w, 1) broadcasts to gray
    return sheet


def corruption_grid(clean: np.ndarray, corrupted: dict[str, np.ndarray], index: int = 0) -> bytes:
    """PNG: test image `index` clean and under each corruption (rows) at each severity (columns)."""
    plt = pyplot()
    names = list(corrupted)
    cells = [[clean[index]] + [corrupted[name][s, index] for s in range(5)] for name in names]
    h, w = clean.shape[1:3]
    border, gap = 1, max(1, h // 14)
    sheet = tile_sheet(cells, [["#000000"] * 6] * len(names), border, (gap, gap))
    cell_h, cell_w = h + 2 * border + gap, w + 2 * border + gap
    fig = plt.figure(figsize=(6 * 1.1, len(names) * 1.1))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(sheet, interpolation="nearest")
    ax.set_axis_off()
    for c in range(6):
        ax.text(
            c * cell_w + gap + w / 2, -1, "clean" if c == 0 else f"severity {c}", ha="center", va="bottom", fontsize=7
        )
    for r, name in enumerate(names):
        ax.text(-1, r * cell_h + gap + h / 2, name.replace("_", " "), ha="right", va="center", fontsize=7)
    data = png_bytes(fig)
    plt.close(fig)
    return data


def robustness_files(metrics: dict[str, Any]) -> dict[str, bytes]:
    """Error vs severity per corruption, teacher vs student: a PNG grid and, for `dvc plots`, a CSV of the
    mean over corruptions per severity (severity 0 = clean). Empty when evaluate ran without robustness sets."""
    if "robustness" not in metrics["teacher"]:
        return {}
    plt = pyplot()
    raw = {role: metrics[role]["robustness"]["raw"] for role in ("teacher", "student")}
    names = list(raw["teacher"]["corruption_errors"])
    rows = []
    for s in range(6):
        row: dict[str, Any] = {"severity": s}
        for role, r in raw.items():
            errs = [r["clean_error"]] if s == 0 else [r["corruption_errors"][n][s - 1] for n in names]
            row[role] = f"{100 * float(np.mean(errs)):.2f}"
        rows.append(row)
    cols = 5
    fig, axes = plt.subplots(
        (len(names) + cols - 1) // cols,
        cols,
        figsize=(cols * 2.4, 2.2 * ((len(names) + cols - 1) // cols)),
        sharex=True,
    )
    for ax, name in zip(axes.flat, names):
        for role, style in (("teacher", "o--"), ("student", "o-")):
            r = raw[role]
            ax.plot(
                range(6),
                [100 * r["clean_error"]] + [100 * e for e in r["corruption_errors"][name]],
                style,
                ms=3,
                label=role,
            )
        ax.set_title(name.replace("_", " "), fontsize=8)
        ax.tick_params(labelsize=7)
    axes.flat[0].legend(fontsize=7)
    fig.supxlabel("severity (0 = clean)", fontsize=8)
    fig.supylabel("top-1 error (%)", fontsize=8)
    fig.tight_layout()
    files = {"corruption_error.csv": _csv(rows), "corruption_error.png": png_bytes(fig)}
    plt.close(fig)
    return files
