"""The head's sink: writes land only inside a node's own space, in any order, whole or not at all."""

from __future__ import annotations

from pathlib import Path

import pytest

from fabric.capability import KEY_FILE, attempt_grant, read_key
from fabric.errors import ErrorCode, FabricError
from fabric.execute.headsink import HeadSink, chunks, full_logs, log_file

pytestmark = pytest.mark.timeout(30)


def grant(sink: HeadSink, submission_id: str, node_id: str, attempt: object) -> str:
    """The grant the engine gives this attempt (the sink's home holds the key it was made from)."""
    return attempt_grant(read_key(Path(sink.home) / KEY_FILE) or b"", submission_id, node_id, attempt)  # type: ignore[arg-type]


def test_chunks_cover_the_data_in_order_and_empty_data_is_one_empty_piece() -> None:
    data = bytes(range(256)) * 41
    pieces = list(chunks(data, 1000))
    assert [offset for offset, _ in pieces] == list(range(0, len(data), 1000))
    assert b"".join(piece for _, piece in pieces) == data and max(len(p) for _, p in pieces) == 1000
    assert list(chunks(b"")) == [(0, b"")]


def test_files_arrive_in_any_order_and_appear_only_when_committed(tmp_path: Path) -> None:
    sink = HeadSink(str(tmp_path / "home"), str(tmp_path / "art"))
    data = b"abcdefghij" * 100
    pieces = list(chunks(data, 64))
    for offset, piece in reversed(pieces):
        sink.put_chunk("sub-1", "report", 1, grant(sink, "sub-1", "report", 1), "files/out/metrics.json", offset, piece)
    final = tmp_path / "art/sub-1/report/files/out/metrics.json"
    assert not final.exists()
    sink.commit("sub-1", "report", 1, grant(sink, "sub-1", "report", 1), "files/out/metrics.json", len(data))
    assert final.read_bytes() == data
    mine = grant(sink, "sub-1", "report", 1)
    sink.commit("sub-1", "report", 1, mine, "files/out/metrics.json", len(data))  # a retried commit is fine
    sink.commit("sub-1", "report", 1, grant(sink, "sub-1", "report", 1), "outputs/empty.arrow", 0)
    assert (tmp_path / "art/sub-1/report/outputs/empty.arrow").read_bytes() == b""


def test_a_short_file_is_never_committed(tmp_path: Path) -> None:
    sink = HeadSink(str(tmp_path / "home"), str(tmp_path / "art"))
    sink.put_chunk("s1", "n", 1, grant(sink, "s1", "n", 1), "files/a.txt", 0, b"abc")
    with pytest.raises(FabricError, match="3 bytes arrived, 10 were sent"):
        sink.commit("s1", "n", 1, grant(sink, "s1", "n", 1), "files/a.txt", 10)
    assert not (tmp_path / "art/s1/n/files/a.txt").exists()


@pytest.mark.parametrize(("sub", "node", "name"), [
    ("s1", "n", "../../etc/passwd"), ("s1", "n", "files/../../x"), ("s1", "n", "/abs"),
    ("s1", "n", "logs/x"), ("s1", "n", "files"), ("../s", "n", "files/x"), ("s1", "a/b", "files/x"),
    ("s1", "n", "files/a\0b"), ("s1", "n", "files/.."),
])
def test_names_outside_the_nodes_space_are_refused(tmp_path: Path, sub: str, node: str, name: str) -> None:
    sink = HeadSink(str(tmp_path / "home"), str(tmp_path / "art"))
    with pytest.raises(FabricError):
        sink.put_chunk(sub, node, 1, grant(sink, sub, node, 1), name, 0, b"x")
    assert not list(tmp_path.rglob("x")) and not (tmp_path / "etc").exists()


def test_bad_attempts_offsets_and_oversized_chunks_are_refused(tmp_path: Path) -> None:
    sink = HeadSink(str(tmp_path / "home"), str(tmp_path / "art"))
    for attempt, offset, data in [(0, 0, b"x"), (True, 0, b"x"), (1, -1, b"x"), (1, 0, b"x" * ((8 << 20) + 1))]:
        with pytest.raises(FabricError):
            sink.append_log("s1", "n", attempt, grant(sink, "s1", "n", attempt), offset, data)  # type: ignore[arg-type]


def test_a_uri_root_takes_only_logs(tmp_path: Path) -> None:
    sink = HeadSink(str(tmp_path / "home"), "s3://bucket/art")
    sink.append_log("s1", "n", 1, grant(sink, "s1", "n", 1), 0, b"hello\n")
    with pytest.raises(FabricError, match="URI"):
        sink.put_chunk("s1", "n", 1, grant(sink, "s1", "n", 1), "files/a", 0, b"x")


def test_full_logs_read_the_head_file_for_stored_and_running_attempts(tmp_path: Path) -> None:
    home = str(tmp_path)
    sink = HeadSink(home, str(tmp_path / "art"))
    big = "".join(f"{i}\n" for i in range(50_000))  # over 64 KiB
    for offset, piece in reversed(list(chunks(big.encode(), 10_000))):
        sink.append_log("s1", "n", 1, grant(sink, "s1", "n", 1), offset, piece)
    sink.append_log("s1", "n", 2, grant(sink, "s1", "n", 2), 0, b"running...\n")
    stored = [(1, big[-100:], str(log_file(home, "s1", "n", 1)))]
    logs = full_logs(home, "s1", "n", stored)
    assert [(a, t) for a, t, _ in logs] == [(1, big), (2, "running...\n")]
    assert full_logs(home, "s1", "other", [(1, "tail", None)]) == [(1, "tail", None)]


def test_a_write_without_its_attempts_grant_is_refused(tmp_path: Path) -> None:
    """Tenant code holds only its own attempt's grant: it cannot write another attempt's log or files."""
    sink = HeadSink(str(tmp_path / "home"), str(tmp_path / "art"))
    mine = grant(sink, "s1", "n", 1)
    sink.append_log("s1", "n", 1, mine, 0, b"mine\n")
    for call in (lambda: sink.append_log("s2", "n", 1, mine, 0, b"forged\n"),
                 lambda: sink.append_log("s1", "n", 2, mine, 0, b"forged\n"),
                 lambda: sink.put_chunk("s1", "other", 1, mine, "files/x", 0, b"x"),
                 lambda: sink.commit("s1", "n", 1, "", "files/x", 1),
                 lambda: sink.append_log("s1", "n", 1, None, 0, b"x")):  # type: ignore[arg-type]
        with pytest.raises(FabricError) as caught:
            call()
        assert caught.value.code == ErrorCode.FORBIDDEN
    assert not (tmp_path / "home/logs/s2").exists() and not list((tmp_path / "art").rglob("x"))
    assert log_file(str(tmp_path / "home"), "s1", "n", 1).read_bytes() == b"mine\n"
    assert (tmp_path / "home" / KEY_FILE).stat().st_mode & 0o777 == 0o600
