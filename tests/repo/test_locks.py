"""Repository locks (sidecar/repo/locks.py): shared/exclusive, staleness, waiting, refresh."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from sidecar.errors import RepositoryLocked
from sidecar.repo.backends.local import LocalBackend
from sidecar.repo.codec import Codec
from sidecar.repo.crypto import MasterKey
from sidecar.repo.locks import (
    EXCLUSIVE,
    SHARED,
    STALE_AFTER,
    LockInfo,
    RepositoryLock,
    acquire_lock,
    read_locks,
    remove_stale_locks,
)
from sidecar.repo.snapshot import format_time

T0 = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def backend(tmp_path: Path) -> LocalBackend:
    return LocalBackend(tmp_path / "repo")


@pytest.fixture
def codec() -> Codec:
    return Codec(MasterKey.generate())


@pytest.fixture
def take(backend, codec):
    """acquire_lock that releases whatever it got at the end of the test."""
    held: list[RepositoryLock] = []

    def acquire(kind: str, operation: str, wait: float = 0.0, **kw) -> RepositoryLock:
        lock = acquire_lock(backend, codec, kind, operation, wait, **kw)
        held.append(lock)
        return lock

    yield acquire
    for lock in held:
        lock.release()


def lock_names(backend: LocalBackend) -> list[str]:
    return [name for name, _ in backend.list("locks/")]


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    assert not os.path.exists(f"/proc/{proc.pid}")
    return proc.pid


def own_process_start() -> str:
    with open(f"/proc/{os.getpid()}/stat", "rb") as f:
        return f.read().rsplit(b")", 1)[1].split()[19].decode()


def write_lock(
    backend: LocalBackend,
    codec: Codec,
    *,
    kind: str = EXCLUSIVE,
    operation: str = "prune",
    hostname: str | None = None,
    pid: int | None = None,
    process_start: str | None = None,
    refreshed: datetime | None = None,
) -> str:
    """A lock document written the way locks.py writes one."""
    refreshed = refreshed or datetime.now(UTC)
    doc = {
        "kind": kind,
        "operation": operation,
        "hostname": socket.gethostname() if hostname is None else hostname,
        "pid": os.getpid() if pid is None else pid,
        "process_start": process_start,
        "username": "someone",
        "created": format_time(refreshed - timedelta(minutes=1)),
        "refreshed": format_time(refreshed),
    }
    sealed = codec.encode_json(doc)
    name = f"locks/{hashlib.sha256(sealed).hexdigest()}"
    backend.put(name, sealed)
    return name


# ---- compatibility of kinds ------------------------------------------------------------


def test_two_shared_locks_coexist(backend, codec, take):
    a = take(SHARED, "backup")
    b = take(SHARED, "restore")
    assert len(lock_names(backend)) == 2
    infos = read_locks(backend, codec)
    assert sorted(i.operation for i in infos) == ["backup", "restore"]
    assert all(i.kind == SHARED and i.pid == os.getpid() for i in infos)
    a.release()
    b.release()
    assert lock_names(backend) == []


@pytest.mark.parametrize(
    "held_kind,held_op,wanted_kind,wanted_op",
    [
        (SHARED, "backup", EXCLUSIVE, "prune"),
        (EXCLUSIVE, "prune", SHARED, "backup"),
        (EXCLUSIVE, "prune", EXCLUSIVE, "prune"),
    ],
)
def test_conflicting_lock_is_refused(backend, take, held_kind, held_op, wanted_kind, wanted_op):
    holder = take(held_kind, held_op)
    with pytest.raises(RepositoryLocked) as info:
        take(wanted_kind, wanted_op, wait=0)
    message = str(info.value)
    assert f"{held_kind} lock for {held_op}" in message
    assert f"pid {os.getpid()}" in message
    assert backend.location in message
    # the refused attempt leaves nothing behind
    assert lock_names(backend) == [holder._name]


def test_release_lets_the_other_kind_in(backend, take):
    with take(SHARED, "backup"):
        pass
    assert lock_names(backend) == []
    exclusive = take(EXCLUSIVE, "prune")
    assert lock_names(backend) == [exclusive._name]


def test_lock_document_describes_the_holder(backend, codec, take):
    before = datetime.now(UTC) - timedelta(seconds=1)
    take(EXCLUSIVE, "prune")
    (info,) = read_locks(backend, codec)
    assert isinstance(info, LockInfo)
    assert (info.kind, info.operation, info.pid) == (EXCLUSIVE, "prune", os.getpid())
    assert info.hostname == socket.gethostname()
    assert info.process_start == own_process_start()
    assert before <= info.created <= info.refreshed <= datetime.now(UTC) + timedelta(seconds=1)
    assert not info.stale(datetime.now(UTC))


# ---- staleness -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "age,stale",
    [
        (timedelta(0), False),
        (timedelta(minutes=29), False),
        (STALE_AFTER, False),
        (STALE_AFTER + timedelta(seconds=1), True),
        (timedelta(days=3), True),
    ],
)
def test_lock_not_refreshed_for_30_minutes_is_stale(backend, take, age, stale):
    take(SHARED, "backup", clock=lambda: T0)  # a live holder (this process) with an old clock
    if stale:
        lock = take(EXCLUSIVE, "prune", clock=lambda: T0 + age)
        assert lock._name in lock_names(backend)
        assert len(lock_names(backend)) == 2  # the stale lock is ignored, not removed
    else:
        with pytest.raises(RepositoryLocked, match="backup"):
            take(EXCLUSIVE, "prune", clock=lambda: T0 + age)


@pytest.mark.parametrize(
    "describe,fields,stale",
    [
        ("this host, dead pid", lambda: {"pid": dead_pid(), "process_start": "12345"}, True),
        ("this host, dead pid, no start time", lambda: {"pid": dead_pid()}, True),
        ("this host, pid reused by another process", lambda: {"process_start": "1"}, True),
        ("this host, live pid, same process", lambda: {"process_start": own_process_start()}, False),
        ("this host, live pid, start unknown", lambda: {}, False),
        ("other host, dead pid", lambda: {"hostname": "elsewhere.example", "pid": dead_pid()}, False),
        (
            "other host, not refreshed for an hour",
            lambda: {"hostname": "elsewhere.example", "refreshed": datetime.now(UTC) - timedelta(hours=1)},
            True,
        ),
    ],
)
def test_staleness_of_a_written_lock(backend, codec, take, describe, fields, stale):
    name = write_lock(backend, codec, kind=EXCLUSIVE, operation="prune", **fields())
    (info,) = read_locks(backend, codec)
    assert info.stale(datetime.now(UTC)) == stale
    if stale:
        take(SHARED, "backup")
        assert name in lock_names(backend)
    else:
        with pytest.raises(RepositoryLocked, match="exclusive lock for prune"):
            take(SHARED, "backup")
        assert lock_names(backend) == [name]


# ---- waiting ---------------------------------------------------------------------------


def test_wait_retries_after_sleep(backend, take):
    holder = take(SHARED, "backup")
    naps: list[float] = []

    def sleep(seconds: float) -> None:
        naps.append(seconds)
        holder.release()  # the holder finishes while we wait

    lock = take(EXCLUSIVE, "prune", wait=10, sleep=sleep)
    assert len(naps) == 1
    assert 0 < naps[0] <= 10
    assert lock_names(backend) == [lock._name]


def test_wait_succeeds_when_a_thread_releases(backend, take):
    holder = take(EXCLUSIVE, "prune")
    releaser = threading.Timer(0.2, holder.release)
    releaser.start()
    started = time.monotonic()
    try:
        lock = take(SHARED, "backup", wait=5, sleep=lambda s: time.sleep(min(s, 0.05)))
    finally:
        releaser.join()
    assert 0.15 <= time.monotonic() - started < 3
    assert lock_names(backend) == [lock._name]


def test_wait_gives_up_after_the_deadline(backend, take):
    holder = take(SHARED, "backup")
    naps: list[float] = []

    def sleep(seconds: float) -> None:
        naps.append(seconds)
        time.sleep(min(seconds, 0.05))

    started = time.monotonic()
    with pytest.raises(RepositoryLocked, match="shared lock for backup"):
        take(EXCLUSIVE, "prune", wait=0.3, sleep=sleep)
    assert 0.3 <= time.monotonic() - started < 2
    assert naps and all(0 <= s <= 0.3 for s in naps)
    assert lock_names(backend) == [holder._name]


# ---- refresh and loss ------------------------------------------------------------------


def test_refresh_replaces_the_object(backend, codec, take):
    times = iter([T0, T0, T0 + timedelta(minutes=5), T0 + timedelta(minutes=10)])
    lock = take(SHARED, "backup", clock=lambda: next(times))
    first = lock._name
    assert lock_names(backend) == [first]
    lock.refresh()
    second = lock._name
    assert second != first
    assert lock_names(backend) == [second]
    (info,) = read_locks(backend, codec)
    assert info.created == T0
    assert info.refreshed == T0 + timedelta(minutes=5)
    lock.check()  # not lost


def test_refresher_thread_refreshes(backend, take):
    lock = take(SHARED, "backup", refresh_every=0.02)
    first = lock._name
    deadline = time.monotonic() + 3
    while lock._name == first and time.monotonic() < deadline:
        time.sleep(0.01)
    assert lock._name != first
    lock.release()
    assert lock_names(backend) == []


def test_check_raises_after_the_lock_was_removed(backend, take):
    lock = take(EXCLUSIVE, "prune")
    lock.check()
    backend.delete(lock._name)  # someone ran `unlock --remove-all`
    lock.check()  # nobody noticed yet
    lock.refresh()
    with pytest.raises(RepositoryLocked, match="lost"):
        lock.check()
    assert lock_names(backend) == []  # refresh does not bring it back
    lock.release()


def test_release_is_idempotent_and_refresh_after_release_does_nothing(backend, take):
    lock = take(SHARED, "backup")
    lock.release()
    lock.release()
    lock.refresh()
    assert lock_names(backend) == []


# ---- removing stale locks --------------------------------------------------------------


def test_remove_stale_locks_removes_only_stale_ones(backend, codec, take):
    live = take(SHARED, "backup")
    live_other_host = write_lock(backend, codec, kind=SHARED, hostname="elsewhere.example", pid=dead_pid())
    dead = write_lock(backend, codec, pid=dead_pid())
    old = write_lock(backend, codec, hostname="elsewhere.example", refreshed=datetime.now(UTC) - timedelta(hours=2))
    backend.put("locks/garbage", b"not a sealed lock")
    removed = remove_stale_locks(backend, codec)
    assert sorted(removed) == sorted([dead, old, "locks/garbage"])
    assert sorted(lock_names(backend)) == sorted([live._name, live_other_host])


def test_remove_stale_locks_with_an_injected_clock(backend, codec, take):
    lock = take(SHARED, "backup", clock=lambda: T0)
    assert remove_stale_locks(backend, codec, clock=lambda: T0 + timedelta(minutes=10)) == []
    assert remove_stale_locks(backend, codec, clock=lambda: T0 + timedelta(hours=1)) == [lock._name]
    lock.refresh()
    with pytest.raises(RepositoryLocked):
        lock.check()


def test_remove_all(backend, codec, take):
    take(SHARED, "backup")
    take(SHARED, "restore")
    write_lock(backend, codec, kind=SHARED, hostname="elsewhere.example")
    assert len(remove_stale_locks(backend, codec, remove_all=True)) == 3
    assert lock_names(backend) == []


@pytest.mark.parametrize(
    "content",
    [b"", b"junk", os.urandom(200), Codec(MasterKey.generate()).encode_json({"kind": "exclusive"})],
    ids=["empty", "short", "random", "other key"],
)
def test_unreadable_lock_blocks_exclusive_until_removed(backend, codec, take, content):
    backend.put("locks/garbage", content)
    (entry,) = read_locks(backend, codec)
    assert entry == "locks/garbage"
    with pytest.raises(RepositoryLocked, match="unreadable lock locks/garbage"):
        take(EXCLUSIVE, "prune")
    assert lock_names(backend) == ["locks/garbage"]
    assert remove_stale_locks(backend, codec) == ["locks/garbage"]
    lock = take(EXCLUSIVE, "prune")
    assert lock_names(backend) == [lock._name]


def test_lock_with_missing_fields_counts_as_unreadable(backend, codec):
    sealed = codec.encode_json({"kind": SHARED, "operation": "backup"})
    backend.put("locks/partial", sealed)
    assert read_locks(backend, codec) == ["locks/partial"]
