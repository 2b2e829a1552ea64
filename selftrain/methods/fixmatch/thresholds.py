"""Consistency training's pieces: which unlabeled images count (a confidence mask by a threshold rule), distribution
alignment of the pseudo-label, and FixMatch's loss on the strong view.

Threshold rules (each a small object with state, so a resumed run continues it; `mask(probs, rows)` takes the
weak view's class probabilities, without gradient, and the images' rows in the unlabeled split):
- fixed (FixMatch, Sohn et al. 2020): max p >= tau.
- flexmatch (Zhang et al. 2021): class c's threshold is M(beta_c) * tau, M(x) = x / (2 - x), beta_c = sigma_c /
  max(max_c' sigma_c', unused) with sigma_c the unlabeled images whose latest prediction above tau was c, and
  `unused` those never above tau (the warm-up: thresholds start low and rise as the model learns each class).
  The mask uses the counts before this batch; then the batch's confident predictions are recorded.
- freematch (Wang et al. 2023): tau_t = EMA of the batch's mean max p, p~_t = EMA of the mean p; class c's
  threshold is tau_t * p~_t(c) / max p~_t. The EMAs take this batch first, then the mask is computed.
  tau_0 = 1/C and p~_0 = 1/C, as the paper and USB start them.

The running means (FreeMatch's, distribution alignment's) take no update from a batch with a non-finite
probability: one NaN would stay in them for the rest of the run and mask every image from then on.

These are written here rather than taken from USB (microsoft/Semi-supervised-learning, whose hooks follow the
same rules) because USB's hooks are bound to its trainer object and its CUDA placement; the arithmetic is a few
lines and is checked against hand-worked numbers in tests/test_thresholds.py.
"""

from __future__ import annotations

from typing import Any, Literal, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from selftrain import distributed
from selftrain.methods.fixmatch import FixMatchParams

ThresholdRule = Literal["fixed", "flexmatch", "freematch"]


class Threshold(Protocol):
    def mask(self, probs: torch.Tensor, rows: torch.Tensor) -> torch.Tensor: ...  # float 0/1 per image
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class FixedThreshold:
    def __init__(self, tau: float) -> None:
        self.tau = tau

    def mask(self, probs: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        return (probs.max(1).values >= self.tau).float()

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class FlexMatchThreshold:
    """Curriculum pseudo-labelling: class-wise thresholds from how many unlabeled images each class has claimed."""

    def __init__(self, tau: float, n_unlabeled: int, classes: int, warmup: bool = True) -> None:
        self.tau = tau
        self.classes = classes
        self.warmup = warmup
        self.selected = torch.full((n_unlabeled,), -1, dtype=torch.long)  # each image's latest confident class

    def beta(self) -> torch.Tensor:
        """The learning effect of each class, normalised to [0, 1]."""
        claimed = self.selected[self.selected >= 0]
        sigma = torch.bincount(claimed, minlength=self.classes).float()
        unused = float(len(self.selected) - len(claimed))
        top = max(float(sigma.max()), unused) if self.warmup else float(sigma.max())
        return sigma / top if top > 0 else sigma

    def thresholds(self) -> torch.Tensor:
        b = self.beta()
        return self.tau * b / (2 - b)

    def mask(self, probs: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        conf, pred = probs.max(1)
        mask = (conf >= self.thresholds().to(probs.device)[pred]).float()
        confident = (conf >= self.tau).cpu()
        self.selected[rows.cpu()[confident]] = pred.cpu()[confident]
        return mask

    def state_dict(self) -> dict[str, Any]:
        return {"selected": self.selected.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.selected = state["selected"].clone()


class FreeMatchThreshold:
    """Self-adaptive thresholds: a global one that follows the model's confidence, scaled per class by its mean
    probability (and the class histogram the fairness term uses)."""

    def __init__(self, classes: int, momentum: float = 0.999) -> None:
        self.m = momentum
        self.tau_t = torch.tensor(1.0 / classes)
        self.p_model = torch.full((classes,), 1.0 / classes)
        self.hist = torch.full((classes,), 1.0 / classes)  # EMA of the predicted-class histogram

    def update(self, probs: torch.Tensor) -> None:
        p = probs.detach().float().cpu()
        if not torch.isfinite(p).all():
            return
        conf, pred = p.max(1)
        m = self.m
        self.tau_t = m * self.tau_t + (1 - m) * conf.mean()
        self.p_model = m * self.p_model + (1 - m) * p.mean(0)
        self.hist = m * self.hist + (1 - m) * torch.bincount(pred, minlength=len(self.hist)).float() / len(pred)

    def thresholds(self) -> torch.Tensor:
        return self.tau_t * self.p_model / self.p_model.max()

    def mask(self, probs: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        self.update(probs)
        conf, pred = probs.max(1)
        return (conf >= self.thresholds().to(probs.device)[pred]).float()

    def state_dict(self) -> dict[str, Any]:
        return {"tau_t": self.tau_t.clone(), "p_model": self.p_model.clone(), "hist": self.hist.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.tau_t = state["tau_t"].clone()
        self.p_model = state["p_model"].clone()
        self.hist = state["hist"].clone()


def fairness_loss(logits_strong: torch.Tensor, mask: torch.Tensor, rule: FreeMatchThreshold) -> torch.Tensor:
    """FreeMatch's self-adaptive fairness term, -H(SumNorm(p~/h~), SumNorm(pbar/hbar)) over the masked strong views
    (pbar their mean probability, hbar their predicted-class histogram); 0 when nothing passes the mask."""
    kept = logits_strong[mask.bool()]
    if len(kept) == 0:
        return logits_strong.sum() * 0.0
    p = kept.float().softmax(1)
    h = torch.bincount(p.argmax(1), minlength=p.shape[1]).float() / len(p)
    target = rule.p_model.to(p.device) * _inverse(rule.hist.to(p.device))
    target = target / target.sum()
    mean = p.mean(0) * _inverse(h)  # classes with no prediction in the batch drop out (1/0 -> 0, as USB)
    mean = mean / mean.sum()
    return (target * torch.log(mean + 1e-12)).sum()


def _inverse(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x > 0, 1 / x.clamp_min(1e-30), torch.zeros_like(x))


class DistributionAlignment:
    """ReMixMatch's alignment: q <- Normalize(q * (p(y) + eps) / (p~(y) + eps)), p(y) the labeled class prior, p~(y)
    an EMA of the model's mean prediction on unlabeled images (started from the first batch's mean), eps = 1e-6 as in
    USB (a class whose mean probability underflows to 0 would otherwise turn every aligned row into NaN)."""

    EPS = 1e-6

    def __init__(self, prior: torch.Tensor, momentum: float = 0.999) -> None:
        self.prior = prior.float() / prior.sum()
        self.m = momentum
        self.p_model: torch.Tensor | None = None

    def __call__(self, probs: torch.Tensor) -> torch.Tensor:
        mean = probs.detach().float().mean(0).cpu()
        if torch.isfinite(mean).all():
            self.p_model = mean if self.p_model is None else self.m * self.p_model + (1 - self.m) * mean
        if self.p_model is None:  # no finite batch yet: nothing to align to
            return probs
        q = probs * ((self.prior + self.EPS) / (self.p_model + self.EPS)).to(probs.device)
        return q / q.sum(1, keepdim=True)

    def state_dict(self) -> dict[str, Any]:
        return {"p_model": None if self.p_model is None else self.p_model.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.p_model = None if state["p_model"] is None else state["p_model"].clone()


def build_threshold(rule: ThresholdRule, tau: float, n_unlabeled: int, classes: int, momentum: float) -> Threshold:
    if rule == "fixed":
        return FixedThreshold(tau)
    if rule == "flexmatch":
        return FlexMatchThreshold(tau, n_unlabeled, classes)
    return FreeMatchThreshold(classes, momentum)


def pseudo_targets(
    logits_weak: torch.Tensor,
    rows: torch.Tensor,
    threshold: Threshold,
    align: DistributionAlignment | None,
    temperature: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """From the weak view's logits (no gradient flows back through them): the hard pseudo-labels, the mask and the
    (aligned) probabilities the mask was computed on."""
    with torch.no_grad():
        probs = (logits_weak.detach().float() / temperature).softmax(1)
        if align is not None:
            probs = align(probs)
        mask = threshold.mask(probs, rows)
        return probs.argmax(1), mask, probs


class PseudoLabeller:
    """The threshold rule and the optional alignment with their running state: what turns a batch of weak views
    into pseudo-labels and a mask (FixMatch's step and Noisy Student's consistency term). Under torchrun the rule
    and the alignment update from the whole step's batch (every process's share, gathered), so every process
    keeps the same state; each process keeps its own share of the result."""

    def __init__(self, rule: Threshold, align: DistributionAlignment | None) -> None:
        self.rule = rule
        self.align = align

    @classmethod
    def build(cls, p: FixMatchParams, labels: np.ndarray, classes: int, n_unlabeled: int) -> PseudoLabeller:
        """`p`'s rule over `n_unlabeled` images; alignment (if asked) to the prior of the labeled `labels`."""
        prior = torch.bincount(torch.from_numpy(labels).long(), minlength=classes).float()
        align = DistributionAlignment(prior, p.ema_p) if p.dist_align else None
        return cls(build_threshold(p.threshold, p.tau, n_unlabeled, classes, p.ema_p), align)

    def __call__(
        self, logits_weak: torch.Tensor, rows: torch.Tensor, w: distributed.World
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Pseudo-labels, mask and (aligned) probabilities of this process's weak views."""
        if not w.collective:
            return pseudo_targets(logits_weak, rows, self.rule, self.align)
        # the whole step's batch, every process's equal share in rank order: every process updates the same state
        logits = distributed.all_gather_tensor(logits_weak.detach().cpu(), w)
        out = pseudo_targets(logits, distributed.all_gather_tensor(rows.cpu(), w), self.rule, self.align)
        start = w.rank * len(rows)
        targets, mask, probs = (x[start : start + len(rows)].to(logits_weak.device) for x in out)
        return targets, mask, probs

    def fairness(self, logits_strong: torch.Tensor, mask: torch.Tensor) -> torch.Tensor | None:
        """FreeMatch's fairness term (None under another rule)."""
        return fairness_loss(logits_strong, mask, self.rule) if isinstance(self.rule, FreeMatchThreshold) else None

    def state_dict(self) -> dict[str, Any]:
        return {"threshold": self.rule.state_dict(), "align": None if self.align is None else self.align.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rule.load_state_dict(state["threshold"])
        if self.align is not None:
            self.align.load_state_dict(state["align"])


def masked_ce(logits_strong: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """FixMatch's unlabeled loss: the mean over the whole batch of mask * CE(target, strong view's prediction)."""
    return (F.cross_entropy(logits_strong.float(), targets, reduction="none") * mask).mean()
