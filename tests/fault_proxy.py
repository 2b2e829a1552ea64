"""A proxy on loopback in front of a real S3 endpoint (moto) that fails chosen requests the ways a real network and a
real S3 do, so that the errors a test sees are the ones s3fs, aiobotocore and botocore really raise:

- "503": 503 SlowDown (S3's throttling answer), "500": 500 InternalError;
- "drop": the connection is closed without an answer (botocore: ConnectionClosedError);
- "stall": no answer for `stall_s` seconds, then the connection closes (past the client's read timeout:
ReadTimeoutError);
- "delay": the real answer, `stall_s` seconds late (a slow link, within the timeout).

`rule(method, path, n)` picks the action for the n-th request (1-based, all requests counted; `path` with its query,
e.g. `/bucket?list-type=2&prefix=...` for a listing), or None to forward it.
"""

from __future__ import annotations

import http.client
import http.server
import socket
import threading
import time
from collections.abc import Callable
from urllib.parse import urlsplit

ERRORS = {
    "503": (503, b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"),
    "500": (
        500,
        b"<Error><Code>InternalError</Code><Message>We encountered an internal error. Please try "
        b"again.</Message></Error>",
    ),
}
Rule = Callable[[str, str, int], "str | None"]


class FaultProxy:
    def __init__(self, endpoint: str, rule: Rule, stall_s: float = 5.0) -> None:
        target, lock = urlsplit(endpoint), threading.Lock()
        self.rule = rule
        self.stall_s = stall_s
        self.count = 0
        self.faults: list[tuple[str, str, str]] = []  # (action, method, path) of each request failed on purpose
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = (
                "HTTP/1.1"  # botocore PUTs with Expect: 100-continue, which HTTP/1.0 handlers never answer
            )

            def _any(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                path = self.path
                with lock:
                    proxy.count += 1
                    action = proxy.rule(self.command, path, proxy.count)
                    if action:
                        proxy.faults.append((action, self.command, path))
                if action in ERRORS:
                    status, payload = ERRORS[action]
                    self.send_response(status)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                if action in ("drop", "stall"):
                    if action == "stall":
                        time.sleep(proxy.stall_s)
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if action == "delay":
                    time.sleep(proxy.stall_s)
                elif action is not None:
                    raise ValueError(f"unknown fault {action!r}")
                conn = http.client.HTTPConnection(target.hostname, target.port, timeout=60)
                conn.request(
                    self.command,
                    self.path,
                    body=body,
                    headers={k: v for k, v in self.headers.items() if k.lower() not in ("host", "expect")},
                )
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length", "server", "date"):
                        self.send_header(k, v)
                # a HEAD answer has no body but states the object's size
                self.send_header(
                    "Content-Length",
                    resp.getheader("Content-Length", "0") if self.command == "HEAD" else str(len(data)),
                )
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _any

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def first(n: int, action: str, method: str | None = None, path_contains: str = "") -> Rule:
    """Fail the first `n` requests that match (method, a substring of the path and query) with `action`."""
    return sequence([action] * n, method, path_contains)


def sequence(actions: list[str], method: str | None = None, path_contains: str = "") -> Rule:
    """The k-th request that matches (method, a substring of the path and query) gets actions[k]; later ones pass."""
    seen = [0]

    def rule(m: str, path: str, _: int) -> str | None:
        if (method is None or m == method) and path_contains in path and seen[0] < len(actions):
            seen[0] += 1
            return actions[seen[0] - 1]
        return None

    return rule


# s3fs and botocore retry on their own (s3fs 5 times, a class attribute; botocore's legacy mode 5 attempts with backoff
# of up to seconds); with one botocore attempt, short timeouts and `s3fs.S3FileSystem.retries = 1` the first failure
# reaches selftrain's code, which is what these tests are about. FSSPEC_S3 (JSON) carries the same to a subprocess.
ONE_TRY = {"config_kwargs": {"retries": {"total_max_attempts": 1}, "read_timeout": 2, "connect_timeout": 2}}
