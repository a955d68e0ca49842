"""Jobs in a process of their own: results and errors come back, the key does not
travel through arguments or the environment, and a dying child is reported."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from sidecar.errors import BackupCorrupted, BackupError
from sidecar.jobs.child import ChildSpec, run_in_child
from sidecar.repo.backends.local import LocalBackend
from sidecar.repo.backup import BackupOptions, BackupSession
from sidecar.repo.repository import Repository

PASSPHRASE = b"child test passphrase"


class Progress:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def add(self, files: int, nbytes: int) -> None:
        self.calls.append(("add", files, nbytes))

    def __call__(self, phase: str, done: int, total: int) -> None:
        self.calls.append((phase, done, total))


@pytest.fixture
def made(tmp_path: Path):
    src = tmp_path / "src"
    src.mkdir()
    for n in range(40):
        (src / f"f{n}").write_bytes(os.urandom(1 << 20))
    repo = Repository.init(LocalBackend(tmp_path / "repo"), PASSPHRASE)
    with BackupSession(repo, BackupOptions(app_id="a")) as session:
        session.add_tree("data", str(src))
        snap = session.commit()
    spec = ChildSpec(str(tmp_path / "repo"), repo.key.export(), 3, str(tmp_path / "state"))
    return tmp_path / "repo", snap, spec


def _children() -> list[int]:
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == os.getpid() and b"sidecar.jobs.child" in cmdline:
            out.append(int(pid))
    return out


def test_a_verification_runs_in_a_child_and_errors_come_back(made):
    root, snap, spec = made
    assert run_in_child(spec, "verify", {"snapshot_id": snap.id}, Progress()) is None
    with pytest.raises(BackupError, match="unknown job kind"):
        run_in_child(spec, "dance", {}, Progress())
    pack = max((p for p in (root / "data").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    data = bytearray(pack.read_bytes())
    data[len(data) // 2] ^= 1
    pack.write_bytes(bytes(data))
    with pytest.raises(BackupCorrupted, match="cannot be restored"):
        run_in_child(spec, "verify", {"snapshot_id": snap.id}, Progress())


def test_a_repository_check_runs_in_a_child_and_reports_damage(made):
    """The dashboard's Verify: `check --read-data PERCENT` in a job process, its report back."""
    root, snap, spec = made
    report = run_in_child(spec, "check", {"read_data_percent": 100.0}, Progress())
    assert report["ok"] and report["packs_read"] == report["packs"] > 0 and report["affected_snapshots"] == 0
    pack = max((p for p in (root / "data").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    data = bytearray(pack.read_bytes())
    data[len(data) // 2] ^= 1
    pack.write_bytes(bytes(data))
    report = run_in_child(spec, "check", {"read_data_percent": 100.0}, Progress())
    assert not report["ok"] and report["affected_snapshots"] == 1 and report["affected"][0]["snapshot"] == snap.id


def test_the_key_is_not_in_the_childs_arguments_or_environment_and_its_death_is_reported(made):
    _root, snap, spec = made
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            for _ in range(50):  # long enough to be seen and killed
                run_in_child(spec, "verify", {"snapshot_id": snap.id}, Progress())
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.monotonic() + 30
    pids: list[int] = []
    while not pids and time.monotonic() < deadline:
        pids = _children()
        time.sleep(0.01)
    assert pids, "no child process was seen"
    secrets = [PASSPHRASE, *(v.encode() for v in spec.master.values())]
    visible = Path(f"/proc/{pids[0]}/cmdline").read_bytes() + Path(f"/proc/{pids[0]}/environ").read_bytes()
    assert not any(s in visible for s in secrets)
    os.kill(pids[0], signal.SIGKILL)
    thread.join(60)
    assert outcome and isinstance(outcome[0], BackupError)
    assert "ended unexpectedly (exit status -9)" in str(outcome[0])


def test_a_child_whose_parent_is_not_the_one_that_started_it_exits_at_once():
    """It compares its parent's pid with the one it was given (in a container `serve` is often
    pid 1, so "my parent is pid 1" cannot mean "my parent died")."""
    import socket
    import subprocess
    import sys

    from sidecar.repo.workerproc import _worker_env

    parent, child = socket.socketpair()
    with parent, child:
        stranger = subprocess.run(
            [sys.executable, "-m", "sidecar.jobs.child", str(child.fileno()), "1"],
            pass_fds=(child.fileno(),), env=_worker_env(), timeout=60,
        )  # fmt: skip
    assert stranger.returncode == 1
