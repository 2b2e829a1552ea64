"""The TwoMoons picture of Meta Pseudo Labels: 6 labeled points, supervised vs pseudo-labels vs MPL.

All three train the same small MLP for the same number of steps from the same labeled points:
- supervised: CE on the 6 labeled points;
- pseudo-labels: that supervised model, frozen, labels the unlabeled points (hard); a student
  trains on them and the labeled points;
- MPL: teacher and student trained together (selftrain.methods.mpl), then the student is finetuned on the
  labeled points.
The moons are drawn here (a few lines) rather than through scikit-learn, which the project does
not otherwise need.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from selftrain import artifacts
from selftrain.methods.mpl import MplParams
from selftrain.methods.mpl.update import MplState, mpl_step
from selftrain.rendering import png_bytes, pyplot

METHODS = ("supervised", "pseudo_labels", "mpl")


def make_moons(n: int, noise: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """`n` points of two interleaving half circles (class 0 upper, class 1 lower) with Gaussian noise."""
    y = rng.integers(0, 2, n)
    t = rng.uniform(0, math.pi, n)
    x = np.where(y[:, None] == 0, np.stack([np.cos(t), np.sin(t)], 1), np.stack([1 - np.cos(t), 0.5 - np.sin(t)], 1))
    return (x + rng.normal(0, noise, x.shape)).astype(np.float32), y


@dataclass(frozen=True)
class MoonsSetup:
    labeled_per_class: int = 3
    unlabeled: int = 1000
    test: int = 2000
    noise: float = 0.1
    hidden: int = 64
    steps: int = 2000
    lr: float = 0.01
    weak_noise: float = 0.02  # input jitter of the weak view (UDA) ...
    strong_noise: float = 0.15  # ... and of the strong view the student and MPL signal see
    finetune_steps: int = 200
    mpl_weight: float = 1.0  # the teacher's MPL signal (0: UDA + labeled CE only; -1: the flipped sign)
    uda_weight: float = 1.0
    signal: Literal["train", "eval", "dot"] = (
        # how h is measured (selftrain.methods.mpl.update); this MLP has no dropout or BatchNorm, so train =
        # eval here
        "train"
    )


def _mlp(hidden: int) -> nn.Module:
    return nn.Sequential(nn.Linear(2, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 2))


def _fit(model: nn.Module, x: Tensor, y: Tensor, steps: int, lr: float) -> nn.Module:
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return model


def _accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


@dataclass
class MoonsResult:
    models: dict[str, nn.Module]  # by method
    accuracy: dict[str, float]  # test accuracy by method
    labeled: tuple[Tensor, Tensor]
    unlabeled: Tensor


def run(seed: int, setup: MoonsSetup = MoonsSetup()) -> MoonsResult:
    """Train the three methods on one draw of the moons."""
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    xs, ys = make_moons(setup.unlabeled + setup.test + 200, setup.noise, rng)
    pick = np.concatenate([np.flatnonzero(ys == c)[: setup.labeled_per_class] for c in (0, 1)])
    rest = np.setdiff1d(np.arange(len(ys)), pick)
    x_l, y_l = torch.from_numpy(xs[pick]), torch.from_numpy(ys[pick])
    x_u = torch.from_numpy(xs[rest[: setup.unlabeled]])
    x_t, y_t = torch.from_numpy(xs[rest[-setup.test :]]), torch.from_numpy(ys[rest[-setup.test :]])
    init = _mlp(setup.hidden)

    supervised = _fit(copy.deepcopy(init), x_l, y_l, setup.steps, setup.lr)
    with torch.no_grad():
        pseudo = supervised(x_u).argmax(1)
    pl = _fit(copy.deepcopy(init), torch.cat([x_l, x_u]), torch.cat([y_l, pseudo]), setup.steps, setup.lr)

    teacher, student = copy.deepcopy(supervised), copy.deepcopy(init)
    t_opt, s_opt = (
        torch.optim.Adam(teacher.parameters(), lr=setup.lr),
        torch.optim.Adam(student.parameters(), lr=setup.lr),
    )
    cfg = MplParams(
        uda_ramp_steps=setup.steps // 4, mpl_weight=setup.mpl_weight, uda_weight=setup.uda_weight, signal=setup.signal
    )
    state = MplState()
    gen = torch.Generator().manual_seed(seed)
    for _ in range(setup.steps):
        batch = x_u[torch.randint(0, len(x_u), (64,), generator=gen)]
        weak = batch + setup.weak_noise * torch.randn(batch.shape, generator=gen)
        strong = batch + setup.strong_noise * torch.randn(batch.shape, generator=gen)
        mpl_step(teacher, student, t_opt, s_opt, x_l, y_l, weak, strong, cfg, state)
    mpl = _fit(student, x_l, y_l, setup.finetune_steps, setup.lr * 0.1)
    models = dict(zip(METHODS, (supervised, pl, mpl)))
    return MoonsResult(models, {k: _accuracy(m, x_t, y_t) for k, m in models.items()}, (x_l, y_l), x_u)


def picture(result: MoonsResult) -> bytes:
    """One PNG: the three decision boundaries side by side over the unlabeled and labeled points."""
    plt = pyplot()
    gx, gy = np.meshgrid(np.linspace(-1.5, 2.5, 200), np.linspace(-1.0, 1.5, 150))
    grid = torch.from_numpy(np.c_[gx.ravel(), gy.ravel()].astype(np.float32))
    (x_l, y_l), x_u = result.labeled, result.unlabeled
    fig, axes = plt.subplots(1, len(METHODS), figsize=(4.2 * len(METHODS), 3.4), sharey=True)
    for ax, name in zip(axes, METHODS):
        with torch.no_grad():
            p1 = F.softmax(result.models[name](grid), 1)[:, 1].reshape(gx.shape).numpy()
        ax.contourf(gx, gy, p1, levels=[0, 0.5, 1], colors=["#c6dbef", "#fdd0a2"], alpha=0.8)
        ax.contour(gx, gy, p1, levels=[0.5], colors="k", linewidths=1.2)
        ax.scatter(x_u[:, 0], x_u[:, 1], s=3, c="0.5")
        ax.scatter(x_l[:, 0], x_l[:, 1], s=60, c=["tab:blue" if c == 0 else "tab:orange" for c in y_l], edgecolors="k")
        ax.set_title(f"{name.replace('_', ' ')}: {100 * result.accuracy[name]:.1f} %")
    fig.suptitle("TwoMoons, 6 labeled points: decision boundary and test accuracy")
    data = png_bytes(fig)
    plt.close(fig)
    return data


def write(out: str, seeds: list[int], setup: MoonsSetup = MoonsSetup()) -> dict[str, Any]:
    """Run every seed; write twomoons.png (the first seed) and results.json (accuracy per seed, mean, std) to `out`."""
    results = [run(seed, setup) for seed in tqdm(seeds, desc="twomoons", unit="seed")]
    summary: dict[str, Any] = {"seeds": seeds, "setup": asdict(setup)}
    for name in METHODS:
        accs = [r.accuracy[name] for r in results]
        summary[name] = {
            "per_seed": accs,
            "mean": float(np.mean(accs)),
            "std": float(np.std(accs, ddof=1)) if len(accs) > 1 else 0.0,
        }
    with artifacts.atomic_dir(out) as staging:
        artifacts.write_bytes(artifacts.join(staging, "twomoons.png"), picture(results[0]))
        artifacts.write_json(artifacts.join(staging, "results.json"), summary)
    return summary
