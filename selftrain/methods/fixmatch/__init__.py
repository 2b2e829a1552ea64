"""FixMatch (Sohn et al. 2020) with FlexMatch's and FreeMatch's thresholds and distribution alignment
(thresholds.py): CE on strong views against the model's own confident weak-view labels. The student's model is
the generation's; its noise (the strong view's RandAugment, dropout, stochastic depth), init and label smoothing
come from `student`. Noisy Student and distill borrow its term and options for `student.consistency`."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from selftrain.methods import Method, MethodParams


class FixMatchParams(MethodParams):
    """`methods.fixmatch`."""

    steps: int = Field(
        2000,
        gt=0,
        description="training steps (one labeled batch and unlabeled_ratio times as many unlabeled images each)",
    )
    batch_size: int = Field(64, gt=0, description="labeled images per step")
    unlabeled_ratio: int = Field(
        3, ge=1, description="mu: unlabeled images per labeled image in a step (each seen as a weak and a strong view)"
    )
    lr: float = Field(3e-3, gt=0)
    weight_decay: float = Field(0.05, ge=0)
    warmup_steps: int = Field(0, ge=0, description="linear warmup of the learning rate, then cosine decay")
    unlabeled_weight: float = Field(1.0, ge=0, description="lambda: weight of the unlabeled (consistency) loss")
    threshold: Literal["fixed", "flexmatch", "freematch"] = Field(
        "fixed",
        description="fixed: max p >= tau (FixMatch); flexmatch: class-wise curriculum from tau; freematch: "
        "self-adaptive (tau unused)",
    )
    tau: float = Field(0.95, gt=0, le=1, description="the confidence threshold (fixed), or its upper end (flexmatch)")
    ema_p: float = Field(
        0.999, ge=0, lt=1, description="freematch and distribution alignment: momentum of their running means"
    )
    fairness_weight: float = Field(
        0.001, ge=0, description="freematch: weight of its self-adaptive fairness term (USB's configs: 0.001)"
    )
    dist_align: bool = Field(
        False,
        description="scale the weak view's prediction by the labeled class prior over its running mean (ReMixMatch)",
    )
    cutout: float = Field(
        0.5,
        ge=0,
        le=1,
        description="the strong view ends with Cutout of a square up to this fraction of the side (0: none)",
    )
    ema_decay: float | None = Field(
        0.999, gt=0, lt=1, description="evaluate and keep an EMA of the weights (timm ModelEmaV3)"
    )
    checkpoint_every: int = Field(
        200, gt=0, description="a log row, a validation and a resumable checkpoint every N steps"
    )


def fixmatch_work(params: Any, labeled: int, unlabeled: int) -> tuple[int, int]:
    """Per step a labeled batch and mu times as many unlabeled images, each seen twice (weak and strong view);
    validated every checkpoint_every steps."""
    f = params.methods.fixmatch
    return f.steps * f.batch_size * (1 + 2 * f.unlabeled_ratio), f.steps // f.checkpoint_every


METHOD = Method(
    name="fixmatch",
    stage="train-student",
    consumes="nothing",
    data_parallel=True,
    step="selftrain.methods.fixmatch.step:FixMatchStep",
    work=fixmatch_work,
    summary="consistency training: CE on strong views against the model's own confident weak-view labels (Sohn et al. "
    "2020); "
    "methods.fixmatch.threshold: fixed, flexmatch or freematch",
    params=FixMatchParams,
)
