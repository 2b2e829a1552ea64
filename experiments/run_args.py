"""The command line the research runners share: params, overlays and overrides, where runs go, raw results that
accumulate."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import yaml


def add_params(ap: argparse.ArgumentParser) -> None:
    """--params, --overlay and --set: the params every run of a runner starts from."""
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument(
        "--overlay",
        action="append",
        default=[],
        metavar="NAME|FILE",
        help="a params overlay for every run: experiments/overlays/NAME.yaml or a YAML file, repeatable, before --set",
    )
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a params override for every run (YAML value), repeatable",
    )


def add(ap: argparse.ArgumentParser, work: str, out: str) -> None:
    """--params, --overlay, --set, --work, --out and --show (print the table of a raw results file, run nothing)."""
    add_params(ap)
    ap.add_argument("--work", default=work, help="artifacts of every run (default: %(default)s)")
    ap.add_argument(
        "--out",
        default=out,
        help="raw results, appended to, so a killed run picks up where it stopped (default: %(default)s)",
    )
    ap.add_argument("--show", metavar="JSON", help="run nothing: print the table of these raw results")


OVERLAYS = Path(__file__).parent / "overlays"


def overlay(name: str) -> dict[str, Any]:
    """A params overlay (nested like params.yaml) as dotted overrides: a YAML file or experiments/overlays/NAME.yaml."""
    path = Path(name) if name.endswith((".yaml", ".yml")) else OVERLAYS / f"{name}.yaml"

    def dotted(node: Any, prefix: str) -> dict[str, Any]:
        if not isinstance(node, dict):
            return {prefix: node}
        return {k: v for key, sub in node.items() for k, v in dotted(sub, f"{prefix}.{key}" if prefix else key).items()}

    return dotted(yaml.safe_load(path.read_text()), "")


def overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The --overlay files in order, then the --set values, as dotted overrides."""
    found: dict[str, Any] = {}
    for name in args.overlay:
        found |= overlay(name)
    return found | {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.set)}


def results(args: argparse.Namespace) -> dict[str, Any]:
    """The raw results so far in --out (empty on a first run)."""
    out = Path(args.out)
    return json.loads(out.read_text()) if out.exists() else {}


def save(args: argparse.Namespace, results: dict[str, Any]) -> None:
    Path(args.out).write_text(json.dumps(results, indent=1))
