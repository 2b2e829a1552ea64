"""Typed parameters: one `params.yaml`, validated at load, read by DVC, Prefect and the CLI.

Every section is a pydantic model that forbids unknown keys, so a typo fails at load
with an error naming the key instead of being silently ignored.
"""

from __future__ import annotations

import reprlib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    Field,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from selftrain import artifacts, methods
from selftrain.orchestration_params import KubernetesParams, PrefectParams, StageResources, known_stage_names
from selftrain.section import Section as _Section


class ParamsError(ValueError):
    """Raised for a params file that is missing, unparsable or invalid; the message names each bad key."""


MAX_YAML_VALUES = 100_000  # a params file holds a few hundred; an alias bomb expands to billions


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping: PyYAML keeps the last silently, DVC refuses
    the file, and the two runners must not read one file two ways. Merge keys (`<<`) may still be overridden."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"key '{key}' appears twice in one mapping (first on line {seen[key] + 1})",
                    key_node.start_mark,
                )
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep)


def _expanded_values(node: yaml.Node, memo: dict[int, int]) -> int:
    """How many values `node` holds once every alias is expanded (an alias repeats its anchor's node object)."""
    if id(node) not in memo:
        memo[id(node)] = MAX_YAML_VALUES + 1  # a node that contains itself expands forever
        if isinstance(node, yaml.SequenceNode):
            n = 1 + sum(_expanded_values(c, memo) for c in node.value)
        elif isinstance(node, yaml.MappingNode):
            n = 1 + sum(_expanded_values(k, memo) + _expanded_values(v, memo) for k, v in node.value)
        else:
            n = 1
        memo[id(node)] = n
    return memo[id(node)]


def parse_yaml(text: str, source: str) -> Any:
    """A params file's YAML: safe tags only, no key twice, at most MAX_YAML_VALUES values with aliases expanded."""
    loader = _StrictLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if _expanded_values(node, {}) > MAX_YAML_VALUES:
            raise ParamsError(
                f"{source}: its YAML aliases expand to over {MAX_YAML_VALUES:,} values (an alias bomb?); a params "
                "file needs no such thing"
            )
        return loader.construct_document(node)
    except yaml.YAMLError as e:
        raise ParamsError(f"{source}: not valid YAML: {e}") from None
    finally:
        loader.dispose()


class FolderSources(_Section):
    """Class-per-folder image trees (labeled, val, test) and any folder of images (unlabeled); local or s3://."""

    labeled: str
    unlabeled: str
    val: str
    test: str
    holdout: str | None = Field(
        None, description="class-per-folder images used by no split: the pool the -A set is filtered from"
    )


class DataParams(_Section):
    source: Literal["fashion_mnist", "folders"] = "fashion_mnist"
    fashion_mnist_dir: str | None = Field(
        None,
        description="directory holding the four Fashion-MNIST .gz files; default: search known places, then download",
    )
    labeled_per_class: int = Field(100, gt=0)
    val_per_class: int = Field(100, gt=0)
    unlabeled: int = Field(
        20000, gt=0, description="size of the unlabeled pool drawn from the rest of the training set"
    )
    test: int | None = Field(None, gt=0, description="subsample the test set to this many images (default: all)")
    holdout: int = Field(
        10000,
        ge=0,
        description="labeled training images used by no split: the pool the -A robustness set is filtered from",
    )
    folders: FolderSources | None = None
    image_size: int = Field(28, ge=8, le=2048, description="images are resized to this square side (ImageNet: 224)")
    channels: Literal[1, 3] = 1
    max_file_mb: int = Field(
        256, gt=0, le=4096, description="folders: a file larger than this is a listed problem, never read"
    )
    skip_bad: bool = Field(
        False,
        description="folders: leave out bad files (unreadable, truncated, not an image, empty) with a warning listing "
        "each, instead of stopping",
    )

    @model_validator(mode="after")
    def _folders_given(self) -> DataParams:
        if self.source == "folders" and self.folders is None:
            raise ValueError("data.folders (labeled, unlabeled, val, test) is required when data.source is 'folders'")
        return self


class TrainParams(_Section):
    """How a model is trained (and noised); the model itself is named by `teacher.model` or `generations`."""

    epochs: int = Field(60, gt=0)
    batch_size: int = Field(64, gt=0, description="labeled images per step")
    lr: float = Field(3e-3, gt=0)
    weight_decay: float = Field(0.05, ge=0)
    warmup_epochs: float = Field(0.0, ge=0)
    label_smoothing: float = Field(0.1, ge=0, lt=1)
    augment: Literal["none", "s1", "s2", "s3", "s4", "noisy_student"] = Field(
        "s1",
        description="s1 flip+crop, s2 +AutoAugment, s3 +large scale jitter, s4 RandAugment+large scale jitter (Zoph "
        "et al.), "
        "noisy_student RandAugment+flip+crop (Xie et al.)",
    )
    randaugment_layers: int = Field(
        2, ge=0, description="RandAugment ops per image (s4, noisy_student); 0 turns it off"
    )
    randaugment_magnitude: float = Field(
        9, ge=0, le=30, description="RandAugment magnitude (timm scale, 10 = max of the paper)"
    )
    randaugment_magnitude_std: float = Field(0.5, ge=0, description="per-op noise on the magnitude")
    drop_rate: float = Field(0.0, ge=0, lt=1, description="dropout before the classifier head")
    drop_path_rate: float = Field(0.0, ge=0, lt=1, description="stochastic depth in the body")
    ema_decay: float | None = Field(
        None, gt=0, lt=1, description="keep an EMA of the weights (timm ModelEmaV3) and save it"
    )
    val_every: int = Field(
        1, ge=1, description="validate every N epochs and after the last (the log's curve; nothing is selected on it)"
    )


class TeacherParams(TrainParams):
    model: str = "resnet10t"


class StudentParams(TrainParams):
    epochs: int = Field(8, gt=0, description="passes over the pseudo-labeled set")
    unlabeled_ratio: int = Field(3, ge=1, description="pseudo-labeled images per labeled image in each batch")
    labeled_weight: float = Field(1.0, ge=0)
    pseudo_weight: float = Field(1.0, ge=0)
    init: Literal["scratch", "teacher", "checkpoint"] = Field(
        "scratch", description="start from random weights, the generation's teacher, or init_checkpoint"
    )
    init_checkpoint: str | None = Field(
        None, description="a selftrain safetensors checkpoint (local or s3://) when init is 'checkpoint'"
    )
    allow_smaller: bool = Field(
        False, description="allow a student with fewer parameters than its teacher (distillation)"
    )
    loss: Literal["ce", "kd", "dist", "soft_ce"] = Field(
        "ce",
        description="the pseudo-labeled part's loss (selftrain/methods/distill/losses.py); soft_ce is label-free: it "
        "drops the labeled part",
    )
    loss_tau: float = Field(
        1.0,
        gt=0,
        description="temperature of kd and dist (both sides) and of soft_ce's teacher targets; ce takes the targets "
        "as given",
    )
    dist_beta: float = Field(1.0, ge=0, description="dist: weight of the inter-class (per image) relation")
    dist_gamma: float = Field(
        1.0, ge=0, description="dist: weight of the intra-class (per class, across the batch) relation"
    )
    consistency: Literal["none", "dropped", "all"] = Field(
        "none",
        description="noisy_student / distill: add FixMatch's consistency term on the unlabeled images filter-balance "
        "did not keep "
        "(dropped) or on all of them; its threshold rule, tau, views and images per labeled image come from "
        "`methods.fixmatch`",
    )
    consistency_weight: float = Field(1.0, ge=0, description="weight of that consistency term")

    @model_validator(mode="after")
    def _consistent(self) -> StudentParams:
        if self.labeled_weight == 0 and self.pseudo_weight == 0:
            raise ValueError("student.labeled_weight and student.pseudo_weight are both 0: nothing to learn from")
        if self.loss == "soft_ce" and self.pseudo_weight == 0:
            raise ValueError(
                "student.loss is soft_ce (no labeled part) but student.pseudo_weight is 0: nothing to learn from"
            )
        if (self.init == "checkpoint") != (self.init_checkpoint is not None):
            raise ValueError("student.init_checkpoint is needed when, and only when, student.init is 'checkpoint'")
        return self


class GenerationParams(_Section):
    model: str = Field(description="the student's timm model in this generation")
    teacher: str = Field(description="the previous generation (gen0 = the supervised teacher)")
    method: Literal[methods.names()] = Field(  # type: ignore[valid-type]
        "noisy_student",
        description="; ".join(f"{m.name}: {m.summary} ({m.stage})" for m in methods.registry().values()),
    )


class TwoMoonsParams(_Section):
    seeds: list[int] = Field(
        default_factory=lambda: [0, 1, 2, 3, 4], min_length=1, description="one draw of the moons each"
    )
    steps: int = Field(2000, gt=0, description="training steps of every method")


class InferParams(_Section):
    batch_size: int = Field(512, gt=0)
    topk: int | None = Field(None, gt=0, description="store only the k largest log-probabilities per image")
    shard_size: int = Field(50000, gt=0, description="images per logit-store shard")
    parts: int = Field(
        1,
        gt=0,
        description="split the unlabeled set into this many parts, each inferred on its own (a pod of an "
        "Indexed Job on Kubernetes); the store is the same whatever the number",
    )


class PseudoLabelParams(_Section):
    kind: Literal["soft", "hard"] = "soft"
    temperature: float = Field(1.0, gt=0, description="soft labels are softmax(logits / temperature)")
    threshold: float = Field(0.5, ge=0, lt=1, description="drop images whose top probability is below this")
    per_class: int | Literal["median"] | None = Field(
        "median",
        description="images per class after balancing: a number, 'median' of kept counts, or null for no balancing",
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


class RobustnessParams(_Section):
    corruption_images: int = Field(
        1000, gt=0, description="test images in the -C set (each under 15 corruptions x 5 severities)"
    )
    perturbation_images: int = Field(
        200, gt=0, description="test images turned into -P sequences (one per perturbation)"
    )
    frames: int = Field(10, ge=10, description="frames per -P sequence (ImageNet-P uses at least 10)")
    hard_images: int = Field(
        1000, gt=0, description="at most this many holdout images the reference gets wrong form the -A set"
    )
    reference: str | None = Field(
        None,
        description="the model that normalises CE and FR and filters the -A set: null = the generation-0 teacher, or "
        "a checkpoint URI",
    )


# Gate metrics and whether larger is better; a rule's gain is the improvement in that direction.
GATE_METRICS: dict[str, bool] = {
    "val_top1": True,
    "hard_top1": True,  # -A accuracy
    "mCE": False,
    "relative_mCE": False,
    "mean_corruption_error": False,  # unnormalised
    "mFR": False,
    "mFP": False,
    "mT5D": False,
}


class GateRule(_Section):
    metric: Literal[tuple(GATE_METRICS)] = Field(  # type: ignore[valid-type]
        description="a metric of evaluate's metrics.json (test metrics are not for gating)"
    )
    min_gain: float = Field(
        0.0,
        description="the student's improvement over the teacher must be at least this (0: must not get worse; < 0: "
        "may lose that much)",
    )


class PromoteParams(_Section):
    rules: list[GateRule] = Field(
        default_factory=lambda: [GateRule(metric="val_top1", min_gain=0.0)],
        min_length=1,
        description="every rule must pass for the student to be promoted",
    )


class RuntimeParams(_Section):
    """How to run, not what to compute: not part of any stage's DVC params."""

    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes for training augmentation")
    compile: bool = Field(False, description="torch.compile the model (CUDA only: slower on CPU, where it is ignored)")
    checkpoint_every: int = Field(
        500,
        ge=0,
        description="train-teacher / train-student save their resumable state every N steps (0: never); MPL has "
        "mpl.checkpoint_every",
    )


# `methods.<name>`: each method's own options, the section its package declares (selftrain.methods)
MethodSections = create_model(
    "MethodSections",
    __base__=_Section,
    __doc__="Each method's own options, by method name (the sections the method packages declare).",
    # type: ignore[call-overload]
    **{m.name: (m.params, m.params()) for m in methods.registry().values() if m.params is not None},
)


class Params(_Section):
    seed: int = Field(
        0,
        ge=0,
        le=2**32 - 1,
        strict=True,
        description="every random choice derives from it (numpy's legacy seeding takes at most 2**32 - 1)",
    )
    data: DataParams = DataParams()
    teacher: TeacherParams = TeacherParams()
    infer: InferParams = InferParams()
    pseudo_labels: PseudoLabelParams = PseudoLabelParams()
    student: StudentParams = StudentParams()
    generations: dict[str, GenerationParams] = Field(
        default_factory=lambda: {"gen1": GenerationParams(model="resnet10t", teacher="gen0")},
        description="gen1, gen2, ...: each generation's student model; its teacher is the previous generation's "
        "promoted model",
    )
    methods: MethodSections = MethodSections()
    evaluate: EvaluateParams = EvaluateParams()
    twomoons: TwoMoonsParams = TwoMoonsParams()
    robustness: RobustnessParams = RobustnessParams()
    promote: PromoteParams = PromoteParams()
    runtime: RuntimeParams = RuntimeParams()
    prefect: PrefectParams = PrefectParams()
    kubernetes: KubernetesParams = KubernetesParams()
    resources: dict[str, StageResources] = Field(
        default_factory=dict,
        description="per stage (train-student, infer, ...): the pod it runs in when kubernetes.enabled",
    )

    @model_validator(mode="before")
    @classmethod
    def _methods_moved(cls, raw: Any) -> Any:
        if isinstance(raw, dict):
            moved = [k for k in raw if k in methods.registry()]
            if moved:
                raise ValueError(
                    f"{', '.join(moved)}: a method's options now live under methods.<name> (e.g. "
                    f"methods.{moved[0]}.steps)"
                )
        return raw

    @field_validator("resources")
    @classmethod
    def _resource_stages(cls, v: dict[str, StageResources]) -> dict[str, StageResources]:
        known_stage_names(set(v))
        parallel = set(methods.data_parallel_stages())
        bad = sorted(k for k, r in v.items() if (r.nodes > 1 or r.gpu > 1) and k not in parallel)
        if bad:
            raise ValueError(
                f"{bad}: only {sorted(parallel)} train on several GPUs (gpu > 1 or nodes > 1); give the others gpu: 1"
            )
        return v

    @model_validator(mode="after")
    def _generation_chain(self) -> Params:
        if not self.generations:
            raise ValueError("generations: list at least one generation (gen1: {model: ..., teacher: gen0})")
        names = list(self.generations)
        if names != [f"gen{k}" for k in range(1, len(names) + 1)]:
            raise ValueError(f"generations: keys must be gen1, gen2, ... in order, got {', '.join(names)}")
        for k, (name, g) in enumerate(self.generations.items(), start=1):
            if g.teacher != f"gen{k - 1}":
                raise ValueError(
                    f"generations.{name}.teacher: must be 'gen{k - 1}', got '{g.teacher}' (a generation's teacher is "
                    "the "
                    "previous generation's promoted model; it is spelled out because dvc.yaml builds paths from it)"
                )
        return self

    def generation(self, name: str) -> GenerationParams:
        if name not in self.generations:
            raise ParamsError(f"generation '{name}' is not in params.generations ({', '.join(self.generations)})")
        return self.generations[name]

    def generation_model(self, generation: str) -> str:
        return self.generation(generation).model

    def value(self, key: str, mode: Literal["python", "json"] = "python") -> Any:
        """The value (dumped) at a dotted key: `student`, `methods.mpl`, `generations.gen2`."""
        node: Any = self.model_dump(mode=mode)
        for part in key.split("."):
            node = node[part]
        return node


_SHORT = reprlib.Repr()  # an error quotes a value, never a whole file (Python 3.11's Repr takes no arguments)
_SHORT.maxstring = _SHORT.maxother = 80


def _format(err: ValidationError, source: str) -> str:
    lines = [f"{source}: {err.error_count()} invalid parameter(s):"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "params"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling against params.yaml in the repository)"
        # a whole section's check names its keys itself: do not echo the section back
        quiet = e["type"] in ("missing", "extra_forbidden") or isinstance(e["input"], dict)
        shown = "" if quiet else f" (got {_SHORT.repr(e['input'])})"
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


def load_params(
    path: str | Path = "params.yaml",
    overrides: dict[str, Any] | None = None,
    *,
    generations: int | None = None,
    method: str | None = None,
) -> Params:
    """Read and validate a params file; `overrides` maps dotted keys (`student.epochs`) to values.
    `generations` keeps only the first N generations, `method` gives every generation that method."""
    if "://" in str(path):  # a snapshot the flow wrote for a Kubernetes Job (tasks/kubernetes.py)
        try:
            text = artifacts.read_bytes(str(path)).decode()
        except artifacts.ArtifactError:
            raise ParamsError(f"params file '{path}' not found") from None
    else:
        path = Path(path)
        if not path.is_file():
            raise ParamsError(f"params file '{path}' not found (run from the project root or pass --params)")
        text = path.read_text()
    raw = parse_yaml(text, str(path)) or {}
    for key, value in (overrides or {}).items():
        _set_dotted(raw, key, value)
    if generations is not None or method is not None:
        _narrow_generations(raw, str(path), generations, method)
    return parse_params(raw, str(path))


def _narrow_generations(raw: dict[str, Any], source: str, generations: int | None, method: str | None) -> None:
    if not isinstance(raw, dict):
        return  # parse_params names the problem
    gens = raw.get("generations")
    if gens is None:
        gens = {k: v.model_dump() for k, v in Params().generations.items()}
    if not isinstance(gens, dict):
        return
    if generations is not None:
        if generations < 1 or generations > len(gens):
            raise ParamsError(
                f"generations={generations}: {source} defines {len(gens)} generation(s) ({', '.join(gens)}); "
                "ask for 1 to that many, or add more under generations:"
            )
        gens = dict(list(gens.items())[:generations])
    if method is not None:
        gens = {name: {**(g if isinstance(g, dict) else {}), "method": method} for name, g in gens.items()}
    raw["generations"] = gens


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
