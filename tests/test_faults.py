"""Faults from outside: an S3 endpoint that fails requests now and then (a real one, moto, behind tests/fault_proxy.py
answering 503 SlowDown to chosen requests), S3 with no credentials, an artifact root that cannot be written."""

import subprocess

import pytest
from fault_proxy import FaultProxy

from conftest import ROOT, S3_BUCKET, run, tool_env, write_tiny_params
from selftrain import artifacts, stages
from selftrain.params import load_params


def test_transient_s3_errors_are_retried_and_the_stage_completes(s3_server, tmp_path):
    params_path = write_tiny_params(tmp_path / "params.yaml")
    fail = {1, 2, 3, 8, 9, 15}  # the first requests, and a few later ones: s3fs and botocore retry them on their own
    out = f"s3://{S3_BUCKET}/flaky/data"
    with FaultProxy(s3_server["AWS_ENDPOINT_URL"], lambda method, path, n: "503" if n in fail else None) as proxy:
        run(["selftrain", "prepare", "--params", str(params_path), "--out", out], ROOT, AWS_ENDPOINT_URL=proxy.url)
    assert len(proxy.faults) == 6 and proxy.count > 15
    local = str(tmp_path / "data")
    stages.prepare.run(load_params(params_path), out=local)
    assert artifacts.content_hash(out) == artifacts.content_hash(
        local
    )  # complete, and byte for byte what a local run writes


def test_s3_without_credentials_says_where_they_come_from(s3_server, tmp_path):
    params_path = write_tiny_params(tmp_path / "params.yaml")
    env = {
        k: v
        for k, v in tool_env().items()
        if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "AWS_SESSION_TOKEN")
    }
    env |= {
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
        "AWS_CONFIG_FILE": str(tmp_path / "none"),
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    proc = subprocess.run(
        ["selftrain", "prepare", "--params", str(params_path), "--out", f"s3://{S3_BUCKET}/nocreds/data"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "no S3 credentials" in proc.stderr and "AWS_ACCESS_KEY_ID" in proc.stderr and "Traceback" not in proc.stderr


def test_an_artifact_root_that_cannot_be_written_is_named(tmp_path):
    params_path = write_tiny_params(tmp_path / "params.yaml")
    (tmp_path / "a-file").write_text("not a folder")
    out = tmp_path / "a-file" / "data"  # its parent is a file: no one, root included, can write there
    done = subprocess.run(
        ["selftrain", "prepare", "--params", str(params_path), "--out", str(out)],
        cwd=ROOT,
        env=tool_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert f"cannot write '{out}'" in done.stderr and "the artifact root must be writable" in done.stderr
    with pytest.raises(artifacts.ArtifactError, match="the artifact root must be writable"):
        artifacts.write_json(str(out / "x.json"), {})
