"""moto's S3 server, with writes committed as S3 commits them: `python tests/moto_s3.py PORT`.

moto checks a write's precondition (If-Match, If-None-Match) and then writes, with nothing held between the two, so
two conditional puts racing on one key can both pass: S3 lets exactly one win. S3's documented rule (Conditional
writes, Amazon S3 user guide) is kept here: writes of one key are applied one at a time, and a conditional write
that arrives while another write of that key is in flight is answered 409 ConditionalRequestConflict, which the
caller is asked to retry. Reads are not held back."""

from __future__ import annotations

import sys
import threading
from collections import defaultdict
from typing import Any

from moto.server import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import run_simple

CONFLICT = (
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>ConditionalRequestConflict</Code><Message>A conflicting '
    b"conditional operation is currently in progress against this resource. Please try again.</Message></Error>"
)


class OneWriteAtATime:
    """WSGI middleware: one write (PUT, POST, DELETE) per key at a time; a conditional one meeting another: 409."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.keys: defaultdict[str, threading.Lock] = defaultdict(threading.Lock)
        self.guard = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        if environ["REQUEST_METHOD"] not in ("PUT", "POST", "DELETE"):
            return self.app(environ, start_response)
        with self.guard:
            key = self.keys[environ.get("HTTP_HOST", "") + environ["PATH_INFO"]]
        conditional = "HTTP_IF_MATCH" in environ or "HTTP_IF_NONE_MATCH" in environ
        if not key.acquire(blocking=not conditional):
            environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
            start_response(
                "409 Conflict", [("Content-Type", "application/xml"), ("Content-Length", str(len(CONFLICT)))]
            )
            return [CONFLICT]
        try:
            return [b"".join(self.app(environ, start_response))]  # the whole write happens inside the key's turn
        finally:
            key.release()


if __name__ == "__main__":
    app = DomainDispatcherApplication(create_backend_app)
    run_simple("127.0.0.1", int(sys.argv[1]), OneWriteAtATime(app), threaded=True, request_handler=MotoRequestHandler)
