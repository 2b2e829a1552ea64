"""Where a run's artifacts live under a root (local path or s3://). dvc.yaml spells out the same paths for root
'artifacts'.

root/data-listing.json          list-data (the input data's fingerprint)
root/data/                      prepare
root/gen0/teacher/              train-teacher (model.safetensors, log.csv)
root/gen0/promoted.json         generation 0's record: the supervised teacher
root/robustness/sets/           make-robustness-sets (-C, -P)
root/robustness/reference/      robustness-reference (-A set, the reference's -C/-P results)
root/genK/{logits,pseudo,student}/, metrics.json, promoted.json, lineage.json, report/
root/twomoons/                  twomoons (the MPL picture; needs nothing above)
"""

from __future__ import annotations

from dataclasses import dataclass

from selftrain.artifacts import join
from selftrain.stages import CHECKPOINT


@dataclass(frozen=True)
class Generation:
    root: str
    name: str  # gen0 (the supervised teacher), gen1, gen2, ...

    @property
    def dir(self) -> str:
        return join(self.root, self.name)

    @property
    def data_listing(self) -> str:
        return join(self.root, "data-listing.json")

    @property
    def data(self) -> str:
        return join(self.root, "data")

    @property
    def robustness_sets(self) -> str:
        return join(self.root, "robustness", "sets")

    @property
    def robustness_reference(self) -> str:
        return join(self.root, "robustness", "reference")

    @property
    def twomoons(self) -> str:
        return join(self.root, "twomoons")

    @property
    def teacher(self) -> str:
        """gen0 only: the supervised teacher's directory."""
        return join(self.dir, "teacher")

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

    @property
    def lineage(self) -> str:
        return join(self.dir, "lineage.json")

    @property
    def report(self) -> str:
        return join(self.dir, "report")
