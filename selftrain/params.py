"""Typed parameters: one `params.yaml`, validated at load, read by DVC, Prefect and the CLI.

Every section is a pydantic model that forbids unknown keys, so a typo fails at load
with an error naming the key instead of being silently ignored.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class ParamsError(ValueError):
    """Raised for a params file that is missing, unparsable or invalid; the message names each bad key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FolderSources(_Section):
    """Class-per-folder image trees (labeled, val, test) and any folder of images (unlabeled); local or s3://."""

    labeled: str
    unlabeled: str
    val: str
    test: str


class DataParams(_Section):
    source: Literal["fashion_mnist", "folders"] = "fashion_mnist"
    fashion_mnist_dir: str | None = Field(
        None, description="directory holding the four Fashion-MNIST .gz files; default: search known places, then download"
    )
    labeled_per_class: int = Field(100, gt=0)
    val_per_class: int = Field(100, gt=0)
    unlabeled: int = Field(20000, gt=0, description="size of the unlabeled pool drawn from the rest of the training set")
    test: int | None = Field(None, gt=0, description="subsample the test set to this many images (default: all)")
    folders: FolderSources | None = None
    image_size: int = Field(28, ge=8)
    channels: Literal[1, 3] = 1

    @model_validator(mode="after")
    def _folders_given(self) -> DataParams:
        if self.source == "folders" and self.folders is None:
            raise ValueError("data.folders (labeled, unlabeled, val, test) is required when data.source is 'folders'")
        return self


def _check_timm_model(name: str) -> str:
    import timm  # imported here: loading params should not pay for timm unless a model is named

    if not timm.is_model(name):
        close = timm.list_models(f"*{name.split('_')[0]}*")[:8]
        hint = f"; similar names: {', '.join(close)}" if close else ""
        raise ValueError(f"unknown timm model '{name}'{hint}")
    return name


class TrainParams(_Section):
    model: str = "resnet10t"
    epochs: int = Field(60, gt=0)
    batch_size: int = Field(64, gt=0, description="labeled images per step")
    lr: float = Field(3e-3, gt=0)
    weight_decay: float = Field(0.05, ge=0)
    warmup_epochs: float = Field(0.0, ge=0)
    label_smoothing: float = Field(0.1, ge=0, lt=1)
    augment: Literal["none", "flip_crop"] = "flip_crop"
    randaugment: str | None = Field(None, description="timm RandAugment config string, e.g. rand-m9-n2-mstd0.5")
    drop_rate: float = Field(0.0, ge=0, lt=1, description="dropout before the classifier head")
    drop_path_rate: float = Field(0.0, ge=0, lt=1, description="stochastic depth in the body")

    _model_known = field_validator("model")(_check_timm_model)

    @field_validator("randaugment")
    @classmethod
    def _randaugment_form(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith("rand"):
            raise ValueError(f"'{v}' is not a timm RandAugment string (it must start with 'rand', e.g. rand-m9-n2-mstd0.5)")
        return v


class StudentParams(TrainParams):
    epochs: int = Field(8, gt=0, description="passes over the pseudo-labeled set")
    unlabeled_ratio: int = Field(3, ge=1, description="pseudo-labeled images per labeled image in each batch")
    labeled_weight: float = Field(1.0, ge=0)
    pseudo_weight: float = Field(1.0, ge=0)

    @model_validator(mode="after")
    def _some_loss(self) -> StudentParams:
        if self.labeled_weight == 0 and self.pseudo_weight == 0:
            raise ValueError("student.labeled_weight and student.pseudo_weight are both 0: nothing to learn from")
        return self


class InferParams(_Section):
    batch_size: int = Field(512, gt=0)
    topk: int | None = Field(None, gt=0, description="store only the k largest log-probabilities per image")
    shard_size: int = Field(50000, gt=0, description="images per logit-store shard")


class PseudoLabelParams(_Section):
    kind: Literal["soft", "hard"] = "soft"
    temperature: float = Field(1.0, gt=0, description="soft labels are softmax(logits / temperature)")
    threshold: float = Field(0.5, ge=0, lt=1, description="drop images whose top probability is below this")
    per_class: int | Literal["median"] | None = Field(
        "median", description="images per class after balancing: a number, 'median' of kept counts, or null for no balancing"
    )
    upsample: bool = Field(True, description="duplicate images of classes short of per_class")

    @field_validator("per_class")
    @classmethod
    def _positive(cls, v: int | str | None) -> int | str | None:
        if isinstance(v, int) and v <= 0:
            raise ValueError("must be a positive number, 'median' or null")
        return v


class EvaluateParams(_Section):
    batch_size: int = Field(512, gt=0)


class PromoteParams(_Section):
    metric: Literal["val_top1"] = "val_top1"
    min_delta: float = Field(0.0, description="the student must beat the teacher by more than this")


class RuntimeParams(_Section):
    """How to run, not what to compute: not part of any stage's DVC params."""

    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes for training augmentation")
    compile: bool = Field(False, description="torch.compile the model (CUDA only)")


class Params(_Section):
    seed: int = 0
    data: DataParams = DataParams()
    teacher: TrainParams = TrainParams()
    infer: InferParams = InferParams()
    pseudo_labels: PseudoLabelParams = PseudoLabelParams()
    student: StudentParams = StudentParams()
    evaluate: EvaluateParams = EvaluateParams()
    promote: PromoteParams = PromoteParams()
    runtime: RuntimeParams = RuntimeParams()


def _format(err: ValidationError, source: str) -> str:
    lines = [f"{source}: {err.error_count()} invalid parameter(s):"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling against params.yaml in the repository)"
        shown = "" if e["type"] in ("missing", "extra_forbidden") else f" (got {e['input']!r})"
        lines.append(f"  {key}: {msg}{shown}")
    return "\n".join(lines)


def parse_params(raw: dict[str, Any] | None, source: str = "params") -> Params:
    """Validate a params mapping; raise ParamsError naming every bad key."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ParamsError(f"{source}: expected a mapping of sections at the top level, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as e:
        raise ParamsError(_format(e, source)) from None


def load_params(path: str | Path = "params.yaml", overrides: dict[str, Any] | None = None) -> Params:
    """Read and validate a params file; `overrides` maps dotted keys (`student.epochs`) to values."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"params file '{path}' not found (run from the project root or pass --params)")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ParamsError(f"{path}: not valid YAML: {e}") from None
    raw = raw or {}
    for key, value in (overrides or {}).items():
        _set_dotted(raw, key, value)
    return parse_params(raw, str(path))


def _set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    node = raw
    *parents, leaf = key.split(".")
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ParamsError(f"override '{key}': '{part}' is not a section")
    node[leaf] = value


def parse_override(text: str) -> tuple[str, Any]:
    """`student.epochs=2` -> ("student.epochs", 2); the value is read as YAML."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ParamsError(f"expected KEY=VALUE (e.g. student.epochs=2), got '{text}'")
    return key, yaml.safe_load(value)
