"""One reduced-MPL step: MPL's student side and signal (selftrain.methods.mpl.update), its teacher a small MLP over
a large fixed teacher's stored logits (`LogitTeacher`), so no image passes through a teacher."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selftrain.methods.mpl import MplParams
from selftrain.methods.mpl.update import ONE_PROCESS, MplState, Parallel, student_update


class LogitTeacher(nn.Module):
    """Reduced MPL's teacher: stored logits z -> z + MLP(z). The last layer starts at zero, so before any
    update its pseudo-labels are exactly the large teacher's; the MPL signal then moves them."""

    def __init__(self, num_classes: int, hidden: int):
        super().__init__()
        first, last = nn.Linear(num_classes, hidden), nn.Linear(hidden, num_classes)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.mlp = nn.Sequential(first, nn.GELU(), last)

    def forward(self, z: Tensor) -> Tensor:
        return z + self.mlp(z)


def reduced_mpl_step(
    teacher: nn.Module,
    student: nn.Module,
    t_opt: torch.optim.Optimizer,
    s_opt: torch.optim.Optimizer,
    x_l: Tensor,
    y_l: Tensor,
    z_u: Tensor,
    x_us: Tensor,
    cfg: MplParams,
    state: MplState,
    anchor_weight: float = 1.0,
    par: Parallel = ONE_PROCESS,
) -> dict[str, float]:
    """Reduced MPL: pseudo-labels from `teacher(z_u)` (z_u: the large teacher's stored logits of the images
    x_us shows strongly augmented); student step as in `mpl_step`; the teacher learns from the MPL signal,
    weighted by `anchor_weight` against an anchor.
    It sees no labeled image and no view of one, so neither labeled CE nor UDA can hold it; in their place an
    anchor, soft CE to the large teacher's own distribution softmax(z_u): with the MPL signal alone the MLP
    drifted until its labels collapsed (student val top-1 at chance on one Fashion-MNIST seed)."""
    t_logits = teacher(z_u)
    y_hat = t_logits.detach().argmax(1)
    h, s_loss, signal = student_update(student, s_opt, x_l, y_l, x_us, y_hat, cfg, state, par)
    anchor = F.cross_entropy(t_logits, F.softmax(z_u, 1))
    t_loss = cfg.mpl_weight * signal * F.cross_entropy(t_logits, y_hat) + anchor_weight * anchor
    t_opt.zero_grad(set_to_none=True)
    t_loss.backward()
    t_opt.step()
    state.step += 1
    return {"teacher_loss": t_loss.item(), "teacher_uda": 0.0, "student_loss": s_loss, "h": h, "signal": signal}
