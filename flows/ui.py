"""What a generation shows in the Prefect UI: artifacts keyed by generation, so the UI keeps each key's history
across flow runs (the nightly run's gen1 table next to last night's)."""

from __future__ import annotations

import base64
from typing import Any

from prefect.artifacts import create_markdown_artifact

from selftrain import artifacts
from selftrain.layout import Generation
from selftrain.rendering import balance_table, generation_table


def inline_png(uri: str, alt: str) -> str:
    """Markdown that shows the PNG at `uri` in place: the image itself as a data URI, which the UI renders
    wherever the file lives (a `file://` link does nothing in a browser, and the worker's disk or a private
    bucket is not the browser's)."""
    return f"![{alt}](data:image/png;base64,{base64.b64encode(artifacts.read_bytes(uri)).decode()})"


def publish_generation(
    g: Generation, name: str, method: str, metrics: dict[str, Any], promoted: dict[str, Any], report_files: list[str]
) -> None:
    """Markdown tables (teacher vs student with the gate's verdict; pseudo-labels per class) and each PNG plot, in
    place."""
    create_markdown_artifact(
        f"# {name} ({method}): teacher vs student\n\n{generation_table(metrics, promoted)}",
        key=f"{name}-results",
        description=f"{name}, {method}: clean and robustness metrics, promotion verdict",
    )
    counts = artifacts.read_json(artifacts.join(g.pseudo, "counts.json"))
    create_markdown_artifact(
        f"# {name}: pseudo-labels per class\n\n{balance_table(counts)}",
        key=f"{name}-balance",
        description=f"{name}: pseudo-label filtering and balancing",
    )
    for file in report_files:
        if file.endswith(".png"):
            publish_plot(artifacts.join(g.report, file), name)


def publish_plot(uri: str, generation: str) -> str:
    """One PNG plot of a generation's report as a markdown artifact keyed `<generation>-<plot>`; its id."""
    file = uri.rsplit("/", 1)[-1]
    key = f"{generation}-{file.removesuffix('.png').replace('_', '-')}"
    return str(
        create_markdown_artifact(
            f"{inline_png(uri, f'{generation}: {file}')}\n\n`{uri}`", key=key, description=f"{generation}: plot {file}"
        )
    )
