"""A generation's plot as the Prefect UI shows it, screenshotted with headless Chromium (Debian's `chromium`).

Against a running server (`make server`), the newest artifact with a key, e.g. a deployment run's:

    python scripts/ui_screenshot.py --api http://127.0.0.1:4200/api --key gen1-accuracy --out ui-accuracy.png

It prints the flow run and the deployment the artifact came from. Without --api: starts a Prefect server
with its UI on loopback (a fresh PREFECT_HOME, as `make server` with nothing in it), publishes a report's
plot in a flow run exactly as the self-training flow does (`flows.ui.publish_plot`) and screenshots that:

    python scripts/ui_screenshot.py --report artifacts/gen1/report --plot accuracy.png --out ui-accuracy.png

Either way it opens the artifact's page in Chromium and saves what it renders, and exits 1 if the page
shows no picture (few colours: text and flat panels only)."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _api(api: str, path: str, body: dict | None = None) -> dict | list:
    req = urllib.request.Request(
        f"{api}/{path}",
        data=None if body is None else json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def newest_artifact(api: str, key: str) -> str:
    """The id of the newest artifact with this key; prints the flow run and deployment it came from."""
    found = _api(api, "artifacts/filter", {"artifacts": {"key": {"any_": [key]}}, "sort": "CREATED_DESC", "limit": 1})
    if not found:
        sys.exit(
            f"no artifact with key {key!r} on {api}: run a deployment first (README: 'A deployment run in the UI')"
        )
    art = found[0]  # type: ignore[index]
    run = _api(api, f"flow_runs/{art['flow_run_id']}")
    names = [run["name"]]  # type: ignore[index]
    # a generation's subflow: up to the flow run
    while not run["deployment_id"] and run["parent_task_run_id"]:  # type: ignore[index]
        parent = _api(api, f"task_runs/{run['parent_task_run_id']}")  # type: ignore[index]
        run = _api(api, f"flow_runs/{parent['flow_run_id']}")  # type: ignore[index]
        names.append(run["name"])  # type: ignore[index]
    dep = (
        _api(api, f"deployments/{run['deployment_id']}")["name"]
        if run["deployment_id"]
        else "none: not a deployment run"
    )  # type: ignore[index]
    # type: ignore[index]
    print(f"artifact {key} of flow run {' < '.join(map(repr, names))} ({run['state_name']}), deployment: {dep}")
    return str(art["id"])


@contextmanager
def fresh_server() -> Iterator[tuple[str, dict[str, str]]]:
    """A Prefect server on a free loopback port with an empty PREFECT_HOME: (api url, the environment that reaches
    it)."""
    home = Path(tempfile.mkdtemp(prefix="selftrain-ui-"))
    port = _port()
    api = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_API_URL": api, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    server = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    try:
        for _ in range(180):
            try:
                urllib.request.urlopen(f"{api}/health", timeout=2)
                break
            except OSError:
                time.sleep(1)
        else:
            sys.exit("the Prefect server did not start in 3 minutes")
        yield api, env
    finally:
        server.terminate()
        server.wait(30)
        shutil.rmtree(home, ignore_errors=True)


def publish(plot: Path, env: dict[str, str]) -> str:
    """Publish the plot from a flow run as the self-training flow does; the artifact's id."""
    code = (
        "from prefect import flow\nfrom flows.ui import publish_plot\n"
        f"print(flow(name='ui-screenshot')(lambda: publish_plot({str(plot)!r}, {plot.parent.parent.name!r}))())"
    )
    return subprocess.run(
        [sys.executable, "-c", code], env=env, check=True, capture_output=True, text=True
    ).stdout.split()[-1]


def screenshot(chromium: str, url: str, out: Path) -> int:
    with tempfile.TemporaryDirectory(prefix="selftrain-chromium-") as profile:
        subprocess.run(
            [
                chromium,
                *CHROMIUM_FLAGS,
                f"--user-data-dir={profile}",
                f"--screenshot={out.resolve()}",
                "--window-size=1500,1100",
                "--virtual-time-budget=20000",
                url,
            ],
            check=True,
            capture_output=True,
            timeout=180,
        )
    shot = np.asarray(Image.open(out).convert("RGB"))
    colours = len(np.unique(shot.reshape(-1, 3), axis=0))
    print(f"{url} -> {out} ({shot.shape[1]}x{shot.shape[0]}, {colours} colours)")
    return 0 if colours > 200 else 1  # a page of text and flat panels has few; a matplotlib plot, anti-aliased, many


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--api", help="a running server's API, e.g. http://127.0.0.1:4200/api (`make server`); with --key")
    ap.add_argument(
        "--key",
        default="gen1-accuracy",
        help="with --api: the artifact key to show, newest first (default: %(default)s)",
    )
    ap.add_argument(
        "--report",
        default="artifacts/gen1/report",
        help="without --api: a generation's report folder (default: %(default)s)",
    )
    ap.add_argument("--plot", default="accuracy.png", help="without --api: which plot of it (default: %(default)s)")
    ap.add_argument("--out", default="ui-screenshot.png", help="the screenshot (default: %(default)s)")
    args = ap.parse_args()
    chromium = shutil.which("chromium") or sys.exit("no chromium: apt-get install chromium")
    out = Path(args.out)
    if args.api:
        api = args.api.rstrip("/")
        return screenshot(
            chromium, f"{api.removesuffix('/api')}/artifacts/artifact/{newest_artifact(api, args.key)}", out
        )
    plot = Path(args.report) / args.plot
    if not plot.exists():
        sys.exit(f"{plot} not found: run `make run` (or point --report at a generation's report folder)")
    with fresh_server() as (api, env):
        return screenshot(chromium, f"{api.removesuffix('/api')}/artifacts/artifact/{publish(plot, env)}", out)


if __name__ == "__main__":
    sys.exit(main())
