"""Meta Pseudo Labels: the sign of the teacher's feedback, and the TwoMoons picture on one seed."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from selftrain import moons
from selftrain.methods.mpl import MplParams
from selftrain.methods.mpl.update import MplState, mpl_step
from selftrain.methods.reduced_mpl.update import LogitTeacher, reduced_mpl_step


def cfg(**options: object) -> MplParams:
    """MPL's options, h from train-mode passes and UDA at full weight from the first step unless given."""
    return MplParams.model_validate({"signal": "train", "uda_ramp_steps": 1, **options})


def _teacher_logprob_after_step(mpl_weight: float, wrong_labels: bool) -> tuple[float, float]:
    """One step where the unlabeled batch is the labeled one; the teacher's mean log p(its own pseudo-label), and h.

    The labels are the teacher's own pseudo-labels (learning them helps the student) or never them (it hurts)."""
    torch.manual_seed(0)
    x = torch.randn(16, 4)
    teacher, student = nn.Linear(4, 3), nn.Linear(4, 3)
    y_hat = teacher(x).argmax(1)
    y = (y_hat + 1) % 3 if wrong_labels else y_hat
    t_opt, s_opt = torch.optim.SGD(teacher.parameters(), lr=0.1), torch.optim.SGD(student.parameters(), lr=0.5)
    config = cfg(uda_weight=0.0, mpl_weight=mpl_weight)
    out = mpl_step(teacher, student, t_opt, s_opt, x, y, x, x, config, MplState())
    with torch.no_grad():
        return F.log_softmax(teacher(x), 1).gather(1, y_hat[:, None]).mean().item(), out["h"]


def test_a_pseudo_label_that_helped_the_student_is_reinforced_and_one_that_hurt_is_weakened():
    helped, h = _teacher_logprob_after_step(1.0, wrong_labels=False)
    assert h > 0 and helped > _teacher_logprob_after_step(0.0, wrong_labels=False)[0]
    hurt, h = _teacher_logprob_after_step(1.0, wrong_labels=True)
    assert h < 0 and hurt < _teacher_logprob_after_step(0.0, wrong_labels=True)[0]


def _h(signal: str, lr: float, seed: int) -> float:
    """h of one student step of a net with dropout and BatchNorm, on fixed data; torch's generator seeded with
    `seed`."""
    torch.manual_seed(0)
    x, y = torch.randn(32, 4), torch.randint(0, 3, (32,))
    student = nn.Sequential(nn.Linear(4, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 3))
    teacher = nn.Linear(4, 3)
    t_opt, s_opt = torch.optim.SGD(teacher.parameters(), lr=0.0), torch.optim.SGD(student.parameters(), lr=lr)
    torch.manual_seed(seed)
    return mpl_step(
        teacher, student, t_opt, s_opt, x[:8], y[:8], x[8:], x[8:], cfg(uda_weight=0.0, signal=signal), MplState()
    )["h"]


def test_h_measured_in_train_mode_is_noisy_where_eval_mode_and_the_dot_form_are_exact():
    # no update (lr 0): the true change in the labeled loss is 0. Train-mode passes with other dropout masks and
    # batch statistics still report one; eval mode and the first-order form report exactly none
    assert all(abs(_h("train", 0.0, seed)) > 1e-3 for seed in range(3))
    assert all(_h(signal, 0.0, seed) == 0.0 for signal in ("eval", "dot") for seed in range(3))
    # a real step: the dot form is the first-order estimate of eval mode's exact change (small step: close)
    for seed in range(3):
        exact, first_order = _h("eval", 0.05, seed), _h("dot", 0.05, seed)
        assert exact != 0 and first_order == pytest.approx(exact, rel=0.2, abs=1e-4)


@pytest.mark.slow
def test_twomoons_mpl_beats_supervised_and_pseudo_labels_on_one_seed():
    acc = moons.run(0, moons.MoonsSetup(steps=1000)).accuracy
    assert acc["mpl"] > acc["pseudo_labels"] + 0.05 and acc["mpl"] > acc["supervised"] + 0.05, acc


def _logit_teacher_after_step(wrong_labels: bool) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Reduced MPL, one step: the MLP teacher's log p(pseudo-label) before and after, and h."""
    torch.manual_seed(0)
    x, z = torch.randn(16, 4), torch.randn(16, 3) * 2
    teacher, student = LogitTeacher(3, 8), nn.Linear(4, 3)
    y_hat = z.argmax(1)
    y = (y_hat + 1) % 3 if wrong_labels else y_hat
    before = F.log_softmax(teacher(z), 1).gather(1, y_hat[:, None]).detach()
    t_opt, s_opt = torch.optim.SGD(teacher.parameters(), lr=0.5), torch.optim.SGD(student.parameters(), lr=0.5)
    out = reduced_mpl_step(teacher, student, t_opt, s_opt, x, y, z, x, cfg(), MplState())
    with torch.no_grad():
        return before, F.log_softmax(teacher(z), 1).gather(1, y_hat[:, None]), out["h"]


def test_reduced_mpl_starts_at_the_large_teachers_labels_and_moves_them_by_the_signal():
    z = torch.randn(5, 10)
    assert torch.equal(LogitTeacher(10, 32)(z), z)  # before any update: exactly the stored logits
    before, after, h = _logit_teacher_after_step(wrong_labels=False)
    assert h > 0 and after.mean() > before.mean()
    before, after, h = _logit_teacher_after_step(wrong_labels=True)
    assert h < 0 and after.mean() < before.mean()


def test_reduced_mpl_anchor_pulls_a_drifted_mlp_teacher_back_to_the_large_teachers_distribution():
    torch.manual_seed(1)
    x, z = torch.randn(16, 4), torch.randn(16, 3)
    teacher, student = LogitTeacher(3, 8), nn.Linear(4, 3)
    nn.init.normal_(teacher.mlp[2].weight, std=2.0)  # drifted away from z

    def distance() -> float:
        with torch.no_grad():
            return F.cross_entropy(teacher(z), F.softmax(z, 1)).item()

    before = distance()
    t_opt, s_opt = torch.optim.SGD(teacher.parameters(), lr=0.2), torch.optim.SGD(student.parameters(), lr=0.1)
    for _ in range(5):
        reduced_mpl_step(
            teacher, student, t_opt, s_opt, x, x.argmax(1) % 3, z, x, cfg(mpl_weight=0.0), MplState(), anchor_weight=1.0
        )
    assert distance() < before - 0.1


def test_the_uda_mask_is_taken_on_the_sharpened_weak_view_as_the_references_do():
    """Weak and strong views both give logits [1, 0, 0]. Unsharpened, max p = e / (e + 2) = 0.576, under the
    threshold 0.6; sharpened at T 0.7, q = softmax([1, 0, 0] / 0.7) has max 0.676, over it: the image counts, and
    UDA is CE(q, softmax([1, 0, 0])) = -sum q log p."""
    teacher = nn.Linear(1, 3, bias=False)
    student = nn.Linear(1, 3)
    with torch.no_grad():
        teacher.weight.copy_(torch.tensor([[1.0], [0.0], [0.0]]))
    x = torch.ones(4, 1)
    t_opt, s_opt = torch.optim.SGD(teacher.parameters(), lr=0.0), torch.optim.SGD(student.parameters(), lr=0.0)
    config = cfg(uda_weight=1.0, uda_temperature=0.7, uda_threshold=0.6, mpl_weight=0.0)
    out = mpl_step(teacher, student, t_opt, s_opt, x, torch.zeros(4, dtype=torch.long), x, x, config, MplState())
    e, e_sharp = math.e, math.exp(1 / 0.7)
    assert e / (e + 2) < 0.6 < e_sharp / (e_sharp + 2)
    q = [e_sharp / (e_sharp + 2), 1 / (e_sharp + 2), 1 / (e_sharp + 2)]
    log_p = [1 - math.log(e + 2), -math.log(e + 2), -math.log(e + 2)]
    assert out["teacher_uda"] == pytest.approx(-sum(a * b for a, b in zip(q, log_p)), rel=1e-5)
    # above the sharpened confidence too: nothing counts
    out = mpl_step(
        teacher,
        student,
        t_opt,
        s_opt,
        x,
        torch.zeros(4, dtype=torch.long),
        x,
        x,
        cfg(uda_threshold=0.7, uda_temperature=0.7),
        MplState(),
    )
    assert out["teacher_uda"] == 0.0
