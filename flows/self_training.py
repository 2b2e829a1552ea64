"""The self-training flow: data, the supervised teacher (generation 0), the robustness sets and reference, then
each generation in params.generations.

Each generation is a subflow; the promoted model of one is the teacher of the next, and a generation
that does not promote its student stops the chain. Runs with no Prefect server (Prefect starts a
temporary one) or against one set by PREFECT_API_URL:

    python -m flows.self_training --params params.yaml --root runs/prefect
"""

from __future__ import annotations

import argparse
from typing import Any, Literal

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run
from pydantic import PositiveInt

from flows.generation import generation
from flows.locks import writing
from flows.logs import stage_logs_to_prefect
from selftrain import methods
from selftrain.layout import Generation
from selftrain.models import check_params
from selftrain.params import ParamsError, load_params, parse_override
from selftrain.rendering import history_table
from tasks import stages as tasks


def _run_name() -> str:
    """e.g. self-training-noisy_student-3gen: the methods and the number of generations the run will do."""
    p = flow_run.parameters
    try:
        params = load_params(
            p["params_path"], p.get("overrides"), generations=p.get("generations"), method=p.get("method")
        )
    except ParamsError:
        return "self-training-bad-params"  # the flow itself fails with the message
    used = "+".join(sorted({g.method for g in params.generations.values()}))
    return f"self-training-{used}-{len(params.generations)}gen"


@flow(name="self-training", flow_run_name=_run_name)
def self_training(
    params_path: str = "params.yaml",
    root: str = "runs/prefect",
    generations: PositiveInt | None = None,
    method: Literal[methods.names()] | None = None,  # type: ignore[valid-type]
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Self-training on the params file: the teacher, then each generation as a subflow.

    Args:
        params_path: the params file (relative to the working directory).
        root: where artifacts go, a local path or s3://bucket/prefix.
        generations: run only the first N generations of the params file (default: all).
        method: give every generation this method (default: each generation's own).
        overrides: dotted params keys to values, e.g. {"student.epochs": 2}.
    """
    stage_logs_to_prefect()
    params = load_params(params_path, overrides, generations=generations, method=method)
    check_params(params, params_path)
    logger, stages = get_run_logger(), tasks.for_params(params, root)
    gen0 = Generation(root, "gen0")
    record: dict[str, Any] = {}
    with writing(root):  # the whole run: its generations read the data and gen0 that another run would rewrite
        stages.list_data(params, out=gen0.data_listing)  # never cached: it is how prepare's cache sees new images
        stages.prepare(params, listing=gen0.data_listing, out=gen0.data)
        stages.train_teacher(params, data=gen0.data, out=gen0.teacher, promoted=gen0.promoted)
        stages.make_robustness_sets(params, data=gen0.data, out=gen0.robustness_sets)
        stages.robustness_reference(
            params,
            data=gen0.data,
            sets=gen0.robustness_sets,
            reference_model=gen0.promoted,
            out=gen0.robustness_reference,
        )
        for name in params.generations:
            record = generation(params, root, name)
            if not record["passed"]:
                logger.warning("%s did not promote its student, the chain stops here: %s", name, record["reason"])
                break
    table = history_table(record)
    logger.info("self-training:\n%s", table)
    create_markdown_artifact(table, key="self-training-generations", description=f"generations under {root}")
    return {"record": record, "table": table}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml", help="the params file (default: %(default)s)")
    ap.add_argument("--root", default="runs/prefect", help="artifact root, local path or s3:// (default: %(default)s)")
    ap.add_argument(
        "--generations", type=int, help="run only the first N generations (default: all in the params file)"
    )
    ap.add_argument(
        "--method", choices=methods.names(), help="give every generation this method (default: each its own)"
    )
    ap.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one param (repeatable)",
    )
    args = ap.parse_args(argv)
    overrides = dict(parse_override(o) for o in args.overrides)
    print(self_training(args.params, args.root, args.generations, args.method, overrides)["table"])


if __name__ == "__main__":
    main()
