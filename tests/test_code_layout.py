"""The code's shape, checked: a module's name says its layer, so no name exists twice across selftrain/'s layers
(a method's own package is the exception by design: each holds its `step.py`)."""

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
