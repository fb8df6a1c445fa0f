# Sourced by the example scripts: `run_with_gateway DAG NAME` runs `fabric run DAG --gateway $port` in the
# background (stopped when the script exits), waits until its gateway is up, prints the run's output, and sets
# `log`, `run` and `token` (the admin token the run printed once).
run_with_gateway() {
  log="$(mktemp -t "fabric-$2.XXXXXX")"
  COLUMNS="${COLUMNS:-160}" .venv/bin/fabric run "$1" --gateway "$port" >"$log" 2>&1 &
  run=$!
  trap 'kill -TERM $run 2>/dev/null; wait $run 2>/dev/null || true' EXIT
  until grep -q "the gateway stays up" "$log"; do
    if ! kill -0 $run 2>/dev/null; then cat "$log"; echo "the run failed" >&2; exit 1; fi
    sleep 2
  done
  cat "$log"
  token="$(sed -n 's/.*token (shown once): \([^ ]*\).*/\1/p' "$log" | head -1)"
}
