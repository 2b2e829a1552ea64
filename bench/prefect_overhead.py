"""What Prefect costs, as ratios measured in one run on the same params and the same machine:

    overhead = the self-training flow (tasks, subflows, caching, result persistence) / the same stages
               called directly in one process, each from an empty root (medians of --repeat alternated pairs)
    cached   = the flow again with nothing changed (every stage Cached) / its first run on that root

Prefect's temporary server is started (by a trivial flow) before anything is timed; against a running
server, set PREFECT_API_URL. The default overrides make a small but complete generation (~2 min here).

    python -m bench.prefect_overhead [--generations 1] [--repeat 2] [--set KEY=VALUE ...] [--out
    bench/results/prefect.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")

from prefect import flow  # noqa: E402
from prefect.client.orchestration import get_client  # noqa: E402
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, FlowRunFilterParentFlowRunId  # noqa: E402

from flows.self_training import self_training  # noqa: E402
from selftrain import stages as plain_stages  # noqa: E402
from selftrain.layout import Generation  # noqa: E402
from selftrain.params import Params, load_params, parse_override  # noqa: E402

SMALL = [
    "teacher.epochs=10",
    "student.epochs=2",
    "data.unlabeled=5000",
    "robustness.corruption_images=200",
    "robustness.hard_images=200",
]


class _Timed:
    """The stage functions, each call's wall time added to `seconds` under the stage's name."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def __getattr__(self, name: str):
        fn = getattr(plain_stages, name)

        def call(*args, **kwargs):
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                key = name.replace("_", "-")
                self.seconds[key] = self.seconds.get(key, 0.0) + time.perf_counter() - t

        return call


def direct(stages: _Timed, params: Params, root: str) -> None:
    """The flow's DAG with plain function calls: the baseline."""
    gen0 = Generation(root, "gen0")
    stages.prepare.run(params, out=gen0.data)
    stages.train_teacher.run(params, data=gen0.data, out=gen0.teacher, promoted=gen0.promoted)
    stages.make_robustness_sets.run(params, data=gen0.data, out=gen0.robustness_sets)
    stages.robustness_reference.run(
        params, data=gen0.data, sets=gen0.robustness_sets, reference_model=gen0.promoted, out=gen0.robustness_reference
    )
    for name, spec in params.generations.items():
        g, teacher = Generation(root, name), Generation(root, spec.teacher).promoted
        stages.infer.run(params, teacher=teacher, data=g.data, out=g.logits)
        stages.filter_balance.run(params, logits_store=g.logits, data=g.data, out=g.pseudo)
        if spec.method == "mpl":
            stages.train_mpl.run(params, generation=name, data=g.data, teacher=teacher, out=g.student)
        elif spec.method == "reduced_mpl":
            stages.train_reduced_mpl.run(
                params, generation=name, data=g.data, logits_store=g.logits, teacher=teacher, out=g.student
            )
        else:
            stages.train_student.run(
                params,
                generation=name,
                data=g.data,
                teacher=teacher,
                out=g.student,
                pseudo=g.pseudo,
                logits_store=g.logits,
            )
        stages.evaluate.run(
            params,
            teacher=teacher,
            student=g.student_checkpoint,
            data=g.data,
            out=g.metrics,
            sets=g.robustness_sets,
            reference=g.robustness_reference,
        )
        rec = stages.promote.run(params, generation=name, metrics=g.metrics, teacher=teacher, out=g.promoted)
        stages.report.run(params, promoted=g.promoted, pseudo=g.pseudo, metrics=g.metrics, out=g.report)
        if not rec["passed"]:
            break


@flow
def _warm_up() -> None:
    """Nothing: starts Prefect's temporary server before the clock does."""


def timed(fn, *args, **kwargs) -> tuple[float, object]:
    t = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - t, out


def task_seconds(flow_run_id) -> dict[str, float]:
    """Stage name -> its task run's wall time (start to end, from the API), over the flow run and its subflows."""
    with get_client(sync_client=True) as client:
        subflows = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id]))
        )
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id, *(f.id for f in subflows)]))
        )
    wrappers = {f.parent_task_run_id for f in subflows}
    seconds: dict[str, float] = {}
    for r in runs:
        if r.id not in wrappers and r.start_time and r.end_time:
            key = r.name.rsplit("-", 1)[0]
            seconds[key] = seconds.get(key, 0.0) + (r.end_time - r.start_time).total_seconds()
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--generations", type=int, default=1, help="generations to run (default: %(default)s)")
    ap.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=None,
        metavar="KEY=VALUE",
        help=f"param overrides (default: {' '.join(SMALL)})",
    )
    ap.add_argument(
        "--repeat", type=int, default=2, help="direct/flow pairs, alternated; ratios of medians (default: %(default)s)"
    )
    ap.add_argument("--out", default="bench/results/prefect.json")
    args = ap.parse_args()
    overrides = dict(parse_override(o) for o in (SMALL if args.overrides is None else args.overrides))
    params = load_params(args.params, overrides, generations=args.generations)
    _warm_up()
    direct_s, flow_s, staged = [], [], _Timed()
    with tempfile.TemporaryDirectory() as tmp:
        # alternated, each on an empty root, so that neither side always runs on a colder machine
        for rep in range(args.repeat):
            direct_s.append(timed(direct, staged, params, str(Path(tmp, f"direct{rep}")))[0])
            flow_args = {
                "params_path": args.params,
                "root": str(Path(tmp, f"flow{rep}")),
                "generations": args.generations,
                "overrides": overrides,
            }
            t, first = timed(self_training, **flow_args, return_state=True)
            flow_s.append(t)
        t_cached, _ = timed(self_training, **flow_args)  # the last root again: nothing changed
    in_flow = task_seconds(first.state_details.flow_run_id)
    t_direct, t_flow = statistics.median(direct_s), statistics.median(flow_s)
    result = {
        "command": "python -m bench.prefect_overhead"
        + (f" --generations {args.generations}" if args.generations != 1 else "")
        + (f" --repeat {args.repeat}" if args.repeat != 2 else "")
        + "".join(f" --set {o}" for o in (args.overrides or [])),
        "overrides": overrides,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "prefect_api": os.environ.get("PREFECT_API_URL", "temporary server"),
        "direct_s": [round(t, 2) for t in direct_s],
        "flow_s": [round(t, 2) for t in flow_s],
        "flow_cached_s": round(t_cached, 2),
        "overhead_ratio": round(t_flow / t_direct, 4),
        "cached_ratio": round(t_cached / flow_s[-1], 4),
        # per stage: the direct calls' mean vs the last flow run's task runs
        "stages_s": {
            name: {"direct": round(t / args.repeat, 2), "task": round(in_flow.get(name, float("nan")), 2)}
            for name, t in staged.seconds.items()
        },
    }
    print(json.dumps(result, indent=2))
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
