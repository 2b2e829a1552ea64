"""One Meta Pseudo Labels step (Pham et al. 2021), first-order, with the UDA auxiliary loss.

The student learns only from the teacher's hard pseudo-labels on strongly augmented unlabeled
images. The teacher learns from the change this caused in the student's loss on a labeled batch,
    h = CE(y_l, S_old(x_l)) - CE(y_l, S_new(x_l)) - baseline,
minimising h * CE(y_hat, T(x_us)): a pseudo-label that lowered the student's labeled loss (h > 0)
is made more likely, one that raised it less likely (the sign of the paper's Appendix A; some public
reimplementations flip it). The baseline is a moving average of h. How h is measured (`signal`):
  train: both losses from train-mode passes (the "before" from the update's own pass over labeled and
         strong images, the "after" from a pass over the labeled batch alone): other dropout masks and
         batch statistics, so h carries their noise;
  eval:  both losses from eval-mode passes of the labeled batch (no dropout, running BatchNorm statistics),
         just before and after the weights' update: only the update moves h;
  dot:   the first-order form, h = -grad L_l(theta_new) . (theta_new - theta_old) with the gradient in eval
         mode (the paper's Appendix A, with the optimiser's actual step in place of -lr * grad).
The teacher also minimises CE on the labeled batch and, ramped up, UDA: CE between its sharpened prediction
q = softmax(z_weak / T) and its prediction on a strong view of the same unlabeled images, counted where
max q >= threshold (the mask is taken on the sharpened q, as in the MPL authors' code and MPL-pytorch).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selftrain.methods.mpl import MplParams


@dataclass
class MplState:
    step: int = 0
    baseline: float = 0.0


@dataclass(frozen=True)
class Parallel:
    """How a step runs: `autocast` around the forward passes (mixed precision), `mean` of a scalar over the
    data-parallel processes (h: every process must update its teacher with the same signal). Defaults: one process in
    fp32."""

    autocast: Callable[[], Any] = contextlib.nullcontext
    mean: Callable[[float], float] = float


ONE_PROCESS = Parallel()


def mpl_step(
    teacher: nn.Module,
    student: nn.Module,
    t_opt: torch.optim.Optimizer,
    s_opt: torch.optim.Optimizer,
    x_l: Tensor,
    y_l: Tensor,
    x_uw: Tensor,
    x_us: Tensor,
    cfg: MplParams,
    state: MplState,
    par: Parallel = ONE_PROCESS,
) -> dict[str, float]:
    """Update student then teacher on one batch; advance `state`; return the step's losses and h."""
    n_l, n_u = len(x_l), len(x_uw)
    with par.autocast():
        t_logits = teacher(torch.cat([x_l, x_uw, x_us])).float()
    t_l, t_uw, t_us = t_logits[:n_l], t_logits[n_l : n_l + n_u], t_logits[n_l + n_u :]
    t_loss_l = F.cross_entropy(t_l, y_l)
    target = F.softmax(t_uw.detach() / cfg.uda_temperature, 1)
    mask = (target.amax(1) >= cfg.uda_threshold).float()  # on the sharpened target, as the MPL authors' code
    t_loss_uda = (F.cross_entropy(t_us, target, reduction="none") * mask).mean()
    uda_weight = cfg.uda_weight * min(1.0, (state.step + 1) / cfg.uda_ramp_steps)
    y_hat = t_us.detach().argmax(1)

    h, s_loss, signal = student_update(student, s_opt, x_l, y_l, x_us, y_hat, cfg, state, par)
    t_loss_mpl = signal * F.cross_entropy(t_us, y_hat)

    t_loss = t_loss_l + uda_weight * t_loss_uda + cfg.mpl_weight * t_loss_mpl
    t_opt.zero_grad(set_to_none=True)
    t_loss.backward()
    t_opt.step()
    state.step += 1
    return {
        "teacher_loss": t_loss.item(),
        "teacher_uda": t_loss_uda.item(),
        "student_loss": s_loss,
        "h": h,
        "signal": signal,
    }


def student_update(
    student: nn.Module,
    s_opt: torch.optim.Optimizer,
    x_l: Tensor,
    y_l: Tensor,
    x_us: Tensor,
    y_hat: Tensor,
    cfg: MplParams,
    state: MplState,
    par: Parallel,
) -> tuple[float, float, float]:
    """One student step on (x_us, y_hat); returns h (its labeled loss before minus after, averaged over the processes),
    its loss and h - baseline."""
    n_l = len(x_l)
    with par.autocast():
        s_logits = student(torch.cat([x_l, x_us])).float()
    net = getattr(student, "module", student)  # eval passes and the dot form's gradient run outside DDP: no collectives
    if (
        cfg.signal == "eval"
    ):  # after the train-mode pass has moved the BatchNorm running statistics: only the step differs
        before = _eval_loss(net, x_l, y_l, par)
    s_loss = F.cross_entropy(s_logits[n_l:], y_hat)
    s_opt.zero_grad(set_to_none=True)
    s_loss.backward()
    params = [q for q in net.parameters() if q.requires_grad]
    old = [q.detach().clone() for q in params] if cfg.signal == "dot" else []
    s_opt.step()
    if cfg.signal == "train":
        with torch.no_grad(), par.autocast():
            h_local = (
                F.cross_entropy(s_logits[:n_l].detach(), y_l) - F.cross_entropy(student(x_l).float(), y_l)
            ).item()
    elif cfg.signal == "eval":
        h_local = before - _eval_loss(net, x_l, y_l, par)
    else:
        net.eval()
        with par.autocast():
            loss_l = F.cross_entropy(net(x_l).float(), y_l)
        grads = torch.autograd.grad(loss_l, params, allow_unused=True)
        net.train()
        h_local = -sum(float((g * (q.detach() - q0)).sum()) for g, q, q0 in zip(grads, params, old) if g is not None)
    h = par.mean(h_local)
    state.baseline = cfg.baseline_decay * state.baseline + (1 - cfg.baseline_decay) * h
    return h, s_loss.item(), h - state.baseline


def _eval_loss(student: nn.Module, x_l: Tensor, y_l: Tensor, par: Parallel) -> float:
    """The labeled loss in eval mode (no dropout or stochastic depth, running BatchNorm statistics), then back to train
    mode."""
    student.eval()
    with torch.no_grad(), par.autocast():
        loss = F.cross_entropy(student(x_l).float(), y_l).item()
    student.train()
    return loss
