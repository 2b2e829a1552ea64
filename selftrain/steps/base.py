"""What every training step shares, so that a method's step is its maths (timm's task, USB's `AlgorithmBase`).

A step owns its models, each trained by AdamW under linear warmup then cosine decay (`lr_lambda`), and one call
(`__call__`) updates them on one batch and returns that step's logs. The base class keeps the bookkeeping: the
optimisers and schedules, one update of a loss (`update`), the state a resume restores (every model without
torch.compile's and DDP's wrappers, its optimiser and schedule, plus what `extra_state` adds), and where it runs
(`ctx`). `selftrain.train.fit` runs any subclass.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from selftrain.train import Context, Finished, lr_lambda


def unwrapped(model: nn.Module) -> nn.Module:
    """The module itself under torch.compile's wrapper (its state_dict's keys are the checkpoint's)."""
    return getattr(model, "_orig_mod", model)


@dataclass
class Trained:
    """One model a step trains: the module, what its forward passes run (itself, or DDP around it), its optimiser
    and its schedule."""

    module: nn.Module
    net: nn.Module
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LambdaLR


class Step:
    """A method's training step. `model` is what the stage keeps (and EMA averages); `total` the run's steps;
    `steps_per_epoch` one pass over its data; a log row every `log_every` steps, a validation every `val_every`
    rows, a resumable checkpoint every `checkpoint_every` steps (None: the stage's runtime.checkpoint_every)."""

    model: nn.Module
    total: int
    steps_per_epoch: int
    log_every: int
    val_every: int = 1
    ema_decay: float | None = None
    checkpoint_every: int | None = None

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.trained: dict[str, Trained] = {}  # the first one's learning rate is the log's

    def optimise(
        self, name: str, module: nn.Module, *, lr: float, weight_decay: float, total: int, warmup: int
    ) -> nn.Module:
        """Train `module` from now on, under `name` in the state; return what its forward passes should run."""
        net = self.ctx.wrap(module)
        opt = torch.optim.AdamW(module.parameters(), lr=lr, weight_decay=weight_decay)
        self.trained[name] = Trained(module, net, opt, torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(total, warmup)))
        return net

    def update(self, loss: torch.Tensor, name: str) -> None:
        """One optimiser step of model `name` on `loss`, then one step of its schedule."""
        t = self.trained[name]
        t.opt.zero_grad(set_to_none=True)
        loss.backward()
        t.opt.step()
        t.sched.step()

    def lr(self) -> float:
        return float(next(iter(self.trained.values())).sched.get_last_lr()[0])

    # what a subclass provides
    def batches(self, start: int) -> Iterator[Any]:
        """The batches of steps start, start + 1, ..."""
        raise NotImplementedError

    def __call__(self, batch: Any) -> dict[str, float]:
        """Update the models on one batch; the step's logs: floats, "loss" first, plus "images" (how many this
        process trained on)."""
        raise NotImplementedError

    def finish(self, kept: nn.Module, rows: list[dict[str, Any]], desc: str) -> Finished:
        """The model to save, its logs and files, and what the stage's summary adds."""
        return kept, {"log.csv": rows}, {}, {}

    # the state a resume restores
    def state_dict(self) -> dict[str, Any]:
        """Shared by every process: each model, optimiser and schedule, and `extra_state()`."""
        state: dict[str, Any] = {}
        for name, t in self.trained.items():
            state |= {
                name: unwrapped(t.module).state_dict(),
                f"{name}_opt": t.opt.state_dict(),
                f"{name}_sched": t.sched.state_dict(),
            }
        return state | self.extra_state()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, t in self.trained.items():
            unwrapped(t.module).load_state_dict(state[name])
            t.opt.load_state_dict(state[f"{name}_opt"])
            t.sched.load_state_dict(state[f"{name}_sched"])
        self.load_extra_state(state)

    def extra_state(self) -> dict[str, Any]:
        """A method's own state beyond its models' (a threshold rule's counts, MPL's baseline)."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        pass

    def rank_state(self) -> dict[str, Any]:
        """This process's own: its random generators (none: a step whose data and noise come from (seed, step))."""
        return {}

    def load_rank_state(self, state: dict[str, Any]) -> None:
        pass

    def reseed(self, seed: int) -> None:
        """New random streams for this process (a resume on another world size)."""
