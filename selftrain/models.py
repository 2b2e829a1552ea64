"""timm models and self-describing safetensors checkpoints (no pickle anywhere)."""
from __future__ import annotations

import json
import struct
from dataclasses import asdict, dataclass

import safetensors.torch
import timm
import torch
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
    meta = {"spec": json.dumps(asdict(spec)), "format": "selftrain-checkpoint/1"}
    artifacts.write_bytes(uri, safetensors.torch.save(state, metadata=meta))


def _metadata(blob: bytes, uri: str) -> dict[str, str]:
    # safetensors layout: 8-byte little-endian header length, then a JSON header with __metadata__.
    try:
        (n,) = struct.unpack("<Q", blob[:8])
        return json.loads(blob[8 : 8 + n]).get("__metadata__") or {}
    except (struct.error, ValueError) as e:
        raise artifacts.ArtifactError(f"'{uri}' is not a safetensors checkpoint ({e})") from None


def load_checkpoint(uri: str) -> tuple[nn.Module, ModelSpec]:
    """Rebuild the model a checkpoint describes and load its weights."""
    blob = artifacts.read_bytes(uri)
    meta = _metadata(blob, uri)
    if meta.get("format") != "selftrain-checkpoint/1":
        raise artifacts.ArtifactError(f"'{uri}' is not a selftrain checkpoint (metadata: {sorted(meta)})")
    raw = json.loads(meta["spec"])
    spec = ModelSpec(**{**raw, "classes": tuple(raw["classes"])})
    model = create(spec)
    model.load_state_dict(safetensors.torch.load(blob))
    return model, spec


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())

