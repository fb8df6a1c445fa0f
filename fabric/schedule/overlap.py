"""The overlap decision of a pipeline run: start, skip, or cancel older runs, given the runs now active (pure)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from fabric.spec.catalogue import Overlap


@dataclass(frozen=True)
class OverlapDecision:
    start: bool
    cancel: tuple[str, ...] = ()  # submission ids to cancel first, oldest first
    reason: str = ""
    queue: bool = False  # overlap queue: hold the start until a run ends (schedule/startqueue.py)


def decide(active: Sequence[tuple[float, str]], max_active: int | None, policy: Overlap) -> OverlapDecision:
    """`active`: (created_at, submission_id) of the pipeline's running runs. Under the limit, start; at it,
    skip, queue, or cancel as many of the oldest as it takes to leave room for one more."""
    if max_active is None or len(active) < max_active:
        return OverlapDecision(True)
    if policy in (Overlap.SKIP, Overlap.QUEUE):
        running = ", ".join(sid for _, sid in sorted(active))
        verb = "queued" if policy is Overlap.QUEUE else "skipped"
        return OverlapDecision(False, reason=f"{len(active)} run(s) active, max_active_runs is {max_active}: "
                                             f"{verb} ({running})", queue=policy is Overlap.QUEUE)
    oldest = tuple(sid for _, sid in sorted(active)[:len(active) - max_active + 1])
    return OverlapDecision(True, oldest, reason=f"max_active_runs is {max_active}: cancelled {', '.join(oldest)}")
