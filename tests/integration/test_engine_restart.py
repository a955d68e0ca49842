"""The events watcher survives a restart of dockerd and ends up matching reality."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from sidecar.docker.apps import Registry
from sidecar.docker.client import EventWatcher, connect
from tests.integration.conftest import service

ROOT = Path(__file__).resolve().parents[2]


def _dockerd_pids() -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == "dockerd":
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def restart_dockerd() -> None:
    systemd = (
        shutil.which("systemctl") and subprocess.run(["systemctl", "is-active", "--quiet", "docker"]).returncode == 0
    )
    if systemd:
        subprocess.run(["systemctl", "restart", "docker"], check=True, timeout=120)
        return
    pids = _dockerd_pids()
    if not pids:
        pytest.fail("no dockerd process to restart")
    for pid in pids:
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 60
    while _dockerd_pids() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _dockerd_pids(), "dockerd did not stop within 60 s"
    subprocess.run([str(ROOT / "scripts" / "test-env"), "docker"], check=True, timeout=120)


def _view(registry: Registry, prefix: str) -> dict:
    return {
        a.app_id: (sorted((c.name, c.running) for c in a.containers), a.policy.schedule)
        for a in registry.apps()
        if a.app_id.startswith(prefix)
    }


def test_watcher_reconnects_after_dockerd_restarts_and_the_registry_matches_reality(docker_client, compose, tmp_path):
    compose.write(
        {
            "web": service(labels={"websoft9.backup.schedule": "@daily"}, restart="always"),
            "worker": service(labels={"websoft9.backup.stop": "true"}),
        }
    )
    compose.up()
    registry = Registry()
    watcher = EventWatcher(registry.inventory, registry.handle_event, backoff_max=2.0)
    watcher.start()
    try:
        assert watcher.wait_connected(20)
        assert registry.wait_for(lambda r: (a := r.get(compose.name)) is not None and len(a.containers) == 2, 5)

        restart_dockerd()
        # after the restart: `web` comes back (restart=always), `worker` stays exited;
        # a new app appears while the watcher may still be reconnecting
        late = compose.__class__(tmp_path / "late", compose.name + "late")
        late.dir.mkdir()
        late.write({"app": service(labels={"websoft9.backup.schedule": "@hourly"})})
        late.up()
        try:
            assert watcher.wait_connected(30), "the watcher did not reconnect"
            assert watcher.reconnects >= 1

            def matches(reg: Registry) -> bool:
                truth = Registry(log_changes=False)
                truth.inventory(connect())
                return _view(reg, compose.name) == _view(truth, compose.name) and len(_view(truth, compose.name)) == 2

            deadline = time.monotonic() + 30
            while not matches(registry) and time.monotonic() < deadline:
                time.sleep(0.5)
            view = _view(registry, compose.name)
            assert matches(registry), view
            web = compose.container("web")
            worker = compose.container("worker")
            assert view[compose.name][0] == [(web, True), (worker, False)]
            assert view[compose.name + "late"][1] == "@hourly"
        finally:
            late.down()
    finally:
        watcher.stop()
