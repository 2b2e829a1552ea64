#!/usr/bin/env bash
# Set up a fresh machine: the embedded data set (Debian package, when apt is there) and a
# virtual environment with selftrain and its pinned dependencies. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}

if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] && command -v apt-get >/dev/null; then
  SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
  echo "installing Debian package dataset-fashion-mnist (the embedded default data)"
  $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 \
    || { $SUDO apt-get update -qq >/dev/null && $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null; } \
    || echo "could not install dataset-fashion-mnist; selftrain will try to download Fashion-MNIST instead"
fi

if [ ! -x "$VENV/bin/python" ]; then
  python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || { echo "selftrain needs Python >= 3.11 (pyproject.toml requires-python); python3 is $(python3 --version 2>&1)" >&2; exit 1; }
  python3 -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -c constraints.txt -e '.[dev]'
