"""Repository locks: shared (backup, restore, check) or exclusive (prune).

A lock is a sealed object `locks/<id>`. A holder refreshes it every few
minutes (a new object, then the old one is deleted); a lock not refreshed for
30 minutes, or whose process on this host is gone, is stale and ignored.
"""

from __future__ import annotations

import getpass
import hashlib
import logging
import os
import random
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sidecar.errors import BackupError, RepositoryLocked
from sidecar.repo.backends.base import Backend, ObjectNotFound
from sidecar.repo.codec import Codec
from sidecar.repo.snapshot import format_time, parse_time

log = logging.getLogger(__name__)

SHARED = "shared"
EXCLUSIVE = "exclusive"
STALE_AFTER = timedelta(minutes=30)
REFRESH_EVERY = 5 * 60.0


def _process_start(pid: int) -> str | None:
    """Start time of a process (clock ticks since boot): tells a reused pid apart."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[19].decode()
    except (OSError, IndexError):
        return None


@dataclass(frozen=True)
class LockInfo:
    name: str
    kind: str
    operation: str
    hostname: str
    pid: int
    process_start: str | None
    username: str
    created: datetime
    refreshed: datetime

    def stale(self, now: datetime) -> bool:
        if now - self.refreshed > STALE_AFTER:
            return True
        if self.hostname == socket.gethostname():
            start = _process_start(self.pid)
            return start is None or (self.process_start is not None and start != self.process_start)
        return False

    def describe(self) -> str:
        return (
            f"{self.kind} lock for {self.operation} by pid {self.pid} on {self.hostname}"
            f" since {format_time(self.created)}"
        )


def read_locks(backend: Backend, codec: Codec) -> list[LockInfo | str]:
    """Every lock; a name alone where the lock cannot be read."""
    out: list[LockInfo | str] = []
    for name, _size in backend.list("locks/"):
        try:
            doc = codec.decode_json(backend.get(name))
            out.append(
                LockInfo(
                    name,
                    doc["kind"],
                    doc["operation"],
                    doc["hostname"],
                    int(doc["pid"]),
                    doc.get("process_start"),
                    doc.get("username", ""),
                    parse_time(doc["created"]),
                    parse_time(doc["refreshed"]),
                )
            )
        except ObjectNotFound:
            continue  # released or refreshed while we listed
        except (BackupError, KeyError, TypeError, ValueError):
            out.append(name)  # damaged: treated as held until `unlock` removes it
    return out


class RepositoryLock:
    """A held lock. Use as a context manager or call `release()`."""

    def __init__(
        self,
        backend: Backend,
        codec: Codec,
        kind: str,
        operation: str,
        clock: Callable[[], datetime],
        refresh_every: float,
    ) -> None:
        self._backend = backend
        self._codec = codec
        self.kind = kind
        self.operation = operation
        self._clock = clock
        self._created = clock()
        self._name: str | None = None
        self._lost = False
        self._stop = threading.Event()
        self._mutex = threading.Lock()
        self._refresh_every = refresh_every
        self._thread: threading.Thread | None = None

    def _write(self) -> str:
        doc = {
            "kind": self.kind,
            "operation": self.operation,
            "hostname": socket.gethostname(),
            "pid": os.getpid(),
            "process_start": _process_start(os.getpid()),
            "username": getpass.getuser(),
            "created": format_time(self._created),
            "refreshed": format_time(self._clock()),
        }
        sealed = self._codec.encode_json(doc)
        name = f"locks/{hashlib.sha256(sealed).hexdigest()}"
        self._backend.put(name, sealed)
        return name

    def _start_refresher(self) -> None:
        self._thread = threading.Thread(target=self._refresh_loop, name="lock-refresh", daemon=True)
        self._thread.start()

    def _refresh_loop(self) -> None:
        while not self._stop.wait(self._refresh_every):
            self.refresh()

    def refresh(self) -> None:
        with self._mutex:
            old = self._name
            if old is None or self._stop.is_set():
                return
            if not self._backend.exists(old):
                self._lost = True
                log.error("repository lock %s was removed by someone else", old)
                return
            try:
                self._name = self._write()
                self._backend.delete(old)
            except Exception as exc:  # keep the old lock; the next refresh tries again
                log.warning("could not refresh repository lock: %s", exc)

    def check(self) -> None:
        """Raise if the lock was lost (deleted as stale by another process)."""
        if self._lost:
            raise RepositoryLocked("the repository lock was lost (removed by another process); giving up")

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        with self._mutex:
            if self._name is not None:
                try:
                    self._backend.delete(self._name)
                except Exception as exc:
                    log.warning("could not remove repository lock %s: %s", self._name, exc)
                self._name = None

    def __enter__(self) -> RepositoryLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def acquire_lock(
    backend: Backend,
    codec: Codec,
    kind: str,
    operation: str,
    wait: float = 0.0,
    *,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    refresh_every: float = REFRESH_EVERY,
    sleep: Callable[[float], None] = time.sleep,
) -> RepositoryLock:
    """Take a lock, waiting up to `wait` seconds for conflicting holders to finish."""
    deadline = time.monotonic() + wait
    lock = RepositoryLock(backend, codec, kind, operation, clock, refresh_every)
    while True:
        lock._name = lock._write()
        conflicts = []
        for other in read_locks(backend, codec):
            if isinstance(other, str):
                if other != lock._name:
                    conflicts.append(f"unreadable lock {other}")
                continue
            if other.name == lock._name or other.stale(clock()):
                continue
            if kind == EXCLUSIVE or other.kind == EXCLUSIVE:
                conflicts.append(other.describe())
        if not conflicts:
            lock._start_refresher()
            return lock
        backend.delete(lock._name)
        lock._name = None
        if time.monotonic() >= deadline:
            raise RepositoryLocked(
                f"repository {backend.location} is locked: {'; '.join(conflicts)}"
                " (wait for it to finish, or run `unlock` if that process is gone)"
            )
        sleep(min(max(0.0, deadline - time.monotonic()), random.uniform(0.5, 2.0)))


def remove_stale_locks(
    backend: Backend, codec: Codec, remove_all: bool = False, clock: Callable[[], datetime] = lambda: datetime.now(UTC)
) -> list[str]:
    removed = []
    for other in read_locks(backend, codec):
        name = other if isinstance(other, str) else other.name
        if remove_all or isinstance(other, str) or other.stale(clock()):
            backend.delete(name)
            removed.append(name)
    return removed
