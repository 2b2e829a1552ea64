"""timm models and self-describing safetensors checkpoints (no pickle anywhere)."""

from __future__ import annotations

import functools
import json
import re
import struct
from dataclasses import asdict, dataclass
from typing import Any

import safetensors.torch
import timm
import timm.models.resnet
import torch
from timm.models import register_model
from torch import nn

from selftrain import artifacts


@dataclass(frozen=True)
class ModelSpec:
    """What is needed to rebuild a model for inference: stored inside its checkpoint."""

    name: str
    num_classes: int
    in_chans: int
    image_size: int
    classes: tuple[str, ...]


FORMAT = "selftrain-checkpoint/2"


def _without_stem_pool(model: nn.Module) -> nn.Module:
    # timm's ResNets shrink an image 4x in the stem (a stride-2 convolution, then a max-pool), made for 224-pixel
    # ImageNet: a 28-pixel image enters the body at 7x7 and leaves it at 1x1. Without the max-pool it enters at 14x14
    # and leaves at 2x2, for 2.4-2.7x the time a step on a CPU (docs/experiments/log.md). timm has no switch for
    # this, hence the variants.
    model.maxpool = nn.Identity()
    return model


@register_model
def resnet10t_small(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """resnet10t for small images (28-64 pixels): no max-pool in the stem."""
    return _without_stem_pool(timm.models.resnet.resnet10t(pretrained, **kwargs))


@register_model
def resnet18_small(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """resnet18 for small images (28-64 pixels): no max-pool in the stem."""
    return _without_stem_pool(timm.models.resnet.resnet18(pretrained, **kwargs))


@register_model
def resnet26_small(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """resnet26 for small images (28-64 pixels): no max-pool in the stem."""
    return _without_stem_pool(timm.models.resnet.resnet26(pretrained, **kwargs))


def create(spec: ModelSpec, drop_rate: float = 0.0, drop_path_rate: float = 0.0) -> nn.Module:
    """A freshly initialised timm model (no pretrained weights: nothing is downloaded)."""
    return timm.create_model(
        spec.name,
        pretrained=False,
        num_classes=spec.num_classes,
        in_chans=spec.in_chans,
        drop_rate=drop_rate,
        drop_path_rate=drop_path_rate,
    )


def save_checkpoint(uri: str, model: nn.Module, spec: ModelSpec) -> None:
    model = getattr(model, "_orig_mod", model)  # unwrap torch.compile
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    # one metadata key: safetensors writes several in a random order, and the same weights must give the same bytes
    meta = {"selftrain": json.dumps({"format": FORMAT, "spec": asdict(spec)})}
    artifacts.write_bytes(uri, safetensors.torch.save(state, metadata=meta))


def _metadata(blob: bytes, uri: str) -> dict[str, str]:
    # safetensors layout: 8-byte little-endian header length, then a JSON header with __metadata__.
    try:
        (n,) = struct.unpack("<Q", blob[:8])
        return json.loads(blob[8 : 8 + n]).get("__metadata__") or {}
    except (struct.error, ValueError) as e:
        raise artifacts.ArtifactError(f"'{uri}' is not a safetensors checkpoint ({e})") from None


def _read(uri: str) -> tuple[dict[str, torch.Tensor], ModelSpec]:
    blob = artifacts.read_bytes(uri)
    meta = _metadata(blob, uri)
    info = json.loads(meta.get("selftrain", "{}"))
    if info.get("format") != FORMAT:
        raise artifacts.ArtifactError(f"'{uri}' is not a {FORMAT} checkpoint (metadata: {sorted(meta)})")
    raw = info["spec"]
    return safetensors.torch.load(blob), ModelSpec(**{**raw, "classes": tuple(raw["classes"])})


def load_checkpoint(uri: str) -> tuple[nn.Module, ModelSpec]:
    """Rebuild the model a checkpoint describes and load its weights."""
    state, spec = _read(uri)
    model = create(spec)
    model.load_state_dict(state)
    return model, spec


def init_from(model: nn.Module, spec: ModelSpec, uri: str) -> int:
    """Load a checkpoint's weights into `model`, whose weights they must fit (the same model, or a variant with the same
    weights such as resnet10t -> resnet10t_small); a head for other classes is left as initialised.

    Returns the number of tensors loaded.
    """
    state, other = _read(uri)
    same_head = other.num_classes == spec.num_classes
    if not same_head:  # e.g. a checkpoint trained on other classes: keep the body, re-initialise the head
        cfg: dict[str, Any] = getattr(model, "pretrained_cfg", {})
        head = cfg.get("classifier", "")
        state = {k: v for k, v in state.items() if not k.startswith(f"{head}.")}
    want = {k: tuple(v.shape) for k, v in model.state_dict().items() if same_head or k in state}
    have = {k: tuple(v.shape) for k, v in state.items()}
    if other.in_chans != spec.in_chans or want != have:
        raise ValueError(
            f"cannot initialise a {spec.name} ({spec.in_chans} channels) from '{uri}', a {other.name} "
            f"({other.in_chans} channels): "
            f"its weights do not fit ({_first_misfit(want, have)})"
        )
    model.load_state_dict(state, strict=same_head)
    return len(state)


def _first_misfit(want: dict[str, tuple[int, ...]], have: dict[str, tuple[int, ...]]) -> str:
    for k in sorted(want.keys() | have.keys()):
        if want.get(k) != have.get(k):
            return f"{k}: {want.get(k, 'absent')} in the model, {have.get(k, 'absent')} in the checkpoint"
    return "other input channels"


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def check_params(params: Any, source: str = "params") -> None:
    """The checks of a params file that need timm: every model name is a timm model, and no student is smaller than its
    teacher unless its method distils down or student.allow_smaller is set. Raises ParamsError naming each bad key.
    (Loading params does not import timm or torch; the flow runs this before any stage, the CLI before each stage that
    builds a model.)"""
    from selftrain import methods
    from selftrain.params import ParamsError

    named = {
        "teacher.model": params.teacher.model,
        **{f"generations.{k}.model": g.model for k, g in params.generations.items()},
    }
    errors = []
    for key, name in named.items():
        if not timm.is_model(name):
            close = timm.list_models(f"*{re.sub(r'[0-9]+$', '', name.split('_')[0])}*")[:8]  # resnet9000 -> resnet*
            errors.append(
                f"  {key}: unknown timm model '{name}'" + (f"; similar names: {', '.join(close)}" if close else "")
            )
    if not errors:
        chain = [params.teacher.model] + [g.model for g in params.generations.values()]
        for k, (name, g) in enumerate(params.generations.items(), start=1):
            if params.student.init == "teacher" and _shapes(g.model) != _shapes(chain[k - 1]):
                errors.append(
                    f"  generations.{name}.model: '{g.model}' cannot start from its teacher '{chain[k - 1]}' "
                    "(student.init: teacher needs "
                    "the teacher's weights to fit it: the same model, or a variant such as resnet10t -> "
                    "resnet10t_small); use such a "
                    "model or set student.init: scratch"
                )
            if params.student.allow_smaller or methods.get(g.method).smaller_student:
                continue
            if _param_count(g.model) < _param_count(chain[k - 1]):
                errors.append(
                    f"  generations.{name}.model: '{g.model}' is smaller than its teacher '{chain[k - 1]}' (Noisy "
                    "Student wants an "
                    "equal or larger student; use method: distill or set student.allow_smaller: true to distil down)"
                )
    if errors:
        raise ParamsError("\n".join([f"{source}: {len(errors)} invalid parameter(s):", *errors]))


@functools.cache
def _meta_model(name: str) -> nn.Module:
    with torch.device("meta"):  # shapes only: no memory, no init cost
        return timm.create_model(name, num_classes=10)


def _shapes(name: str) -> tuple[tuple[str, tuple[int, ...]], ...]:
    return tuple((k, tuple(v.shape)) for k, v in _meta_model(name).state_dict().items())


def _param_count(name: str) -> int:
    return sum(p.numel() for p in _meta_model(name).parameters())
