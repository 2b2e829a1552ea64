"""Meta Pseudo Labels (Pham et al. 2021): teacher and student trained together, the teacher from the change its
pseudo-labels made to the student's labeled loss (update.py), then the student finetuned on labeled data. The
student's model is the generation's, its noise and init come from `student`; the teacher starts as the
generation's teacher."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from selftrain.methods import Method, MethodParams, Work


class MplParams(MethodParams):
    """`methods.mpl`: read by mpl and reduced_mpl."""

    steps: int = Field(2000, gt=0, description="MPL steps (one student and one teacher update each)")
    batch_size: int = Field(64, gt=0, description="labeled images per step")
    unlabeled_ratio: int = Field(3, ge=1, description="unlabeled images per labeled image in a step")
    student_lr: float = Field(3e-3, gt=0)
    teacher_lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.05, ge=0)
    warmup_steps: int = Field(0, ge=0, description="linear warmup of both learning rates, then cosine decay")
    mpl_weight: float = Field(
        1.0, description="weight of the teacher's MPL term (0: off; < 0: the flipped sign, for ablations)"
    )
    baseline_decay: float = Field(0.99, ge=0, lt=1, description="moving average of h subtracted from it")
    signal: Literal["train", "eval", "dot"] = Field(
        "eval",
        description="how h is measured: train-mode passes (noisy), eval-mode passes, or the first-order dot product "
        "(update.py)",
    )
    uda_weight: float = Field(1.0, ge=0, description="teacher's UDA consistency loss weight (mpl only)")
    uda_temperature: float = Field(0.7, gt=0, description="sharpening of the weak-view target")
    uda_threshold: float = Field(
        0.6, ge=0, lt=1, description="UDA counts only images whose sharpened weak-view confidence reaches this"
    )
    uda_ramp_steps: int = Field(500, ge=1, description="steps over which the UDA weight rises linearly to uda_weight")
    ema_decay: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="keep an EMA of the student's weights (timm ModelEmaV3); the finetune starts from it",
    )
    finetune_epochs: int = Field(
        10, ge=0, description="then finetune the student on labeled data for this many epochs (0: none)"
    )
    finetune_lr: float = Field(1e-3, gt=0)
    checkpoint_every: int = Field(
        200,
        gt=0,
        description="write a resumable checkpoint (both models, optimisers, schedulers, step, RNG) every N steps",
    )


def mpl_work(teacher_views: int) -> Work:
    """Images per run: the student's strong views and labeled feedback pass, plus a teacher's labeled batch and its
    `teacher_views` views of each unlabeled image (0: a teacher that sees no image), then the finetune."""

    def work(params: Any, labeled: int, unlabeled: int) -> tuple[int, int]:
        m = params.methods.mpl
        r = m.unlabeled_ratio
        per_step = m.batch_size * ((1 + r) + ((1 + teacher_views * r) if teacher_views else 0))
        return m.steps * per_step + m.finetune_epochs * labeled, 0

    return work


METHOD = Method(
    name="mpl",
    stage="train-mpl",
    consumes="nothing",
    data_parallel=True,
    step="selftrain.methods.mpl.step:MplStep",
    work=mpl_work(2),
    summary="Meta Pseudo Labels: teacher and student trained together, the teacher from the student's labeled loss "
    "(Pham et al. 2021)",
    params=MplParams,
)
