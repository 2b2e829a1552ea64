"""The self-training flow: one generation, teacher -> logits -> filter/balance -> student -> evaluate -> promote.

Runs with no Prefect server (Prefect starts a temporary one) or against one set by PREFECT_API_URL:

    python -m flows.self_training --params params.yaml --root runs/prefect
"""
from __future__ import annotations

import argparse
from typing import Any

from prefect import flow, get_run_logger

from selftrain.layout import Generation
from selftrain.params import load_params, parse_override
from selftrain.report import generation_table
from tasks import stages


@flow(name="self-training")
def self_training(params_path: str = "params.yaml", root: str = "runs/prefect", overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run one self-training generation; artifacts go under `root` (local path or s3://)."""
    params = load_params(params_path, overrides)
    g = Generation(root, 1)
    stages.prepare(params, out=g.data)
    stages.train_teacher(params, data=g.data, out=g.teacher)
    stages.infer(params, model=g.teacher_checkpoint, data=g.data, out=g.logits)
    stages.filter_balance(params, logits_store=g.logits, data=g.data, out=g.pseudo)
    stages.train_student(params, data=g.data, pseudo=g.pseudo, out=g.student)
    metrics = stages.evaluate(params, teacher=g.teacher_checkpoint, student=g.student_checkpoint, data=g.data, out=g.metrics)
    promoted = stages.promote(params, metrics=g.metrics, teacher=g.teacher_checkpoint, student=g.student_checkpoint, out=g.promoted)
    get_run_logger().info("generation 1:\n%s", generation_table(metrics, promoted))
    return {"metrics": metrics, "promoted": promoted}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml", help="the params file (default: %(default)s)")
    ap.add_argument("--root", default="runs/prefect", help="artifact root, local path or s3:// (default: %(default)s)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override one param (repeatable)")
    args = ap.parse_args(argv)
    result = self_training(args.params, args.root, dict(parse_override(o) for o in args.overrides))
    print(generation_table(result["metrics"], result["promoted"]))


if __name__ == "__main__":
    main()
