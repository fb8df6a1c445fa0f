"""The lineage process's own side (`python -m fabric.actors.lineage_child`, started by lineage_proc.py): builds
each batch's OpenLineage events, sends them through the configured transport, and confirms the batch."""

from __future__ import annotations

import logging
import os
import sys
from collections import OrderedDict
from typing import IO, Any

from fabric.actors.heap import collect_rarely
from fabric.actors.lineage_inputs import Files, node_io, plan_of
from fabric.actors.lineage_proc import ACK, read_frame
from fabric.actors.observe import lineage_client, send_lineage
from fabric.actors.observe_config import lineage_namespace
from fabric.record.lineage import LineageBuilder
from fabric.settings import Settings

log = logging.getLogger(__name__)

NICENESS = 19  # where SCHED_IDLE is refused
MAX_BUILDERS = 1000  # submissions whose lineage is being built at once (a run that never ends must not leak)


def main() -> None:
    """The child: builds each batch's lineage, sends it through the configured transport, confirms it."""
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    # Lineage may come late: on a busy machine the registry's engine and the nodes go first.
    try:  # Linux: run only on CPU time nothing else wants
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):
        os.nice(NICENESS)
    source = sys.stdin.buffer
    with os.fdopen(int(sys.argv[1]), "wb", buffering=0) as answers:
        settings = read_frame(source)
        if isinstance(settings, Settings):
            serve(settings, source, answers)


def serve(settings: Settings, source: IO[bytes], answers: IO[bytes]) -> None:
    client = lineage_client(settings)
    namespace = lineage_namespace(settings)
    files = Files(settings.home, settings.artifacts)
    collect_rarely()  # its imports and client are built (fabric/actors/heap.py)
    builders: OrderedDict[str, LineageBuilder] = OrderedDict()
    while (message := read_frame(source)) is not None:
        if message[0] == "record":
            _, record, resumed = message
            try:  # `resumed`: an earlier child sent this run's start; its nodes may be running
                builders[record.submission_id] = LineageBuilder(record, node_io(plan_of(record)), namespace,
                                                                files.output, files.artifacts, resumed=resumed)
            except Exception:  # noqa: BLE001 - a record that does not compile has no lineage; the rest goes on
                log.exception("fabric could not build lineage for %s", record.submission_id)
            while len(builders) > MAX_BUILDERS:
                builders.popitem(last=False)
            continue
        _, number, events = message
        built: list[dict[str, Any]] = []
        for event in events:
            builder = builders.get(event.submission_id)
            if builder is None:
                continue
            try:
                built += builder.feed(event)
            except Exception:  # noqa: BLE001 - lineage must never stop: this event is logged and skipped
                log.exception("fabric could not build lineage for %s", event.submission_id)
            if event.node_id is None and event.source == "RUNNING" and event.target != "RUNNING":
                builders.pop(event.submission_id, None)
        try:
            send_lineage(client, built)
        except Exception:  # noqa: BLE001
            log.exception("fabric could not send %d lineage events", len(built))
        answers.write(ACK.pack(number))


if __name__ == "__main__":
    main()
