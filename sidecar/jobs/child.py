"""A job (backup, restore, verification, prune) in a process of its own.

`serve` answers API requests in its own process; a job's scan and listing
work is Python and would hold that process's GIL for seconds at a time, so
each job runs in a child: `python -m sidecar.jobs.child <fd>`, given the job
over a socket pair (pickled: the app, the options, and the repository's
master key, never through arguments or the environment). The child reports
progress (at most every 0.25 s) and then its result or its `BackupError`;
the parent keeps all catalog and metrics bookkeeping. The child runs at
`BACKUP_JOB_NICE` (serve: 10) and dies with its parent (PR_SET_PDEATHSIG),
as an in-process job would.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from sidecar.errors import BackupError
from sidecar.repo.workerproc import _worker_env

PROGRESS_EVERY = 0.25


@dataclass(frozen=True)
class ChildSpec:
    """What a child needs to open the repository."""

    repository: str
    master: dict[str, str]  # MasterKey.export()
    compression_level: int
    state_dir: str
    volume_access: str = "auto"


def run_in_child(spec: ChildSpec, kind: str, args: dict[str, Any], progress: Any) -> Any:
    """Run job `kind` with `args` in a child process; returns its result or raises its error.
    `progress` gets `add(files, nbytes)` and `(phase, done, total)` calls."""
    parent, child = socket.socketpair()
    with child:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sidecar.jobs.child", str(child.fileno()), str(os.getpid())],
            pass_fds=(child.fileno(),),
            stdin=subprocess.DEVNULL,
            env=_worker_env(),
        )
    conn = Connection(parent.detach())
    try:
        from sidecar.logs import app_id_var, job_id_var

        conn.send((spec, kind, args, job_id_var.get(), app_id_var.get()))
        while True:
            try:
                msg = conn.recv()
            except (EOFError, OSError):
                code = proc.wait()
                raise BackupError(f"the job's process ended unexpectedly (exit status {code})") from None
            if msg[0] == "add":
                progress.add(msg[1], msg[2])
            elif msg[0] == "phase":
                progress(msg[1], msg[2], msg[3])
            elif msg[0] == "done":
                return msg[1]
            elif msg[0] == "error":
                raise msg[1]
    finally:
        conn.close()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class _Relay:
    """The child's side of progress: batched, sent at most every PROGRESS_EVERY seconds."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._files = 0
        self._bytes = 0
        self._sent = 0.0

    def add(self, files: int, nbytes: int) -> None:
        self._files += files
        self._bytes += nbytes
        now = time.monotonic()
        if now - self._sent >= PROGRESS_EVERY:
            self._sent = now
            self._conn.send(("add", self._files, self._bytes))
            self._files = self._bytes = 0

    def __call__(self, phase: str, done: int, total: int) -> None:
        self._conn.send(("phase", phase, done, total))

    def flush(self) -> None:
        """What `add` has not sent yet (the end of a backup)."""
        if self._files or self._bytes:
            self._conn.send(("add", self._files, self._bytes))
            self._files = self._bytes = 0


def _die_with_parent(parent: int) -> None:
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    # the parent died before that took effect (compared with its pid: in a container the
    # parent, `serve`, is often pid 1 itself)
    if os.getppid() != parent:
        os._exit(1)


def _run(spec: ChildSpec, kind: str, args: dict[str, Any], relay: _Relay) -> Any:
    from sidecar.repo.backends.base import open_backend
    from sidecar.repo.crypto import MasterKey
    from sidecar.repo.repository import Repository

    master = MasterKey.from_export(spec.master)
    repo = Repository.open(open_backend(spec.repository), master=master, compression_level=spec.compression_level)
    if kind == "verify":
        from sidecar.jobs.verify import verify_snapshot

        verify_snapshot(repo, repo.load_snapshot(args["snapshot_id"]), read_data=True)
        return None
    if kind == "check":
        from sidecar.repo.check import check_repository, summary

        relay("checking", 0, 0)
        with repo.lock("shared", "check", 600):
            return summary(check_repository(repo, args["read_data_percent"]).to_json())
    if kind == "prune":
        from sidecar.repo.prune import prune_repository

        relay("pruning", 0, 0)
        return prune_repository(repo, lock_wait=3600).to_json()
    from sidecar.docker.client import connect
    from sidecar.docker.volumes import VolumeAccess
    from sidecar.jobs.backup import JobContext

    client = connect()
    ctx = JobContext(client, repo, Path(spec.state_dir), VolumeAccess(client, spec.volume_access))
    if kind == "backup":
        from sidecar.jobs.backup import backup_app

        return backup_app(ctx, args.pop("app"), progress=relay, **args)
    if kind == "restore":
        from sidecar.jobs.restore import restore_app

        return restore_app(ctx, args["app"], repo.load_snapshot(args["snapshot_id"]), args["options"], relay)
    raise BackupError(f"unknown job kind {kind!r}")


def child_main(conn: Connection, parent: int) -> None:
    import logging

    from sidecar import logs

    _die_with_parent(parent)
    logs.setup(logging.INFO)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides
    nice = os.environ.get("BACKUP_JOB_NICE", "")
    if nice.isdigit() and 0 < int(nice) <= 19:
        os.nice(int(nice))
    spec, kind, args, job_id, app_id = conn.recv()
    try:
        with logs.job_context(job_id, app_id):
            relay = _Relay(conn)
            result = _run(spec, kind, args, relay)
            relay.flush()
    except BackupError as exc:
        conn.send(("error", exc))
    except BaseException as exc:  # as the message only: a traceback could hold anything
        conn.send(("error", BackupError(f"{type(exc).__name__}: {exc}")))
    else:
        conn.send(("done", result))


if __name__ == "__main__":
    child_main(Connection(int(sys.argv[1])), int(sys.argv[2]))
