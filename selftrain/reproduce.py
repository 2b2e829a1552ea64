"""`selftrain reproduce`: rebuild a past generation from its recorded commit and compare it with the record.

The generation is found by name (at a git rev, default HEAD) or by its model's sha256 (a prefix
of at least 8 hex digits; the newest commit whose lineage.json records it). A clone at that commit
shares this repository's DVC cache and remotes: DVC checks out (or pulls) the generation's inputs,
reruns its stages with that commit's code and params, and the new logits, pseudo-labels, model and
metrics are compared with what the commit holds. On CPU with the same seed they are identical, byte
for byte; on CUDA, kernels are not bitwise deterministic, so metrics must agree within a tolerance
and the model's hash may differ.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from selftrain import artifacts
from selftrain.lineage import FORMAT

STAGES = ("infer", "filter-balance", "train-student", "evaluate")
GPU_TOLERANCE = 0.01  # top-1 and robustness figures on CUDA, absolute


class ReproduceError(RuntimeError):
    """The generation or its inputs cannot be found, or a stage failed while rebuilding it."""


@dataclass
class Outcome:
    commit: str
    generation: str
    workdir: str
    rows: list[tuple[str, str, str, bool]] = field(default_factory=list)  # (what, recorded, reproduced, match)

    @property
    def matched(self) -> bool:
        return all(ok for *_, ok in self.rows)

    def table(self) -> str:
        lines = [
            f"reproduce {self.generation} of commit {self.commit[:10]} in {self.workdir}",
            "",
            "| what | recorded | reproduced | match |",
            "|---|---|---|---|",
        ]
        lines += [f"| {w} | {a} | {b} | {'yes' if ok else 'NO'} |" for w, a, b, ok in self.rows]
        lines += [
            "",
            "MATCH: the generation was rebuilt exactly" if self.matched else "MISMATCH: see the rows marked NO",
        ]
        return "\n".join(lines)


def _git(repo: str, *args: str) -> str:
    proc = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ReproduceError(f"git {' '.join(args)}: {proc.stderr.strip()}")
    return proc.stdout


def _lineage_at(repo: str, commit: str, path: str) -> dict[str, Any] | None:
    proc = subprocess.run(["git", "show", f"{commit}:{path}"], cwd=repo, capture_output=True, text=True)
    if proc.returncode != 0:
        return None
    rec = json.loads(proc.stdout)
    return rec if rec.get("format") == FORMAT else None


def find(target: str, repo: str = ".", rev: str = "HEAD") -> tuple[str, str, dict[str, Any]]:
    """(commit, generation, lineage record) that `target` names: a generation at `rev`, or a model hash prefix."""
    if not Path(repo).is_dir():
        raise ReproduceError(
            f"--repo '{repo}' is not a directory: give the git + DVC repository the generation was committed in"
        )
    if rev.startswith("-"):  # git would read it as an option (`--output=FILE` writes FILE)
        raise ReproduceError(
            f"--rev '{rev}' is not a revision: give a commit, branch or tag (e.g. HEAD~2, main, teacher@v2.1.0)"
        )
    if re.fullmatch(r"gen[1-9][0-9]*", target):
        commit = _git(repo, "rev-parse", "--verify", f"{rev}^{{commit}}").strip()
        rec = _lineage_at(repo, commit, f"artifacts/{target}/lineage.json")
        if rec is None:
            raise ReproduceError(
                f"{rev} ({commit[:10]}) has no artifacts/{target}/lineage.json: commit the results of a run "
                "(dvc.lock and artifacts/*/lineage.json) before reproducing them"
            )
        return commit, target, rec
    if not re.fullmatch(r"[0-9a-f]{8,64}", target):
        raise ReproduceError(
            f"'{target}' is neither a generation (gen1, gen2, ...) nor a model sha256 (at least 8 hex digits)"
        )
    for commit in _git(repo, "rev-list", rev, "--", "artifacts").split():
        for path in _git(repo, "ls-tree", "-r", "--name-only", commit, "artifacts").split():
            if path.endswith("/lineage.json"):
                rec = _lineage_at(repo, commit, path)
                if rec and rec["outputs"]["student_checkpoint"]["sha256"].startswith(target):
                    return commit, rec["generation"], rec
    raise ReproduceError(f"no commit reachable from {rev} has a lineage.json whose model's sha256 starts with {target}")


def _dvc_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """`env` (default: this one) with this interpreter's scripts first on PATH: dvc.yaml's commands call `selftrain`,
    which must be this environment's even when it was started as `.venv/bin/selftrain` without the venv on PATH."""
    env = dict(os.environ if env is None else env)
    env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), *filter(None, [env.get("PATH")])])
    return env


def _dvc(cwd: str, *args: str, env: dict[str, str] | None = None) -> None:
    # DVC as a module of this interpreter, not whatever `dvc` PATH finds (or does not)
    proc = subprocess.run(
        [sys.executable, "-m", "dvc", *args], cwd=cwd, capture_output=True, text=True, env=_dvc_env(env)
    )
    if proc.returncode != 0:
        raise ReproduceError(f"dvc {' '.join(args)} failed in {cwd}:\n{(proc.stdout + proc.stderr)[-3000:]}")


def _cache_dir(repo: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "dvc", "cache", "dir"], cwd=repo, capture_output=True, text=True, env=_dvc_env()
    )
    return (
        proc.stdout.strip()
        if proc.returncode == 0 and proc.stdout.strip()
        else str(Path(repo, ".dvc", "cache").resolve())
    )


def _close(a: Any, b: Any, tol: float) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k], tol) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(x, y, tol) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b)) or abs(a - b) <= tol  # NaN: a flip rate with nothing to flip
    return a == b


def reproduce(
    target: str, repo: str = ".", rev: str = "HEAD", workdir: str | None = None, tolerance: float | None = None
) -> Outcome:
    """Rebuild the generation `target` names into `workdir` (default: a new temp dir) and compare it with its record."""
    repo = str(Path(repo).resolve())
    commit, gen, recorded = find(target, repo, rev)
    on_gpu = bool(recorded["machine"].get("cuda")) or _cuda_here()
    tol = (GPU_TOLERANCE if on_gpu else 0.0) if tolerance is None else tolerance
    work = workdir or tempfile.mkdtemp(prefix=f"selftrain-reproduce-{gen}-")
    if os.path.exists(work) and os.listdir(work):
        raise ReproduceError(f"--workdir '{work}' is not empty: give a new or empty directory")
    _git(repo, "clone", "--quiet", "--no-checkout", repo, work)
    _git(work, "checkout", "--quiet", "--detach", commit)
    local_config = Path(repo, ".dvc", "config.local")
    if (
        local_config.exists()
    ):  # this machine's remote settings (an endpoint, a profile): never credentials, which stay in the AWS config
        shutil.copy(local_config, Path(work, ".dvc", "config.local"))
    _dvc(work, "cache", "dir", "--local", _cache_dir(repo))
    evaluate = f"evaluate@{gen}"
    try:
        _dvc(work, "checkout", "--with-deps", evaluate)
    except ReproduceError:
        _dvc(work, "pull", "--with-deps", evaluate)  # not all in this cache: the remote has it
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([work, *filter(None, [os.environ.get("PYTHONPATH")])])
    )  # that commit's code
    _dvc(work, "repro", "--force", "--single-item", *(f"{stage}@{gen}" for stage in STAGES), env=env)  # in this order
    g = Path(work, "artifacts", gen)
    out = Outcome(commit, gen, work)
    for role, uri in (("logits", g / "logits"), ("pseudo", g / "pseudo")):
        was, now = recorded["inputs"][role]["sha256"], artifacts.content_hash(str(uri))
        out.rows.append((f"{role} (sha256)", was[:16], now[:16], was == now))
    was, now = (
        recorded["outputs"]["student_checkpoint"]["sha256"],
        artifacts.content_hash(str(g / "student" / "model.safetensors")),
    )
    out.rows.append(("model (sha256)", was[:16], now[:16], was == now or on_gpu))
    metrics_then = _metrics_at(repo, commit, gen)
    metrics_now = json.loads((g / "metrics.json").read_text())
    for role in ("teacher", "student"):
        for key in ("val_top1", "test_top1", "mCE", "mFR", "hard_top1"):
            if key in metrics_then[role]:
                a, b = metrics_then[role][key], metrics_now[role].get(key)
                out.rows.append(
                    (f"{role} {key}", f"{a:.6f}", "-" if b is None else f"{b:.6f}", b is not None and _close(a, b, tol))
                )
    if on_gpu:  # the model's bytes may differ on CUDA, and metrics.json names them
        for m in (metrics_then, metrics_now):
            m["student"].pop("checkpoint_sha256", None)
    out.rows.append(
        (
            f"metrics.json, every figure{f' (within {tol})' if tol else ''}",
            "",
            "",
            _close(metrics_then, metrics_now, tol),
        )
    )
    return out


def _metrics_at(repo: str, commit: str, gen: str) -> dict[str, Any]:
    """The generation's metrics.json as `commit` recorded it. It is a DVC-cached output (so that `dvc exp show`
    reads each experiment's figures), not in git: DVC reads it by the hash in that commit's dvc.lock, from
    this repository's cache or its remote."""
    import dvc.api  # a second of imports, only here

    path = f"artifacts/{gen}/metrics.json"
    try:
        return json.loads(dvc.api.read(path, repo=repo, rev=commit))
    except (
        Exception
    ) as e:  # DVC's errors share no base class worth naming: file not in the lock, not in cache or remote
        raise ReproduceError(
            f"cannot read {path} as commit {commit[:10]} recorded it ({type(e).__name__}: {e}); `dvc pull` it, or "
            "push it from where it ran"
        ) from e


def _cuda_here() -> bool:
    import torch

    return torch.cuda.is_available()
