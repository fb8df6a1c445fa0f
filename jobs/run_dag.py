"""Run one DAG as a Ray job: `ray job submit --working-dir . -- python -m jobs.run_dag jobs/dags/X.yaml`.

The job's driver joins the cluster (Ray sets RAY_ADDRESS for it), submits the DAG through fabric's
public API, prints every node's state change into the job's logs as it happens, and exits 0 when the
submission SUCCEEDED, 1 when it ended otherwise and 2 when the DAG was rejected. The job's
`--working-dir` reaches the nodes too: fabric hands the driver's runtime_env on to them.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import fabric as fb

POLL_S = 1.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.run_dag", description=__doc__.splitlines()[0])
    parser.add_argument("spec", help="a DAG file (YAML/JSON), or the DAG itself as JSON text")
    parser.add_argument("--params", default=None, help="runtime params as JSON, e.g. '{\"labels\": {\"a\": \"b\"}}'")
    parser.add_argument("--address", default=None, help="Ray address (default: the job's cluster)")
    parser.add_argument("--timeout", type=float, default=None, help="give up after this many seconds")
    args = parser.parse_args(argv)

    try:
        spec = json.loads(args.spec) if args.spec.lstrip().startswith("{") else args.spec
        params = json.loads(args.params) if args.params else None
        fb.load_spec(spec)  # a spec that cannot run is refused here, before a Ray driver is started for it
        client = fb.connect(args.address)
        submission = client.submit(spec, params)
    except (fb.FabricError, json.JSONDecodeError) as exc:
        print(f"fabric: the DAG was not accepted:\n{exc}", file=sys.stderr, flush=True)
        return 2
    print(f"fabric: submitted {submission.id}", flush=True)
    status = follow(submission, args.timeout)
    summary = ", ".join(f"{k.lower()} {v}" for k, v in sorted(status.counts.items()))
    print(f"fabric: {status.state} {status.pipeline_id} {submission.id} ({summary})", flush=True)
    for node in status.nodes:
        if node.error is not None:
            print(f"fabric: {node.node_id} {node.state}: {node.error.type}: {node.error.message}", file=sys.stderr)
    return 0 if status.state == "SUCCEEDED" else 1


def follow(submission: fb.Submission, timeout: float | None) -> fb.SubmissionStatus:
    """Print each node's state changes until the submission ends (or `timeout` passes: then cancel it)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    seen: dict[str, str] = {}
    while True:
        status = submission.status()
        for node in status.nodes:
            if seen.get(node.node_id) != str(node.state):
                seen[node.node_id] = str(node.state)
                attempt = f" (attempt {node.attempts})" if node.attempts > 1 else ""
                print(f"fabric: {node.node_id} {node.state}{attempt}", flush=True)
        if status.done:
            return status
        if deadline is not None and time.monotonic() > deadline:
            print(f"fabric: {submission.id} did not finish within {timeout}s: cancelling it", flush=True)
            submission.cancel()
            return submission.wait(60)
        time.sleep(POLL_S)


if __name__ == "__main__":
    sys.exit(main())
