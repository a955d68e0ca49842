"""Work done in a forked child process, its result read back through a pipe.

An unchanged tree's comparison with its parent listing is Python work, one core's
worth; `_TreeScan` hands the second half of the tree to a child made by `fork()`
(it inherits the loaded index and the parent listing without copying them). The
child only walks, compares and pickles: it takes no lock, logs nothing and leaves
with `os._exit`. Any failure of the child (an exception, a signal, a short or
garbled result) gives `None`, and the caller does that half itself.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import threading
from collections.abc import Callable
from typing import Any


def available() -> bool:
    """Whether a child can run beside this process: fork exists and two CPUs are ours."""
    if not hasattr(os, "fork"):
        return False
    try:
        return len(os.sched_getaffinity(0)) >= 2
    except AttributeError:
        return (os.cpu_count() or 1) >= 2


class Forked:
    """Runs `work()` in a forked child now; `result()` is its return value, or None."""

    def __init__(self, work: Callable[[], Any]) -> None:
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child
            code = 1
            try:
                os.close(read_fd)
                data = pickle.dumps(work(), protocol=pickle.HIGHEST_PROTOCOL)
                with open(write_fd, "wb") as out:
                    out.write(len(data).to_bytes(8, "little"))
                    out.write(data)
                code = 0
            finally:
                os._exit(code)
        os.close(write_fd)
        self._pid: int | None = pid
        self._chunks: list[bytes] = []
        # the pipe is drained while the caller works, so the child never waits for it
        self._reader = threading.Thread(target=self._read, args=(read_fd,), name="forked-reader", daemon=True)
        self._reader.start()

    def _read(self, fd: int) -> None:
        with open(fd, "rb") as pipe:
            while chunk := pipe.read(1 << 20):
                self._chunks.append(chunk)

    def result(self) -> Any | None:
        """Wait for the child; its result, or None when it failed."""
        self._reader.join()
        status = self._reap(kill=False)
        data = b"".join(self._chunks)
        self._chunks = []
        if status != 0 or len(data) < 8 or int.from_bytes(data[:8], "little") != len(data) - 8:
            return None
        try:
            return pickle.loads(memoryview(data)[8:])
        except Exception:  # a garbled result: a failed child
            return None

    def close(self) -> None:
        """Stop a child that is still running (the caller failed or was cancelled)."""
        self._reap(kill=True)
        self._reader.join()

    def _reap(self, kill: bool) -> int | None:
        pid, self._pid = self._pid, None
        if pid is None:
            return None
        if kill:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        return status
