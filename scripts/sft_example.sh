#!/usr/bin/env bash
# The fine-tuning example end to end, as a new user runs it: `fabric run jobs/dags/sft_small.yaml --gateway PORT`
# (tiny base model -> SFT with a LoRA adapter on 2 Ray Train workers -> registered in MLflow -> llm_serve -> one
# completion through the served app), then one completion over HTTP with curl through the gateway's
# OpenAI-compatible POST /v1/completions. Env: PORT (default 8000), KEEP_UP=1 to leave the gateway up afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev,serve,train,genai
port="${PORT:-8000}"
source scripts/gateway_run.sh
run_with_gateway jobs/dags/sft_small.yaml sft-example
echo "curl -X POST http://127.0.0.1:$port/v1/completions (the fine-tuned model, served as sft_small):"
curl -fsS -H "Authorization: Bearer $token" -H 'content-type: application/json' \
  -d '{"model": "sft_small", "prompt": "alpha beta ?", "max_tokens": 4, "temperature": 0}' \
  "http://127.0.0.1:$port/v1/completions"
echo
if [ "${KEEP_UP:-0}" = 1 ]; then echo "gateway up at http://127.0.0.1:$port (token $token); Ctrl-C stops it"; wait $run; fi
