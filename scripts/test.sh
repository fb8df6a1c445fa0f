#!/usr/bin/env bash
# The tests: set up, lint, then the whole suite (import-linter runs inside it).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev,serve,train,observe
.venv/bin/ruff check .
# The web UI's end-to-end test drives Debian's chromium; without apt (or root) that one test skips, saying why.
if ! command -v chromium >/dev/null && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  apt-get install -y -q chromium >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1; } \
    || echo "could not install chromium: the web UI's browser test will skip" >&2
fi
exec .venv/bin/python -m pytest -q "$@"
