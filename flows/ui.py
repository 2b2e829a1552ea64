"""What a generation shows in the Prefect UI: artifacts keyed by generation, so the UI keeps each key's history
across flow runs (the nightly run's gen1 table next to last night's)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect.artifacts import create_link_artifact, create_markdown_artifact

from selftrain import artifacts
from selftrain.layout import Generation
from selftrain.report import balance_table, generation_table


def _link(uri: str) -> str:
    return Path(uri).resolve().as_uri() if artifacts.is_local(uri) else uri


def publish_generation(g: Generation, name: str, method: str, metrics: dict[str, Any], promoted: dict[str, Any], report_files: list[str]) -> None:
    """Markdown tables (teacher vs student with the gate's verdict; pseudo-labels per class) and a link per PNG plot."""
    create_markdown_artifact(
        f"# {name} ({method}): teacher vs student\n\n{generation_table(metrics, promoted)}",
        key=f"{name}-results",
        description=f"{name}, {method}: clean and robustness metrics, promotion verdict",
    )
    counts = artifacts.read_json(artifacts.join(g.pseudo, "counts.json"))
    create_markdown_artifact(
        f"# {name}: pseudo-labels per class\n\n{balance_table(counts)}", key=f"{name}-balance", description=f"{name}: pseudo-label filtering and balancing"
    )
    for file in report_files:
        if file.endswith(".png"):
            stem = file.removesuffix(".png").replace("_", "-")
            create_link_artifact(_link(artifacts.join(g.report, file)), link_text=f"{name}: {file}", key=f"{name}-{stem}", description=f"{name}: plot {file}")
