"""Load for the reliability tests and bench/load.py: DAGs of marking no-op nodes, many concurrent clients."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from tests.reliability.results import percentiles

MARK = "tests.reliability.nodes:mark"


def marked_dag(pipeline_id: str, nodes: int, marker_dir: str, *, cpu: str = "100m", seconds: float = 0.0,
               max_attempts: int = 2, backoff_sec: float = 0.2, max_runtime: str | None = None) -> dict[str, Any]:
    """One root fanning out to `nodes - 1` children (`nodes` >= 1), each leaving a marker per execution.
    `max_runtime` bounds each attempt (a timed-out attempt is retried while attempts remain)."""
    params = {"marker_dir": marker_dir, **({"seconds": seconds} if seconds else {})}
    slo = {"slo": {"max_runtime": max_runtime, "retry": {"max_attempts": max_attempts, "backoff_sec": backoff_sec}}}
    spec_nodes = [{"id": f"n{i}", "kind": "python_task", "entrypoint": MARK, "params": params,
                   "resources": {"cpu": cpu}, **(slo if max_runtime else {})} for i in range(nodes)]
    return {"version": 1, "pipeline_id": pipeline_id, "nodes": spec_nodes,
            "edges": [{"from": "n0", "to": f"n{i}"} for i in range(1, nodes)],
            "slo": {"retry": {"max_attempts": max_attempts, "backoff_sec": backoff_sec}}}


@dataclass
class LoadResult:
    acknowledged: list[str] = field(default_factory=list)
    submit_s: list[float] = field(default_factory=list)
    started_at: dict[str, float] = field(default_factory=dict)  # submission id -> wall time the submit began
    errors: list[str] = field(default_factory=list)
    wall_s: float = 0.0

    def figures(self) -> dict[str, Any]:
        lat = {k: round(v * 1000, 1) for k, v in percentiles(self.submit_s).items()}
        return {"submissions": len(self.acknowledged), "submit_errors": len(self.errors),
                "submit_ms": lat, "submit_wall_s": round(self.wall_s, 2),
                "submits_per_s": round(len(self.acknowledged) / self.wall_s, 1) if self.wall_s else None}


def run_clients(clients: list[Any], submissions: int, spec_for: Callable[[int], Any],
                params_for: Callable[[int], dict[str, Any]]) -> LoadResult:
    """`submissions` submits spread over the clients, each client in its own thread, as fast as it can."""
    result = LoadResult()
    lock = threading.Lock()

    def one_client(index: int) -> None:
        client = clients[index]
        for n in range(index, submissions, len(clients)):
            began, wall = time.perf_counter(), time.time()
            try:
                submission = client.submit(spec_for(n), params_for(n))
            except Exception as exc:  # noqa: BLE001 - counted and reported: an error is an answer, not a loss
                with lock:
                    result.errors.append(f"{type(exc).__name__}: {exc}"[:300])
                continue
            took = time.perf_counter() - began
            with lock:
                result.acknowledged.append(submission.id)
                result.submit_s.append(took)
                result.started_at[submission.id] = wall

    began = time.perf_counter()
    with ThreadPoolExecutor(len(clients)) as pool:
        list(pool.map(one_client, range(len(clients))))
    result.wall_s = time.perf_counter() - began
    return result


class BackgroundLoad:
    """Submits small marked DAGs every `every_s` from a thread while a fault happens."""

    def __init__(self, client: Any, marker_dir: str, *, every_s: float = 0.3, nodes: int = 3,
                 label: str = "background") -> None:
        self._client, self._marker_dir, self._every_s, self._nodes = client, marker_dir, every_s, nodes
        self.label = label
        self.result = LoadResult()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="background-load", daemon=True)

    def __enter__(self) -> BackgroundLoad:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(120)

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            spec = marked_dag(f"{self.label}-{n}", self._nodes, self._marker_dir, max_attempts=3, max_runtime="20s")
            began = time.perf_counter()
            try:
                submission = self._client.submit(spec, {"labels": {"load": self.label}})
                self.result.acknowledged.append(submission.id)
                self.result.submit_s.append(time.perf_counter() - began)
            except Exception as exc:  # noqa: BLE001 - reported by the test
                self.result.errors.append(f"{type(exc).__name__}: {exc}"[:300])
            n += 1
            self._stop.wait(self._every_s)
