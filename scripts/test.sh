#!/usr/bin/env bash
# The tests: set up, lint, then the whole suite (import-linter runs inside it).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev,serve,train,observe
.venv/bin/ruff check .
exec .venv/bin/python -m pytest -q "$@"
