"""Per-app locks: one backup or restore of an app at a time, across threads and processes.

An `flock` on `<data dir>/locks/app-<id>.lock`; the kernel drops it when the
holder dies, so a crashed job never leaves an app locked.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import time
from pathlib import Path

from sidecar.errors import AppBusy


def _file_name(app_id: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", app_id)[:64]
    digest = hashlib.sha256(app_id.encode("utf-8", "surrogateescape")).hexdigest()[:8]
    return f"app-{safe}-{digest}.lock"


class AppLock:
    def __init__(self, lock_dir: Path, app_id: str, operation: str, wait: float = 0.0) -> None:
        self.app_id = app_id
        self.operation = operation
        self.wait = wait
        lock_dir.mkdir(parents=True, exist_ok=True)
        self.path = lock_dir / _file_name(app_id)
        self._fd: int | None = None

    def acquire(self) -> AppLock:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        deadline = time.monotonic() + self.wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "another job"
                    os.close(fd)
                    raise AppBusy(f"app {self.app_id} is busy ({holder}); try again when it has finished") from None
                time.sleep(0.2)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{self.operation} by pid {os.getpid()}".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.ftruncate(fd, 0)
            os.close(fd)

    def __enter__(self) -> AppLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
