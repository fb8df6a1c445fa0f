#!/usr/bin/env bash
# Make .venv and install fabric with the given extras (default: dev); a no-op when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-dev,serve}"
python="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$python" -m venv .venv
stamp=".venv/.installed-$(cat pyproject.toml | sha256sum | cut -c1-12)-${extras//,/_}"
if [ ! -f "$stamp" ]; then
  echo "setting up .venv (extras: $extras) ..." >&2
  .venv/bin/python -m pip install -q --upgrade pip
  # torch first, pinned: this is the CPU build on disk. An unpinned torch pulls gigabytes of CUDA.
  .venv/bin/python -m pip install -q torch==2.13.0
  .venv/bin/python -m pip install -q -e ".[${extras}]"
  touch "$stamp"
fi
