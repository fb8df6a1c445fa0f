"""What happened: submission records, state-change events, logs, and status views."""

from fabric.record.sqlite import SqliteStore
from fabric.record.status import AttemptStatus, NodeStatus, SubmissionStatus
from fabric.record.store import Event, MemoryStore, Store, SubmissionRecord

__all__ = ["AttemptStatus", "Event", "MemoryStore", "NodeStatus", "SqliteStore", "Store", "SubmissionRecord",
           "SubmissionStatus"]
