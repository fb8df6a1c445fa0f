"""FABRIC_LOG_FORMAT=json: fabric's loggers write one JSON object per line, with the submission and node where
the record carries them; text (the default) leaves logging as it was."""

from __future__ import annotations

import io
import json
import logging

import pytest

from fabric.errors import FabricError
from fabric.logs import LOGGERS, configure_logging
from fabric.settings import Settings


@pytest.fixture
def restore_loggers():
    saved = {name: (logging.getLogger(name).handlers[:], logging.getLogger(name).level,
                    logging.getLogger(name).propagate) for name in LOGGERS}
    yield
    for name, (handlers, level, propagate) in saved.items():
        logger = logging.getLogger(name)
        logger.handlers[:], logger.level, logger.propagate = handlers, level, propagate


def test_json_lines_with_the_submission_and_node_and_a_traceback_on_one_line(restore_loggers):
    stream = io.StringIO()
    log_format = Settings.from_env({"FABRIC_LOG_FORMAT": "JSON"}).log_format
    assert configure_logging(log_format, stream) is not None
    configure_logging(log_format, stream)  # twice: still one handler, no line twice
    log = logging.getLogger("fabric.actors.registry")
    log.info("submitted %d nodes", 3, extra={"submission_id": "sub-1"})
    logging.getLogger("serve.gateway").warning("slow", extra={"submission_id": "sub-1", "node_id": "train"})
    try:
        raise RuntimeError("boom\nsecond line")
    except RuntimeError:
        logging.getLogger("fabric.execute.engine").exception("metrics failed")
    logging.getLogger("fabric").debug("below the level")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3
    first, second, third = (json.loads(line) for line in lines)
    assert first["msg"] == "submitted 3 nodes" and first["level"] == "INFO" and first["submission_id"] == "sub-1"
    assert first["logger"] == "fabric.actors.registry" and "node_id" not in first
    assert first["ts"].endswith("Z") and first["ts"][:2] == "20"
    assert (second["logger"], second["level"], second["node_id"]) == ("serve.gateway", "WARNING", "train")
    assert third["level"] == "ERROR" and "RuntimeError: boom" in third["exc"]


def test_text_is_the_default_and_leaves_logging_alone(restore_loggers):
    before = logging.getLogger("fabric").handlers[:]
    assert Settings.from_env({}).log_format == "text"
    assert configure_logging(Settings.from_env({}).log_format, io.StringIO()) is None
    assert logging.getLogger("fabric").handlers == before and logging.getLogger("fabric").propagate
    with pytest.raises(FabricError, match="FABRIC_LOG_FORMAT"):
        Settings.from_env({"FABRIC_LOG_FORMAT": "xml"})  # a typo is named, with the fix


def test_a_failing_lineage_build_is_logged_with_its_submission_and_node(restore_loggers, tmp_path):
    """A real path of the registry: the observer cannot build the trace of a record whose spec does not compile;
    its log record, as JSON, names the submission and the node."""
    from fabric.actors.observe import Observer
    from fabric.record import Event, MemoryStore, SubmissionRecord

    stream = io.StringIO()
    configure_logging("json", stream)
    store = MemoryStore()
    store.add_submission(SubmissionRecord("sub-9", "pipe", {"not": "a dag"}, {}, "p", "r", 1.0))
    observer = Observer(store, None)
    observer.put([Event("sub-9", "train", "PENDING", "QUEUED", 2.0, 0, "")])
    assert observer.drain(10)
    [line] = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert (line["level"], line["logger"]) == ("ERROR", "fabric.actors.observe")
    assert (line["submission_id"], line["node_id"]) == ("sub-9", "train") and "exc" in line
