"""A node's log: fds 1 and 2 captured (subprocesses too), shipped in ordered chunks while it runs."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest

from fabric.execute.logcapture import CaptureStream, LogCapture

pytestmark = pytest.mark.timeout(30)


class Collector:
    def __init__(self) -> None:
        self.parts: dict[int, bytes] = {}
        self.times: list[float] = []
        self.lock = threading.Lock()

    def __call__(self, offset: int, data: bytes) -> None:
        with self.lock:
            assert offset not in self.parts
            self.parts[offset] = data
            self.times.append(time.monotonic())

    def text(self) -> str:
        out = b""
        for offset in sorted(self.parts):
            assert offset == len(out), "a gap or an overlap between chunks"
            out += self.parts[offset]
        return out.decode()


def test_fd_output_of_a_subprocess_and_python_writes_are_all_captured_then_fds_come_back(capfd) -> None:
    ship = Collector()
    capture = LogCapture(ship, interval=0.1).start()
    stream = CaptureStream(capture)
    stream.write("from python\n")
    subprocess.run(["sh", "-c", "echo from-a-child; echo child-err >&2"], check=True)
    import os

    os.write(1, b"raw fd 1\n")
    capture.stop()
    text = ship.text()
    assert "from python\n" in text and "from-a-child\n" in text and "child-err\n" in text and "raw fd 1\n" in text
    assert capture.total == len(text.encode())
    os.write(1, b"after\n")
    assert "after" in capfd.readouterr().out  # fd 1 is the test's again
    assert "after" not in ship.text()


def test_a_large_log_arrives_whole_in_chunks_and_only_the_tail_stays_in_memory() -> None:
    ship = Collector()
    capture = LogCapture(ship, fds=(), chunk=4096, interval=0.05, tail_bytes=1000).start()
    lines = [f"line {i:06d} " + "x" * 80 + "\n" for i in range(3000)]  # ~270 KB
    for line in lines:
        capture.write(line)
    capture.stop()
    assert ship.text() == "".join(lines)
    assert len(ship.parts) > 1
    assert capture.tail() == "".join(lines).encode()[-1000:].decode()


def test_chunks_leave_while_the_writer_still_runs() -> None:
    ship = Collector()
    capture = LogCapture(ship, fds=(), interval=0.1).start()
    capture.write("early\n")
    deadline = time.monotonic() + 5
    while not ship.parts and time.monotonic() < deadline:
        time.sleep(0.02)
    assert ship.text() == "early\n", "the first line was not shipped before the attempt ended"
    capture.write("late\n")
    capture.stop()
    assert ship.text() == "early\nlate\n"


def test_a_failing_shipper_never_fails_the_node_and_the_tail_is_kept() -> None:
    def broken(offset: int, data: bytes) -> None:
        raise ConnectionError("head gone")

    capture = LogCapture(broken, fds=(), interval=0.01).start()
    capture.write("still here\n")
    capture.stop()
    assert capture.ship_errors >= 1 and capture.tail() == "still here\n"


def test_python_stdout_swap_works_with_print() -> None:
    ship = Collector()
    capture = LogCapture(ship, fds=()).start()
    saved = sys.stdout
    sys.stdout = CaptureStream(capture)
    try:
        print("printed", 42)
    finally:
        sys.stdout = saved
    capture.stop()
    assert ship.text() == "printed 42\n"


def test_megabytes_on_fd_1_arrive_whole_in_order_with_python_writes_between() -> None:
    import os

    ship = Collector()
    capture = LogCapture(ship, interval=0.05).start()
    stream = CaptureStream(capture)
    expected = []
    for i in range(40):  # ~3.2 MB through the fd, more than the release threshold, with Python lines between
        block = f"{i:03d}".encode() * 27_000 + b"\n"
        os.write(1, block)
        stream.write(f"python {i}\n")
        expected += [block.decode(), f"python {i}\n"]
    capture.stop()
    assert ship.text() == "".join(expected)
    assert capture.total == len("".join(expected))


def test_attempts_after_the_first_start_no_thread_of_their_own() -> None:
    LogCapture(Collector()).start().stop()  # the process's pump thread, once
    before = threading.active_count()
    for _ in range(20):
        ship = Collector()
        capture = LogCapture(ship).start()
        CaptureStream(capture).write("x\n")
        capture.stop()
        assert ship.text() == "x\n"
    assert threading.active_count() == before
