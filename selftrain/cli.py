"""`selftrain <stage>`: each stage of selftrain.stages as a command, plus `report`.

Arguments are generated from the stage functions' keyword-only parameters, so the CLI,
DVC's commands and the Prefect tasks cannot drift apart.
"""
from __future__ import annotations

import argparse
import inspect
import json
import logging
import sys
from typing import Any

from selftrain import artifacts
from selftrain.params import ParamsError, load_params, parse_override
from selftrain.report import generation_table
from selftrain.stages import STAGES

ARG_HELP = {
    "out": "where the stage writes its output (local path or s3://...); written atomically",
    "data": "prepare's output: the labeled, unlabeled, val and test splits",
    "model": "a model.safetensors checkpoint (the teacher)",
    "logits_store": "infer's output: the logit store",
    "pseudo": "filter-balance's output: pseudo-labels and per-class counts",
    "teacher": "the teacher's model.safetensors",
    "student": "the student's model.safetensors",
    "metrics": "evaluate's metrics.json",
}


def _override(text: str) -> tuple[str, Any]:
    try:
        return parse_override(text)
    except ParamsError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="selftrain",
        description="Iterative self-training of image classifiers, one stage at a time. "
        "Stages read params.yaml and artifact URIs (local paths or s3://) and write their outputs atomically.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="<stage>")
    for name, fn in STAGES.items():
        doc = inspect.getdoc(fn) or ""
        sp = sub.add_parser(name, help=doc.splitlines()[0], description=doc)
        sp.add_argument("--params", default="params.yaml", help="the params file (default: %(default)s)")
        sp.add_argument("--set", dest="overrides", type=_override, action="append", default=[], metavar="KEY=VALUE",
                        help="override one param, e.g. --set student.epochs=2 (repeatable)")
        for arg in inspect.signature(fn).parameters.values():
            if arg.kind is inspect.Parameter.KEYWORD_ONLY:
                flag = "--" + arg.name.replace("_", "-")
                sp.add_argument(flag, dest=arg.name, required=True, metavar="URI", help=ARG_HELP[arg.name])
    rp = sub.add_parser("report", help="print teacher vs student from evaluate's metrics.json (and promote's record)")
    rp.add_argument("--metrics", required=True, metavar="URI", help=ARG_HELP["metrics"])
    rp.add_argument("--promoted", metavar="URI", help="promote's promoted.json")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        if args.command == "report":
            promoted = artifacts.read_json(args.promoted) if args.promoted else None
            print(generation_table(artifacts.read_json(args.metrics), promoted))
            return 0
        params = load_params(args.params, dict(args.overrides))
        fn = STAGES[args.command]
        kwargs = {k: getattr(args, k) for k, a in inspect.signature(fn).parameters.items() if a.kind is inspect.Parameter.KEYWORD_ONLY}
        summary = fn(params, **kwargs)
    except (ParamsError, ValueError, artifacts.ArtifactError) as e:
        print(f"selftrain {args.command}: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
