#!/usr/bin/env bash
# The main job: set up, then run the quant example DAG on a local Ray that this command starts.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev,serve,observe  # observe: the OpenLineage file of each run
exec .venv/bin/fabric run jobs/dags/quant_backtest.yaml "$@"
