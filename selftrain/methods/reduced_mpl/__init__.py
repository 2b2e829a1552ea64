"""Reduced MPL: MPL (selftrain.methods.mpl, whose `methods.mpl` options it reads) with a small MLP over the large
teacher's stored logits as the teacher (update.py), so no image passes through a teacher."""

from __future__ import annotations

from pydantic import Field

from selftrain.methods import Method, MethodParams
from selftrain.methods.mpl import mpl_work


class ReducedMplParams(MethodParams):
    """`methods.reduced_mpl`: the MLP teacher; everything else is `methods.mpl`."""

    hidden: int = Field(128, gt=0, description="hidden width of the MLP teacher over stored logits")
    lr: float = Field(1e-3, gt=0, description="the MLP teacher's learning rate")
    anchor_weight: float = Field(
        1.0,
        ge=0,
        description="soft CE of the MLP teacher to the large teacher's distribution (0: the MPL signal alone)",
    )


METHOD = Method(
    name="reduced_mpl",
    stage="train-reduced-mpl",
    consumes="logits",
    data_parallel=True,
    step="selftrain.methods.reduced_mpl.step:ReducedMplStep",
    work=mpl_work(0),
    summary="MPL whose teacher is a small MLP over the large teacher's stored logits",
    params=ReducedMplParams,
    reads=("student", "methods.mpl"),
)
