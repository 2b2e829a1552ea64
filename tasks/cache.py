"""Cross-run caching of the stage tasks, keyed the way DVC keys the same stages.

A stage's key hashes what its stage in dvc.yaml tracks: the values of the params it lists, the content
hashes of its input artifacts (a directory's manifest, a file's bytes) and of the code files it lists;
plus its output URIs. So a change that makes DVC rerun a stage also misses here, and a stage DVC calls
up to date hits, in a new flow run or a new process. Keys are built from URIs and hashes, never from
tensors. Results (the stages' small JSON summaries) persist in the result storage; a stage whose
outputs have gone missing runs again whatever its key.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import Any

import yaml
from prefect.cache_policies import CachePolicy
from prefect.filesystems import RemoteFileSystem

from selftrain import artifacts, methods
from selftrain.params import Params

PROJECT = Path(__file__).resolve().parents[1]
OUTPUTS = {"train-teacher": ("out", "promoted")}  # every other stage writes `out` only
# a params object, a name, a scratch path, DVC's own record, a display-only input (not a dvc.yaml dep either)
NOT_HASHED = ("params", "generation", "resume", "dvc_lock", "previous_logits")


@functools.cache
def _dvc_yaml_stage(task_name: str) -> dict[str, Any]:
    stages = yaml.safe_load((PROJECT / "dvc.yaml").read_text())["stages"]
    stage = stages[
        methods.dvc_stage(task_name)
    ]  # a method's task -> dvc.yaml's train-student (it runs train-generation)
    return dict(stage.get("do", stage))


def dvc_stage(task_name: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(params keys, code files) that dvc.yaml tracks for the stage behind `task_name`."""
    stage = _dvc_yaml_stage(task_name)
    code = tuple(d for d in stage.get("deps", []) if not d.startswith("artifacts/"))
    return tuple(stage.get("params", [])), code


def always_changed(task_name: str) -> bool:
    """dvc.yaml runs this stage on every repro (list-data): the flow never takes it from the cache either."""
    return bool(_dvc_yaml_stage(task_name).get("always_changed", False))


def outputs(task_name: str, kwargs: dict[str, Any]) -> list[str]:
    return [kwargs[a] for a in OUTPUTS.get(task_name, ("out",)) if kwargs.get(a)]


def outputs_complete(task_name: str, kwargs: dict[str, Any]) -> bool:
    """Every output is there and, for a directory, complete (its manifest written last)."""
    for uri in outputs(task_name, kwargs):
        if not artifacts.exists(uri):
            return False
        try:
            artifacts.content_hash(uri)
        except artifacts.ArtifactError:
            return False
    return True


def _code_hash(path: Path) -> str:
    """A code file's sha256, or a code directory's over its files' paths and bytes (as .dvcignore, no __pycache__)."""
    if path.is_file():
        return hashlib.sha256(path.read_bytes()).hexdigest()
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        h.update(f"{f.relative_to(path).as_posix()}\0{hashlib.sha256(f.read_bytes()).hexdigest()}\n".encode())
    return h.hexdigest()


def stage_key(task_name: str, params: Params, kwargs: dict[str, Any]) -> str:
    """The cache key of one stage call (see the module docstring)."""
    param_keys, code = dvc_stage(task_name)
    out = set(outputs(task_name, kwargs))
    generation = kwargs.get("generation")
    ingredients = {
        "stage": task_name,
        "generation": generation,
        "params": {k: params.value(k.replace("${key}", str(generation)), mode="json") for k in param_keys},
        "code": {f: _code_hash(PROJECT / f) for f in code},
        "inputs": {
            k: artifacts.content_hash(v) if v is not None else None
            for k, v in sorted(kwargs.items())
            if k not in NOT_HASHED and v not in out
        },
        "outputs": sorted(out),
    }
    return hashlib.sha256(json.dumps(ingredients, sort_keys=True).encode()).hexdigest()


class StageInputs(CachePolicy):
    """Prefect cache policy: `stage_key` of the task's call."""

    def compute_key(
        self, task_ctx: Any, inputs: dict[str, Any], flow_parameters: dict[str, Any], **kwargs: Any
    ) -> str | None:
        return stage_key(task_ctx.task.name, inputs["params"], inputs)


def result_storage(uri: str) -> Path | str:
    """Where cached results live: a local folder, or any fsspec URI (s3://...) for runs on several machines.

    Prefect wants remote storage as a block saved on its server: one per URI, named from its hash."""
    if artifacts.is_local(uri):
        return Path(uri)
    name = f"selftrain-results-{hashlib.sha256(uri.encode()).hexdigest()[:12]}"
    RemoteFileSystem(basepath=uri).save(name, overwrite=True)
    return f"remote-file-system/{name}"
