"""Worker processes of the engine (store workers for backups, restore workers).

Python runs one thread at a time per process; the heavy parts of a backup or
restore run in one worker process per core. A worker is started with
`python -m <module> <socket fd>` (multiprocessing's spawn would re-import the
caller's main module) and talks pickled tuples over a socket pair. It gets the
master key over that socket, never through its arguments or environment.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
from multiprocessing.connection import Connection

import sidecar

_SECRETS = ("BACKUP_ENCRYPTION_KEY", "BACKUP_NEW_ENCRYPTION_KEY", "BACKUP_API_KEY")


def _worker_env() -> dict[str, str]:
    """Our environment without secrets, plus where this copy of `sidecar` lives
    (the parent may have found it through sys.path rather than an install)."""
    env = {k: v for k, v in os.environ.items() if k not in _SECRETS}
    here = os.path.dirname(os.path.dirname(os.path.abspath(sidecar.__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (here, env.get("PYTHONPATH")) if p)
    return env


def worker_count(requested: int | None = None, spare: int = 0) -> int:
    """`requested`, or one per core (at most 8) minus `spare` cores left to the parent."""
    if requested:
        return max(1, requested)
    return max(1, min(os.cpu_count() or 1, 8) - spare)


class WorkerProcess:
    def __init__(self, module: str) -> None:
        parent, child = socket.socketpair()
        with child:
            self.process = subprocess.Popen(
                [sys.executable, "-m", module, str(child.fileno())],
                pass_fds=(child.fileno(),),
                stdin=subprocess.DEVNULL,
                env=_worker_env(),
            )
        self.conn = Connection(parent.detach())
        self._send_lock = threading.Lock()

    def send(self, msg: tuple) -> None:
        with self._send_lock:
            self.conn.send(msg)

    def recv(self) -> tuple:
        return self.conn.recv()

    def hang_up(self) -> None:
        """Shut the socket down (not just close our descriptor, which a thread
        blocked in recv keeps alive): the worker sees end-of-file at once."""
        with contextlib.suppress(OSError):
            dup = socket.socket(fileno=os.dup(self.conn.fileno()))
            with dup:
                dup.shutdown(socket.SHUT_RDWR)
        self.conn.close()

    def wait(self, timeout: float = 15) -> None:
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
