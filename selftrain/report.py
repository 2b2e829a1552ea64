"""What a user looks at: the per-generation table (markdown) and plots (PNG, and CSV for `dvc plots`)."""
from __future__ import annotations

import csv
import io
from typing import Any

import numpy as np

from selftrain import artifacts

ROWS = (("val top-1", "val_top1"), ("test top-1", "test_top1"), ("test top-5", "test_top5"))


def generation_table(metrics: dict[str, Any], promoted: dict[str, Any] | None = None) -> str:
    """A markdown table of one generation's teacher vs student, and the promotion verdict."""
    lines = ["| metric | teacher | student | student - teacher |", "|---|---:|---:|---:|"]
    for label, key in ROWS:
        if key in metrics["teacher"]:
            t, s = metrics["teacher"][key], metrics["student"][key]
            lines.append(f"| {label} | {100 * t:.2f} % | {100 * s:.2f} % | {100 * (s - t):+.2f} |")
    if promoted is not None:
        lines += ["", f"promoted: **{promoted['promoted']}** ({promoted['checkpoint']}, sha256 {promoted['sha256'][:12]}…)", f"why: {promoted['reason']}"]
    return "\n".join(lines)


def history_table(record: dict[str, Any]) -> str:
    """A markdown table with one row per generation of the chain that ends in `record`."""
    lines = [
        "| generation | teacher | student | teacher val | student val | teacher test | student test | promoted |",
        "|---|---|---|---:|---:|---:|---:|---|",
    ]
    for r in record["history"]:
        lines.append(
            f"| {r['generation']} | {r['teacher_model']} | {r['student_model']} | {100 * r['teacher_val_top1']:.2f} % | "
            f"{100 * r['student_val_top1']:.2f} % | {100 * r['teacher_test_top1']:.2f} % | {100 * r['student_test_top1']:.2f} % | {r['promoted']} |"
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


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return buf.getvalue()


def write_report(out: str, record: dict[str, Any], counts: dict[str, Any]) -> list[str]:
    """Write report.md, accuracy/confidence/class-count plots (PNG) and their data (CSV) into `out`."""
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    history = record["history"]
    files: dict[str, bytes] = {}
    # Accuracy per generation: generation 0 is the supervised teacher, generation k its k-th student.
    gens = [0] + [int(r["generation"].removeprefix("gen")) for r in history]
    acc = [
        {"generation": 0, "model": history[0]["teacher_model"], "test_top1": history[0]["teacher_test_top1"], "val_top1": history[0]["teacher_val_top1"]}
    ] + [{"generation": g, "model": r["student_model"], "test_top1": r["student_test_top1"], "val_top1": r["student_val_top1"]} for g, r in zip(gens[1:], history)]
    files["generations.csv"] = _csv(acc)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(gens[1:], [100 * r["teacher_test_top1"] for r in history], "o--", label="teacher (test)")
    ax.plot(gens[1:], [100 * r["student_test_top1"] for r in history], "o-", label="student (test)")
    ax.axhline(100 * history[0]["teacher_test_top1"], color="grey", lw=0.8, ls=":", label="supervised teacher")
    ax.set(xlabel="generation", ylabel="top-1 accuracy (%)", title="Accuracy per generation", xticks=gens[1:])
    ax.legend()
    files["accuracy.png"] = _png(fig)

    hist = counts["confidence_histogram"]
    bins = np.arange(len(hist["all"])) / 100.0
    files["confidence.csv"] = _csv([{"confidence": f"{b:.2f}", "all": a, "after_balance": k} for b, a, k in zip(bins, hist["all"], hist["after_balance"])])
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.bar(bins, hist["all"], width=0.01, align="edge", alpha=0.5, label="all unlabeled")
    ax.bar(bins, hist["after_balance"], width=0.01, align="edge", alpha=0.7, label="pseudo-labeled (after balance, with copies)")
    ax.axvline(counts["threshold"], color="red", lw=1, label=f"threshold {counts['threshold']}")
    ax.set(xlabel="teacher's top probability", ylabel="images", title=f"{record['generation']}: pseudo-label confidence")
    ax.legend()
    files["confidence.png"] = _png(fig)

    classes = list(counts["per_class"])
    per = counts["per_class"]
    files["class_counts.csv"] = _csv([{"class": c, "before": per[c]["above_threshold"], "after_balance": per[c]["after_balance"]} for c in classes])
    fig, ax = plt.subplots(figsize=(7, 4))
    x = np.arange(len(classes))
    ax.bar(x - 0.2, [per[c]["above_threshold"] for c in classes], 0.4, label="above threshold")
    ax.bar(x + 0.2, [per[c]["after_balance"] for c in classes], 0.4, label="after balance")
    ax.set_xticks(x, classes, rotation=45, ha="right")
    ax.set(ylabel="images", title=f"{record['generation']}: pseudo-labels per class")
    ax.legend()
    files["class_counts.png"] = _png(fig)
    plt.close("all")

    files["report.md"] = (
        f"# selftrain: {record['generation']}\n\n{history_table(record)}\n\n"
        "![accuracy](accuracy.png)\n![confidence](confidence.png)\n![per-class counts](class_counts.png)\n"
    ).encode()
    for name, data in files.items():
        artifacts.write_bytes(artifacts.join(out, name), data)
    return sorted(files)
