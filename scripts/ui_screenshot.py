"""A generation's plot as the Prefect UI shows it, screenshotted with headless Chromium (Debian's `chromium`).

    python scripts/ui_screenshot.py --report artifacts/gen1/report --plot accuracy.png --out ui-accuracy.png

Starts a Prefect server with its UI on loopback (a fresh PREFECT_HOME, as `make server` with nothing in it),
publishes the plot in a flow run exactly as the self-training flow does (`flows.ui.publish_plot`), opens the
artifact's page in Chromium and saves what it renders. Exits 1 if the page shows no picture (the artifact's
area is one flat colour)."""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--report", default="artifacts/gen1/report", help="a generation's report folder (default: %(default)s)")
    ap.add_argument("--plot", default="accuracy.png", help="which plot of it (default: %(default)s)")
    ap.add_argument("--out", default="ui-screenshot.png", help="the screenshot (default: %(default)s)")
    args = ap.parse_args()
    chromium = shutil.which("chromium") or sys.exit("no chromium: apt-get install chromium")
    plot = Path(args.report) / args.plot
    if not plot.exists():
        sys.exit(f"{plot} not found: run `make run` (or point --report at a generation's report folder)")
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
        publish = (
            "from prefect import flow\nfrom flows.ui import publish_plot\n"
            f"print(flow(name='ui-screenshot')(lambda: publish_plot({str(plot)!r}, {plot.parent.parent.name!r}))())"
        )
        artifact_id = subprocess.run([sys.executable, "-c", publish], env=env, check=True, capture_output=True, text=True).stdout.split()[-1]
        url = f"http://127.0.0.1:{port}/artifacts/artifact/{artifact_id}"
        profile = home / "chromium"
        subprocess.run(
            [
                chromium,
                *CHROMIUM_FLAGS,
                f"--user-data-dir={profile}",
                f"--screenshot={Path(args.out).resolve()}",
                "--window-size=1500,1100",
                "--virtual-time-budget=20000",
                url,
            ],
            check=True,
            capture_output=True,
            timeout=180,
        )
    finally:
        server.terminate()
        server.wait(30)
        shutil.rmtree(home, ignore_errors=True)
    shot = np.asarray(Image.open(args.out).convert("RGB"))
    colours = len(np.unique(shot.reshape(-1, 3), axis=0))
    print(f"{url} -> {args.out} ({shot.shape[1]}x{shot.shape[0]}, {colours} colours)")
    return 0 if colours > 200 else 1  # a page of text and flat panels has few; a matplotlib plot, anti-aliased, many


if __name__ == "__main__":
    sys.exit(main())
