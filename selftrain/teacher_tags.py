"""Promotion tags: each promoted model gets a git tag, so "the current teacher" can be fetched by name.

Tags follow GTO's (DVC's model registry's) version format `teacher@vK.N.0`: K is the generation that
promoted the model (0: the supervised teacher), N counts reruns of that generation. The annotated
tag's message names the generation, method, model, metrics and the checkpoint's path and sha256; the
newest version is the current teacher:

    dvc get <repo> <path> --rev teacher@vK.N.0      (`selftrain teacher` prints the command)
    dvc.api.open(path, repo=<repo>, rev=tag, mode="rb")
"""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass
from typing import Any

ARTIFACT = "teacher"
TAG = re.compile(rf"^{ARTIFACT}@v(\d+)\.(\d+)\.0$")


class TagError(RuntimeError):
    """No promotion can be tagged, or no tagged teacher can be found."""


@dataclass(frozen=True)
class Version:
    tag: str
    generation: int
    rerun: int
    record: dict[str, Any]  # the message's JSON: generation, method, model, checkpoint, sha256, metrics

    @property
    def path(self) -> str:
        return self.record["checkpoint"]


def _git(repo: str, *args: str) -> str:
    proc = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True)
    if proc.returncode != 0:
        raise TagError(f"git {' '.join(args)}: {proc.stderr.strip()}")
    return proc.stdout


def versions(repo: str = ".") -> list[Version]:
    """Every `teacher@v*` tag of the local git repository `repo`, oldest version first."""
    found = []
    for tag in _git(repo, "tag", "--list", f"{ARTIFACT}@v*").split():
        m = TAG.match(tag)
        if m:
            found.append(
                Version(tag, int(m[1]), int(m[2]), _parse(_git(repo, "tag", "--list", "--format=%(contents)", tag)))
            )
    return sorted(found, key=lambda v: (v.generation, v.rerun))


def _parse(message: str) -> dict[str, Any]:
    for line in message.splitlines():
        if line.startswith("{"):
            return json.loads(line)
    return {}


def current(repo: str = ".") -> Version:
    """The newest `teacher@v*` tag: the model the next generation would learn from."""
    found = versions(repo)
    if not found:
        raise TagError(f"'{repo}' has no {ARTIFACT}@v* tags: run `selftrain tag` after committing a run's results")
    return found[-1]


def tag_promotions(repo: str, generations: list[str], push_to: str | None = None) -> list[Version]:
    """Tag each committed, passed promotion record (artifacts/genK/promoted.json) that has no tag yet; returns the new
    tags.

    A record is tagged at the last commit that changed it; a generation rerun with a new model gets the next N."""
    existing = {v.record.get("sha256"): v for v in versions(repo)}
    new = []
    for k, gen in enumerate(["gen0", *generations]):
        path = f"artifacts/{gen}/promoted.json"
        commit = _git(repo, "log", "-1", "--format=%H", "--", path).strip()
        if not commit:
            continue
        rec = json.loads(_git(repo, "show", f"{commit}:{path}"))
        if not rec["passed"] or rec["generation"] != gen or rec["sha256"] in existing:
            continue  # a failed gate promotes nothing; a model already tagged keeps its tag
        rerun = sum(1 for v in versions(repo) if v.generation == k)
        metrics = rec["history"][-1] if rec["history"] else {}
        body = {
            "generation": gen,
            "method": _method(repo, commit, gen),
            "model": rec["model"],
            "checkpoint": rec["checkpoint"],
            "sha256": rec["sha256"],
            "metrics": {
                key: metrics[key]
                for key in sorted(metrics)
                if key.startswith(("student_", "teacher_")) and not key.endswith("_model")
            },
        }
        top1 = body["metrics"].get("student_test_top1")
        title = f"{gen} ({body['method']}, {rec['model']}) promoted" + (
            f": test top-1 {100 * top1:.2f} %" if top1 is not None else ""
        )
        tag = f"{ARTIFACT}@v{k}.{rerun}.0"
        _git(repo, "tag", "-a", tag, commit, "-m", f"{title}\n\n{json.dumps(body, sort_keys=True)}")
        if push_to:
            _git(repo, "push", "--quiet", push_to, tag)
        existing[rec["sha256"]] = Version(tag, k, rerun, body)
        new.append(existing[rec["sha256"]])
    return new


def _method(repo: str, commit: str, gen: str) -> str:
    if gen == "gen0":
        return "supervised"
    try:
        return json.loads(_git(repo, "show", f"{commit}:artifacts/{gen}/lineage.json"))["method"]
    except (TagError, json.JSONDecodeError, KeyError):
        return "unknown"
