"""`serve` with the real Docker engine: apps followed live, a backup through HTTP,
and a job cut off by SIGKILL reported as interrupted by the next start."""

from __future__ import annotations

import signal
import time

from sidecar.api import PREFIX
from tests.conftest import run_cli
from tests.integration.conftest import ComposeProject, service
from tests.serve_helpers import Served


def until(predicate, what: str, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_serve_follows_apps_backs_up_and_survives_a_kill(compose, tmp_path):
    compose.write(
        {"web": service(labels={"websoft9.backup.pre": "sleep 4"}, volumes=["site:/srv/site"])}, volumes=["site"]
    )
    compose.up()
    repo = tmp_path / "repo"
    env = {"BACKUP_DATA_DIR": str(tmp_path / "data")}
    assert run_cli("init", "--repo", repo, env=env).code == 0
    served = Served(tmp_path, repo)
    later = ComposeProject(tmp_path / "later", compose.name + "b")
    try:
        served.wait_ready()
        ids = lambda: {a["app_id"] for a in served.call(f"{PREFIX}/apps")[1]["data"]["items"]}  # noqa: E731
        assert compose.name in ids()
        # an app that appears after the start is seen through the events stream
        (tmp_path / "later").mkdir()
        later.write({"web": service(labels={"websoft9.backup.enable": "true"}, volumes=["v:/v"])}, volumes=["v"])
        later.up()
        until(lambda: later.name in ids(), "the new app")
        status, doc = served.call(f"{PREFIX}/{later.name}?wait=true", method="POST", body={})
        assert status == 200 and doc["data"]["status"] == "completed", doc

        # a backup running (its pre hook sleeps) when the sidecar is killed
        status, doc = served.call(f"{PREFIX}/{compose.name}", method="POST", body={})
        assert status == 202, doc
        job_id, backup_id = doc["data"]["job_id"], doc["data"]["backup_id"]
        until(lambda: served.call(f"{PREFIX}/jobs/{job_id}")[1]["data"]["status"] == "running", "the job to run")
        served.stop(signal.SIGKILL)
        again = Served(tmp_path, repo)
        try:
            again.wait_ready()
            job = again.call(f"{PREFIX}/jobs/{job_id}")[1]["data"]
            assert job["status"] == "interrupted" and "stopped" in job["error"]
            record = again.call(f"{PREFIX}/snapshots/{backup_id}")[1]["data"]
            assert record["status"] == "failed"
            assert again.stop(signal.SIGTERM) == 0
        finally:
            again.stop(signal.SIGKILL)
        assert "marked interrupted" in again.output()
    finally:
        served.stop(signal.SIGKILL)
        later.down()
