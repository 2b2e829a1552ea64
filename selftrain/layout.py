"""Where a run's artifacts live under a root (local path or s3://). dvc.yaml spells out the same paths for root 'artifacts'."""
from __future__ import annotations

from dataclasses import dataclass

from selftrain.artifacts import join
from selftrain.stages import CHECKPOINT


@dataclass(frozen=True)
class Generation:
    root: str
    number: int

    @property
    def dir(self) -> str:
        return join(self.root, f"gen{self.number}")

    @property
    def data(self) -> str:
        return join(self.root, "data")

    @property
    def teacher(self) -> str:
        return join(self.dir, "teacher")

    @property
    def teacher_checkpoint(self) -> str:
        return join(self.teacher, CHECKPOINT)

    @property
    def logits(self) -> str:
        return join(self.dir, "logits")

    @property
    def pseudo(self) -> str:
        return join(self.dir, "pseudo")

    @property
    def student(self) -> str:
        return join(self.dir, "student")

    @property
    def student_checkpoint(self) -> str:
        return join(self.student, CHECKPOINT)

    @property
    def metrics(self) -> str:
        return join(self.dir, "metrics.json")

    @property
    def promoted(self) -> str:
        return join(self.dir, "promoted.json")
