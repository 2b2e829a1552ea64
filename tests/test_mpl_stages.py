"""The student stages refuse missing inputs: distill needs the logit store, Noisy Student the pseudo-labels.
(MPL killed mid-training and resumed in a new process: test_k8s_runner's eviction test; resume files: test_resume.)"""

from pathlib import Path

import pytest

from conftest import write_tiny_params
from selftrain import stages
from selftrain.params import load_params


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> tuple[Path, None]:
    root = tmp_path_factory.mktemp("mpl")
    stages.prepare.run(load_params(write_tiny_params(root / "params.yaml")), out=str(root / "data"))
    return root, None  # the stages refuse before they would read the teacher (gen0.json)


def test_distill_needs_the_logit_store_and_noisy_student_the_pseudo_labels(setup):
    root, _ = setup
    params = load_params(root / "params.yaml", {"generations.gen1.method": "distill", "student.loss": "soft_ce"})
    with pytest.raises(ValueError, match="gen1 is method distill: give --logits-store"):
        stages.train_student.run(
            params,
            generation="gen1",
            data=str(root / "data"),
            teacher=str(root / "gen0.json"),
            out=str(root / "d"),
            pseudo=str(root / "pseudo"),
        )
    with pytest.raises(ValueError, match="gen2 is method mpl: its stage is train-mpl, not train-student"):
        stages.train_student.run(
            params, generation="gen2", data=str(root / "data"), teacher=str(root / "gen0.json"), out=str(root / "d")
        )
    noisy = load_params(root / "params.yaml")
    with pytest.raises(ValueError, match="gen1 is method noisy_student: give --pseudo"):
        stages.train_student.run(
            noisy, generation="gen1", data=str(root / "data"), teacher=str(root / "gen0.json"), out=str(root / "d")
        )
    assert not (root / "d").exists()
