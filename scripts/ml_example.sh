#!/usr/bin/env bash
# The ML example end to end: start a local Ray with the gateway, run jobs/dags/bt_xs_bilstm.yaml (data -> SQL ->
# features -> BiLSTM on Ray Train -> backtest -> model card -> promote -> serve), then answer a prediction
# request with curl through POST /api/predict/xs_bilstm. Run it again: every cached node shows CACHED.
# Env: PORT (default 8000), FABRIC_HOME (default ~/.fabric). Stops the Ray it started on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev,serve,train
port="${PORT:-8000}"
export FABRIC_HOME="${FABRIC_HOME:-$HOME/.fabric}"
token="$(.venv/bin/fabric token --team demo 2>/dev/null)"
.venv/bin/fabric up --port "$port" >"$FABRIC_HOME/ml_example_up.log" 2>&1 &
up=$!
trap 'kill -TERM $up 2>/dev/null; wait $up 2>/dev/null || true' EXIT
for _ in $(seq 1 120); do
  curl -fsS "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break
  kill -0 $up 2>/dev/null || { cat "$FABRIC_HOME/ml_example_up.log"; exit 3; }
  sleep 1
done
export FABRIC_ADDRESS="http://127.0.0.1:$port" FABRIC_TOKEN="$token"
started=$(date +%s)
sid="$(.venv/bin/fabric submit jobs/dags/bt_xs_bilstm.yaml)"
echo "submitted $sid"
.venv/bin/fabric status "$sid" --watch
state="$(.venv/bin/fabric status "$sid" --json | .venv/bin/python -c 'import json,sys; print(json.load(sys.stdin)["state"])')"
echo "$state in $(( $(date +%s) - started ))s"
[ "$state" = SUCCEEDED ] || exit 1
auth=(-H "Authorization: Bearer $token")
curl -fsS "${auth[@]}" "http://127.0.0.1:$port/api/orch/artifacts/$sid/backtest/probe.json" -o "$FABRIC_HOME/probe.json"
echo "POST /api/predict/xs_bilstm with 4 windows from the backtest's probe.json:"
curl -fsS "${auth[@]}" -H 'content-type: application/json' --data @"$FABRIC_HOME/probe.json" \
  "http://127.0.0.1:$port/api/predict/xs_bilstm"
echo
echo "the run's report: curl -H 'Authorization: Bearer \$TOKEN' http://127.0.0.1:$port/api/orch/artifacts/$sid/metrics.json"
if [ "${KEEP_UP:-0}" = 1 ]; then echo "the gateway stays up (token: $token); Ctrl-C stops it"; wait $up; fi
