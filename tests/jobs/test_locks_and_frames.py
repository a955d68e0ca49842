"""Per-app locks across processes, and the demultiplexing of Docker's exec stream."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
import threading

import pytest

from sidecar.docker.execs import _frames, _tail
from sidecar.errors import AppBusy
from sidecar.jobs.locks import AppLock


def test_app_lock_excludes_another_process_and_names_the_holder(tmp_path):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import sys, time
                from pathlib import Path
                from sidecar.jobs.locks import AppLock
                lock = AppLock(Path({str(tmp_path)!r}), "blog/1", "backup").acquire()
                print("held", flush=True)
                sys.stdin.readline()
                """
            ),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(AppBusy, match=r"app blog/1 is busy \(backup by pid \d+\)"):
            AppLock(tmp_path, "blog/1", "restore", wait=0.3).acquire()
        with AppLock(tmp_path, "other", "backup"):  # other apps are not affected
            pass
    finally:
        holder.stdin.close()
        holder.wait(10)
    # the holder is gone: the lock is free again, without any clean-up
    with AppLock(tmp_path, "blog/1", "restore"), pytest.raises(AppBusy):
        AppLock(tmp_path, "blog/1", "backup").acquire()


def _frame(stream: int, payload: bytes) -> bytes:
    return bytes([stream, 0, 0, 0]) + len(payload).to_bytes(4, "big") + payload


def test_exec_stream_frames_are_split_whatever_the_read_sizes():
    a, b = socket.socketpair()
    payloads = [(1, b"hello\n"), (2, b"oops\n"), (1, b"x" * 200_000), (1, b"")]
    data = b"".join(_frame(s, p) for s, p in payloads)

    def send() -> None:
        for i in range(0, len(data), 7):  # dribble it in tiny pieces
            a.sendall(data[i : i + 7])
        a.close()

    threading.Thread(target=send).start()
    got = list(_frames(b))
    b.close()
    assert got == payloads


def test_output_tail_keeps_the_end():
    assert _tail(b"  short \n") == "short"
    long = b"a" * 10_000 + b"THE END"
    text = _tail(long)
    assert text.startswith("...") and text.endswith("THE END") and len(text) <= 4096 + 3


def test_exec_stream_that_stays_open_after_its_process_exited_ends():
    """Docker sometimes keeps an exec's stream open after the process is gone: two quiet
    seconds after `finished()` says so, the frames end instead of waiting forever."""
    a, b = socket.socketpair()
    a.sendall(_frame(1, b"PONG\n"))  # then nothing, and the socket is never closed
    done = {"flag": False}
    threading.Timer(0.5, lambda: done.update(flag=True)).start()
    got = list(_frames(b, lambda: done["flag"]))
    assert got == [(1, b"PONG\n")]
    a.close()
    b.close()
