"""Human-readable summaries of a generation's results."""
from __future__ import annotations

from typing import Any

ROWS = (("val top-1", "val_top1"), ("test top-1", "test_top1"), ("test top-5", "test_top5"))


def generation_table(metrics: dict[str, Any], promoted: dict[str, Any] | None = None) -> str:
    """A markdown table of teacher vs student, and the promotion verdict."""
    lines = ["| metric | teacher | student | student - teacher |", "|---|---:|---:|---:|"]
    for label, key in ROWS:
        if key in metrics["teacher"]:
            t, s = metrics["teacher"][key], metrics["student"][key]
            lines.append(f"| {label} | {100 * t:.2f} % | {100 * s:.2f} % | {100 * (s - t):+.2f} |")
    if promoted is not None:
        lines += ["", f"promoted: **{promoted['promoted']}** ({promoted['checkpoint']}, sha256 {promoted['sha256'][:12]}…)", f"why: {promoted['reason']}"]
    return "\n".join(lines)
