"""Work done in a forked child process, its results read back from a shared file.

An unchanged tree's comparison with its parent listing is Python work, one core's
worth; `_TreeScan` hands the second half of the tree to a child made by `fork()`
(it inherits the loaded index and the parent listing without copying them). The
child only walks, compares and pickles: it takes no lock, logs nothing and leaves
with `os._exit`. Its items are written as they come, each a pickled frame, into an
anonymous in-memory file made before the fork, so they cost the child a memory copy
each and nothing is left to hand over when it ends (a pipe would need the parent's
attention, whose thread is busy with its own half meanwhile). Any failure of the
child (an exception, a signal, a short or garbled file) gives `None`, and the
caller does that half itself.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import pickle
import signal
import tempfile
from collections.abc import Callable, Iterable
from typing import Any

_LENGTH = 8  # bytes of a frame's length (little-endian), before each pickled item
_BUFFER = 1 << 20  # the child writes in pieces of about this much


def available() -> bool:
    """Whether a child can run beside this process: fork exists and two CPUs are ours."""
    if not hasattr(os, "fork"):
        return False
    try:
        return len(os.sched_getaffinity(0)) >= 2
    except AttributeError:
        return (os.cpu_count() or 1) >= 2


def _shared_file() -> int:
    """A file descriptor of an anonymous file (in memory where the system has memfd)."""
    if hasattr(os, "memfd_create"):
        return os.memfd_create("websoft9-backup-forked", os.MFD_CLOEXEC)
    with tempfile.TemporaryFile() as f:  # already unlinked: gone with its last descriptor
        return os.dup(f.fileno())


def write_frames(fd: int, items: Iterable[Any]) -> None:
    """Each item as a frame, then the frame count as the last 8 bytes (the end mark)."""
    count = 0
    with open(fd, "wb", buffering=_BUFFER, closefd=False) as out:
        for item in items:
            data = pickle.dumps(item, protocol=pickle.HIGHEST_PROTOCOL)
            out.write(len(data).to_bytes(_LENGTH, "little"))
            out.write(data)
            count += 1
        out.write(count.to_bytes(_LENGTH, "little"))


def read_frames(data: bytes | mmap.mmap) -> list[Any] | None:
    """The items `write_frames` wrote, or None when the data is short or garbled."""
    items: list[Any] = []
    at, end = 0, len(data) - _LENGTH
    if end < 0:
        return None
    with memoryview(data) as view:
        try:
            while at < end:
                size = int.from_bytes(view[at : at + _LENGTH], "little")
                at += _LENGTH
                if at + size > end:
                    return None
                with view[at : at + size] as frame:
                    items.append(pickle.loads(frame))
                at += size
        except Exception:  # a garbled frame: a failed child
            return None
        if at != end or int.from_bytes(view[end:], "little") != len(items):
            return None
    return items


class Forked:
    """Runs `work()` in a forked child now; `result()` is the list of the items it yields
    (or returns, as an iterable), or None."""

    def __init__(self, work: Callable[[], Iterable[Any]]) -> None:
        fd = _shared_file()
        try:
            pid = os.fork()
        except BaseException:
            os.close(fd)
            raise
        if pid == 0:  # the child
            code = 1
            try:
                write_frames(fd, work())
                code = 0
            finally:
                os._exit(code)
        self._fd: int | None = fd
        self._pid: int | None = pid

    def result(self) -> list[Any] | None:
        """Wait for the child; its items, or None when it failed."""
        status = self._reap(kill=False)
        fd, self._fd = self._fd, None
        if fd is None:
            return None
        try:
            size = os.fstat(fd).st_size
            if status != 0 or size == 0:  # (an empty file cannot be mapped)
                return None
            with mmap.mmap(fd, size, prot=mmap.PROT_READ) as data:  # read in place, not copied first
                return read_frames(data)
        finally:
            os.close(fd)

    def close(self) -> None:
        """Stop a child that is still running (the caller failed or was cancelled)."""
        self._reap(kill=True)
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def _reap(self, kill: bool) -> int | None:
        pid, self._pid = self._pid, None
        if pid is None:
            return None
        if kill:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        return status
