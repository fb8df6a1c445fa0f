#!/usr/bin/env bash
# The ML example end to end, as a new user runs it: `fabric run jobs/dags/bt_xs_bilstm.yaml --gateway PORT`
# (synthetic data -> SQL -> features -> BiLSTM on Ray Train -> backtest -> model card -> promote -> serve), then
# a prediction request with curl through the gateway's POST /api/predict/xs_bilstm. Run it twice: the second
# run shows the cached nodes CACHED. Env: PORT (default 8000), KEEP_UP=1 to leave the gateway up afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev,serve,train
port="${PORT:-8000}"
source scripts/gateway_run.sh
run_with_gateway jobs/dags/bt_xs_bilstm.yaml ml-example
sid="$(grep -o 'sub-[0-9]\{8\}-[0-9]\{6\}-[0-9a-f]\{6\}' "$log" | tail -1)"
auth=(-H "Authorization: Bearer $token")
probe="$(mktemp -t fabric-probe.XXXXXX)"
curl -fsS "${auth[@]}" "http://127.0.0.1:$port/api/orch/artifacts/$sid/backtest/probe.json" -o "$probe"
echo "curl -X POST http://127.0.0.1:$port/api/predict/xs_bilstm --data @probe.json (4 windows from the backtest):"
curl -fsS "${auth[@]}" -H 'content-type: application/json' --data @"$probe" "http://127.0.0.1:$port/api/predict/xs_bilstm"
echo
if [ "${KEEP_UP:-0}" = 1 ]; then echo "gateway up at http://127.0.0.1:$port (token $token); Ctrl-C stops it"; wait $run; fi
