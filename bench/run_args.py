"""The command line the per-run benchmarks share: params and overrides, where runs go, raw results that accumulate."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import yaml


def add(ap: argparse.ArgumentParser, work: str, out: str) -> None:
    """--params, --set, --work, --out and --show (print the table of a raw results file, run nothing)."""
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a params override for every run (YAML value), repeatable",
    )
    ap.add_argument("--work", default=work, help="artifacts of every run (default: %(default)s)")
    ap.add_argument(
        "--out",
        default=out,
        help="raw results, appended to, so a killed run picks up where it stopped (default: %(default)s)",
    )
    ap.add_argument("--show", metavar="JSON", help="run nothing: print the table of these raw results")


def overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.set)}


def results(args: argparse.Namespace) -> dict[str, Any]:
    """The raw results so far in --out (empty on a first run)."""
    out = Path(args.out)
    return json.loads(out.read_text()) if out.exists() else {}


def save(args: argparse.Namespace, results: dict[str, Any]) -> None:
    Path(args.out).write_text(json.dumps(results, indent=1))
