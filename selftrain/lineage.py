"""Lineage: what made a generation's model (code, params, inputs, outputs, seeds, packages, machine), and the chain.

A lineage record (`genK/lineage.json`) names every input and output by content hash, so a
model can be traced back through its teachers to the labeled data and rebuilt
(`selftrain reproduce`). It never holds credentials: no environment variables, no storage
options, only URIs (and URIs with user:password@ are refused when the record is written).
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from importlib import metadata
from typing import Any
from urllib.parse import urlsplit

import yaml

from selftrain import artifacts, methods

FORMAT = "selftrain-lineage/1"
PACKAGES = ("selftrain", "torch", "timm", "numpy", "safetensors", "fsspec", "s3fs", "dvc")
# the params sections a generation's model depends on (dvc.yaml's lineage stage tracks the same), plus its own entry
PARAMS = (
    "seed",
    "data",
    "teacher",
    "infer",
    "pseudo_labels",
    *methods.params_sections(),
    "evaluate",
    "robustness",
    "promote",
)
# dvc.yaml's stages that a generation's model comes from: once per pipeline, and per generation (its own and earlier
# ones)
UPSTREAM_ONCE = ("prepare", "train-teacher", "make-robustness-sets", "robustness-reference")
UPSTREAM_PER_GENERATION = ("infer", "filter-balance", "train-student", "evaluate", "promote")
# the headline figures a lineage record copies from metrics.json, so the chain table needs no other file
HEADLINE = ("val_top1", "test_top1", "mCE", "mFR", "hard_top1")


def git_state(cwd: str = ".") -> dict[str, Any] | None:
    """The code's git commit and whether tracked files under selftrain/ or the params/pipeline files differ from it.

    SELFTRAIN_GIT_COMMIT (set when the image is built) stands in where there is no git checkout, as in a pod."""
    if os.environ.get("SELFTRAIN_GIT_COMMIT"):
        return {"commit": os.environ["SELFTRAIN_GIT_COMMIT"], "dirty": None, "source": "SELFTRAIN_GIT_COMMIT"}

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        changed = git(
            "status", "--porcelain", "--untracked-files=no", "--", "selftrain", "params.yaml", "dvc.yaml"
        ).splitlines()
    except (OSError, subprocess.CalledProcessError):
        return None
    return {"commit": commit, "dirty": sorted(line[3:] for line in changed), "source": "git"}


def dvc_lock_stages(lock_path: str, generation: str) -> dict[str, Any]:
    """dvc.lock's entries for the stages up to `generation`: per stage, the md5 of each dep and out."""
    with open(lock_path) as f:
        lock = yaml.safe_load(f) or {}
    k = int(generation.removeprefix("gen"))
    stages = {}
    for name, entry in (lock.get("stages") or {}).items():
        stage, _, item = name.partition("@")
        if not (stage in UPSTREAM_ONCE or (stage in UPSTREAM_PER_GENERATION and int(item.removeprefix("gen")) <= k)):
            continue
        stages[name] = {kind: {d["path"]: d.get("md5") for d in entry.get(kind, [])} for kind in ("deps", "outs")}
    return stages


def packages() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def machine() -> dict[str, Any]:
    import torch  # here, not at the top: `selftrain lineage` and `reproduce` read records without torch

    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
    }


def _check_uri(uri: str) -> str:
    if urlsplit(uri).password is not None:
        raise ValueError(
            f"'{urlsplit(uri)._replace(netloc=urlsplit(uri).hostname or '').geturl()}' has a password in it: "
            "give credentials through the AWS environment or a profile, never in a URI"
        )
    return uri


def build(
    *,
    generation: str,
    method: str,
    params: dict[str, Any],
    seed: int,
    inputs: dict[str, str],
    outputs: dict[str, str],
    teacher_record: dict[str, Any],
    metrics: dict[str, Any],
    promoted: dict[str, Any],
    dvc_lock: str | None,
) -> dict[str, Any]:
    """A lineage record. `inputs`/`outputs` map a role (data, logits, ...) to an artifact URI, hashed here."""
    return {
        "format": FORMAT,
        "generation": generation,
        "method": method,
        "teacher": {
            "generation": teacher_record["generation"],
            "checkpoint": teacher_record["checkpoint"],
            "sha256": teacher_record["sha256"],
            "model": teacher_record.get("model"),
        },
        "inputs": {
            role: {"uri": _check_uri(uri), "sha256": artifacts.content_hash(uri)} for role, uri in inputs.items()
        },
        "outputs": {
            role: {"uri": _check_uri(uri), "sha256": artifacts.content_hash(uri)} for role, uri in outputs.items()
        },
        "metrics": {
            role: {k: metrics[role][k] for k in HEADLINE if k in metrics[role]} for role in ("teacher", "student")
        },
        "promoted": {"passed": promoted["passed"], "role": promoted.get("promoted"), "reason": promoted["reason"]},
        "seeds": {"seed": seed},
        "params": params,
        "git": git_state(),
        "dvc_lock": dvc_lock_stages(dvc_lock, generation) if dvc_lock else None,
        "packages": packages(),
        "machine": machine(),
        "command": " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv)),
    }


def chain(root: str, generation: str) -> list[dict[str, Any]]:
    """The lineage records from `generation` back to generation 1 under `root` (newest first)."""
    records = []
    name: str | None = generation
    while name and name != "gen0":
        uri = artifacts.join(root, name, "lineage.json")
        if not artifacts.exists(uri):
            raise artifacts.ArtifactError(
                f"'{uri}' not found: run that generation's record-lineage stage (dvc repro record-lineage@{name})"
            )
        rec = artifacts.read_json(uri)
        if rec.get("format") != FORMAT:
            raise artifacts.ArtifactError(f"'{uri}' is not a lineage record ({FORMAT})")
        records.append(rec)
        name = rec["teacher"]["generation"]
    return records


def chain_table(records: list[dict[str, Any]]) -> str:
    """Markdown: one row per generation (newest first), then the supervised teacher and the labeled data."""
    lines = [
        "| generation | method | model (sha256) | teacher | data | logits | pseudo-labels | test top-1 | promoted | "
        "git commit |",
        "|---|---|---|---|---|---|---|---:|---|---|",
    ]

    def h(x: dict[str, Any] | None) -> str:
        return x["sha256"][:12] if x else "-"

    for r in records:
        git = (r.get("git") or {}).get("commit")
        lines.append(
            f"| {r['generation']} | {r['method']} | {h(r['outputs'].get('student_checkpoint'))} | "
            f"{r['teacher']['generation']} "
            f"({r['teacher']['sha256'][:12]}) | {h(r['inputs'].get('data'))} | {h(r['inputs'].get('logits'))} | "
            f"{h(r['inputs'].get('pseudo'))} | {100 * r['metrics']['student']['test_top1']:.2f} % | "
            f"{'yes' if r['promoted']['passed'] else 'no'} | {git[:10] if git else '-'} |"
        )
    first = records[-1]
    lines.append(
        f"| gen0 | supervised | {first['teacher']['sha256'][:12]} | - | {h(first['inputs'].get('data'))} | - | - | "
        f"{100 * first['metrics']['teacher']['test_top1']:.2f} % | yes | - |"
    )
    return "\n".join(lines)


def chain_png(records: list[dict[str, Any]]) -> bytes:
    """A left-to-right picture: labeled data -> gen0 teacher -> gen1 student -> ..., each box with its hash and test
    top-1."""
    from selftrain.rendering import png_bytes, pyplot

    plt = pyplot()
    oldest = records[::-1]
    boxes = [
        f"labeled data\n{oldest[0]['inputs']['data']['sha256'][:10]}",
        f"gen0: supervised\n{oldest[0]['teacher']['sha256'][:10]}\ntest "
        f"{100 * oldest[0]['metrics']['teacher']['test_top1']:.1f} %",
    ]
    for r in oldest:
        ck = r["outputs"].get("student_checkpoint")
        boxes.append(
            f"{r['generation']}: {r['method']}\n{ck['sha256'][:10] if ck else '-'}\n"
            f"test {100 * r['metrics']['student']['test_top1']:.1f} "
            f"%\n{'promoted' if r['promoted']['passed'] else 'not promoted'}"
        )
    fig, ax = plt.subplots(figsize=(2.3 * len(boxes), 1.8))
    for i, text in enumerate(boxes):
        ax.text(
            i,
            0,
            text,
            ha="center",
            va="center",
            fontsize=8,
            bbox={"boxstyle": "round", "fc": "#eef3fb", "ec": "#4a6fa5"},
        )
        if i:
            ax.annotate("", xy=(i - 0.38, 0), xytext=(i - 0.62, 0), arrowprops={"arrowstyle": "->"})
    ax.set(xlim=(-0.6, len(boxes) - 0.4), ylim=(-1, 1))
    ax.axis("off")
    data = png_bytes(fig)
    plt.close(fig)
    return data
