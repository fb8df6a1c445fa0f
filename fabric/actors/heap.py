"""How the control plane's long-lived processes collect cyclic garbage: rarely, and never over what they built at start.

The registry holds every live run's plan, machine and events. CPython's collector, at its defaults, scans young
objects every 700 allocations and every long-lived object every ~70,000: a 1,000-node submit or a wave of node
ends paid tens of milliseconds of full scans each (`bench.dispatch`, docs/benchmarks.md). Reference counting
frees almost everything here; the collector is only for cycles, and those can wait.
"""

from __future__ import annotations

import gc

YOUNG_EVERY = 20_000  # allocations between young collections (CPython's default: 700)
OLDER_EVERY = 20  # young collections per middle one, and middle ones per full one (default: 10 each)


def collect_rarely() -> None:
    """Called once a process has built its long-lived state: that state is never scanned again, and collections
    come about 30 times less often. Objects made later are collected as usual, only less often."""
    gc.freeze()
    gc.set_threshold(YOUNG_EVERY, OLDER_EVERY, OLDER_EVERY)
