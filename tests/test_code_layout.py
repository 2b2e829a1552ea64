"""The code's shape, checked: a module's name says its layer, so no name exists twice across selftrain/'s layers
(a method's own package is the exception by design: each holds its `step.py`)."""

import re
from collections import defaultdict

from conftest import ROOT


def test_no_module_name_exists_twice_across_the_layers():
    seen = defaultdict(list)
    for path in (ROOT / "selftrain").rglob("*"):
        rel = path.relative_to(ROOT / "selftrain")
        if "__pycache__" in rel.parts or rel.parts[0] == "methods" and len(rel.parts) > 2 or path.name == "__init__.py":
            continue
        if path.is_dir() or path.suffix == ".py":
            seen[path.stem].append(str(rel))
    assert {name: where for name, where in seen.items() if len(where) > 1} == {}


def _slug(heading: str) -> str:
    """GitHub's anchor of a markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_the_readme_is_a_guide_and_every_link_of_the_results_pages_lands():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 300
    for page in ("README.md", "RESULTS.md", "docs/experiments/log.md", "docs/pipeline.md", "docs/runners.md"):
        text = (ROOT / page).read_text()
        for target, anchor in re.findall(r"\]\(([^)#\s]+)(?:#([^)\s]+))?\)", text):
            if "://" in target:
                continue
            linked = (ROOT / page).parent / target
            assert linked.exists(), f"{page} links to {target}, which is not there"
            if anchor:
                headings = re.findall(r"^#+ (.*)$", linked.read_text(), re.MULTILINE)
                assert anchor in {_slug(h) for h in headings}, f"{page} links to {target}#{anchor}: no such heading"


def test_every_collective_is_in_the_distributed_module():
    """One module holds every torch.distributed call, so a grep checks them against the backend's rules."""
    calls = re.compile(r"\bdist\.\w+\(|torch\.distributed\.\w+\(|import torch\.distributed")
    found = [
        f"{path.relative_to(ROOT)}:{n}"
        for path in sorted((ROOT / "selftrain").rglob("*.py"))
        if path.name != "distributed.py"
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if calls.search(line)
    ]
    assert found == []
