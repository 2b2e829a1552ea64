"""Faults from outside: an S3 endpoint that fails requests now and then (a real one, moto, behind a proxy that
answers 503 SlowDown to chosen requests), S3 with no credentials, an artifact root that cannot be written."""
import http.client
import http.server
import subprocess
import threading
from urllib.parse import urlsplit

import pytest

from conftest import ROOT, S3_BUCKET, run, tool_env, write_tiny_params
from selftrain import artifacts, stages
from selftrain.params import load_params

SLOW_DOWN = b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>'


class FlakyS3:
    """A proxy in front of an S3 endpoint that answers 503 SlowDown to the requests whose numbers are in `fail`."""

    def __init__(self, endpoint: str, fail: set[int]) -> None:
        target, lock, self.count, self.failed = urlsplit(endpoint), threading.Lock(), 0, 0
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # botocore PUTs with Expect: 100-continue, which HTTP/1.0 handlers never answer

            def _any(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with lock:
                    proxy.count += 1
                    fail_this = proxy.count in fail
                    proxy.failed += fail_this
                if fail_this:
                    self.send_response(503)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(SLOW_DOWN)))
                    self.end_headers()
                    self.wfile.write(SLOW_DOWN)
                    return
                conn = http.client.HTTPConnection(target.hostname, target.port, timeout=60)
                conn.request(self.command, self.path, body=body, headers={k: v for k, v in self.headers.items() if k.lower() not in ("host", "expect")})
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length", "server", "date"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _any

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


def test_transient_s3_errors_are_retried_and_the_stage_completes(s3_server, tmp_path):
    params_path = write_tiny_params(tmp_path / "params.yaml")
    proxy = FlakyS3(s3_server["AWS_ENDPOINT_URL"], fail={1, 2, 3, 8, 9, 15})  # the first requests, and a few later ones
    try:
        out = f"s3://{S3_BUCKET}/flaky/data"
        run(["selftrain", "prepare", "--params", str(params_path), "--out", out], ROOT, AWS_ENDPOINT_URL=proxy.url)
    finally:
        proxy.close()
    assert proxy.failed == 6 and proxy.count > 15
    local = str(tmp_path / "data")
    stages.prepare(load_params(params_path), out=local)
    assert artifacts.content_hash(out) == artifacts.content_hash(local)  # complete, and byte for byte what a local run writes


def test_s3_without_credentials_says_where_they_come_from(s3_server, tmp_path):
    params_path = write_tiny_params(tmp_path / "params.yaml")
    env = {k: v for k, v in tool_env().items() if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "AWS_SESSION_TOKEN")}
    env |= {"AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"), "AWS_CONFIG_FILE": str(tmp_path / "none"),
            "AWS_EC2_METADATA_DISABLED": "true"}
    proc = subprocess.run(["selftrain", "prepare", "--params", str(params_path), "--out", f"s3://{S3_BUCKET}/nocreds/data"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "no S3 credentials" in proc.stderr and "AWS_ACCESS_KEY_ID" in proc.stderr and "Traceback" not in proc.stderr


def test_an_artifact_root_that_cannot_be_written_is_named(tmp_path):
    params_path = write_tiny_params(tmp_path / "params.yaml")
    (tmp_path / "a-file").write_text("not a folder")
    out = tmp_path / "a-file" / "data"  # its parent is a file: no one, root included, can write there
    done = subprocess.run(["selftrain", "prepare", "--params", str(params_path), "--out", str(out)], cwd=ROOT, env=tool_env(),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert f"cannot write '{out}'" in done.stderr and "the artifact root must be writable" in done.stderr
    with pytest.raises(artifacts.ArtifactError, match="the artifact root must be writable"):
        artifacts.write_json(str(out / "x.json"), {})
