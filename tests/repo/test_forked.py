"""A forked child's items come back whole, in order, or not at all (None)."""

from __future__ import annotations

import os
import time

import pytest

from sidecar.repo import forked
from sidecar.repo.forked import Forked, read_frames, write_frames


def frames_of(items) -> bytes:
    fd = os.memfd_create("test")
    try:
        write_frames(fd, items)
        os.lseek(fd, 0, os.SEEK_SET)
        with open(fd, "rb", closefd=False) as f:
            return f.read()
    finally:
        os.close(fd)


def test_frames_round_trip_and_anything_short_or_garbled_is_refused():
    items = [(0, b"x" * 3_000_000, 5, 7), (1, b"rel", b"/path", None), (2, b"a", "cannot stat")] * 3
    data = frames_of(items)
    assert read_frames(data) == items
    assert read_frames(frames_of([])) == []
    for cut in (1, 8, 9, len(data) // 2, len(data) - 9, len(data) - 1):
        assert read_frames(data[:cut]) is None, cut  # a child that died while writing
    garbled = bytearray(data)
    garbled[8] = 0xFF  # the first pickle's first opcode (payload bytes are not checked: the file is in memory)
    assert read_frames(bytes(garbled)) is None
    assert read_frames(data[:-8] + (len(items) + 1).to_bytes(8, "little")) is None  # the end mark disagrees
    assert read_frames(data + b"\0") is None


def test_a_child_gives_what_it_yields_in_order():
    def work():
        for i in range(20_000):
            yield (i, b"%d" % i * 10)

    child = Forked(work)
    try:
        items = child.result()
    finally:
        child.close()
    assert items == [(i, b"%d" % i * 10) for i in range(20_000)]


@pytest.mark.parametrize("how", ["raises", "killed", "exits"])
def test_a_child_that_fails_midway_gives_none(how):
    def work():
        yield "first"
        if how == "raises":
            raise RuntimeError("the child fails")
        if how == "killed":
            os.kill(os.getpid(), 9)
        os._exit(0)  # ends without its end mark

    child = Forked(work)
    try:
        assert child.result() is None
    finally:
        child.close()


def test_close_stops_a_running_child_and_reaps_it():
    def work():
        time.sleep(60)
        return []

    child = Forked(work)
    pid = child._pid
    t0 = time.monotonic()
    child.close()
    assert time.monotonic() - t0 < 10
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # reaped: no zombie left
    assert child.result() is None


def test_without_memfd_a_temporary_file_serves(monkeypatch):
    monkeypatch.delattr(os, "memfd_create")
    fd = forked._shared_file()
    os.close(fd)
    child = Forked(lambda: [1, 2, 3])
    try:
        assert child.result() == [1, 2, 3]
    finally:
        child.close()
