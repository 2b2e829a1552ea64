"""One self-training generation as a Prefect flow: logits -> filter/balance -> student (by the generation's method)
-> evaluate (clean + robustness) -> promote -> record-lineage -> report."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from flows.locks import writing
from flows.logs import stage_logs_to_prefect
from flows.ui import publish_generation
from selftrain import methods
from selftrain.layout import Generation
from selftrain.params import Params
from selftrain.rendering import generation_table
from tasks import stages as tasks


def _run_name() -> str:
    p = flow_run.parameters
    return f"{p['name']}-{p['params'].generations[p['name']].method}"


@flow(name="generation", flow_run_name=_run_name)
def generation(params: Params, root: str, name: str) -> dict[str, Any]:
    """Generation `name`: its teacher is the previous generation's promoted model (gen0: the supervised teacher)."""
    stage_logs_to_prefect()
    with writing(root):
        g, stages = Generation(root, name), tasks.for_params(params, root)
        teacher = Generation(root, params.generations[name].teacher).promoted
        stages.infer(params, teacher=teacher, data=g.data, out=g.logits)
        stages.filter_balance(params, logits_store=g.logits, data=g.data, out=g.pseudo)
        method = methods.get(params.generations[name].method)
        train = getattr(stages, method.stage.replace("-", "_"))  # the method's stage, e.g. train-mpl for mpl
        inputs = {"pseudo": g.pseudo, "logits_store": g.logits}
        train(
            params,
            generation=name,
            data=g.data,
            teacher=teacher,
            out=g.student,
            **{k: inputs[k] for k in method.stage_inputs},
        )
        metrics = stages.evaluate(
            params,
            teacher=teacher,
            student=g.student_checkpoint,
            data=g.data,
            out=g.metrics,
            sets=g.robustness_sets,
            reference=g.robustness_reference,
        )
        promoted = stages.promote(params, generation=name, metrics=g.metrics, teacher=teacher, out=g.promoted)
        stages.record_lineage(
            params,
            generation=name,
            data=g.data,
            teacher=teacher,
            logits_store=g.logits,
            pseudo=g.pseudo,
            student=g.student_checkpoint,
            metrics=g.metrics,
            promoted=g.promoted,
            out=g.lineage,
        )
        report = stages.report(
            params,
            promoted=g.promoted,
            pseudo=g.pseudo,
            metrics=g.metrics,
            out=g.report,
            data=g.data,
            logits_store=g.logits,
            previous_logits=Generation(root, params.generations[name].teacher).logits,
        )
    get_run_logger().info("%s:\n%s", name, generation_table(metrics, promoted))
    publish_generation(g, name, method.name, metrics, promoted, report["files"])
    return promoted
