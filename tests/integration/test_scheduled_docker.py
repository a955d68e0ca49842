"""The scheduler with the real Docker engine: `serve` backs up a labelled app every
minute on its own, applies its retention, and shows when it runs next. Slow (about
two minutes of wall time: cron's resolution is a minute); CI runs it."""

from __future__ import annotations

import json
import signal
import time

import pytest

from sidecar.api import PREFIX
from tests.conftest import run_cli
from tests.integration.conftest import service
from tests.serve_helpers import Served

pytestmark = pytest.mark.slow


def test_an_app_labelled_every_minute_is_backed_up_every_minute(compose, tmp_path):
    compose.write(
        {
            "web": service(
                labels={"websoft9.backup.schedule": "* * * * *", "websoft9.backup.retention": "last=1"},
                volumes=["site:/srv/site"],
            )
        },
        volumes=["site"],
    )
    compose.up()
    compose.exec("web", "echo one > /srv/site/page.txt")
    repo = tmp_path / "repo"
    env = {"BACKUP_DATA_DIR": str(tmp_path / "data")}
    assert run_cli("init", "--repo", repo, env=env).code == 0
    served = Served(tmp_path, repo, env={"BACKUP_PRUNE_SCHEDULE": "off", "BACKUP_LOG_FORMAT": "json"})
    try:
        served.wait_ready()
        app = next(a for a in served.call(f"{PREFIX}/apps")[1]["data"]["items"] if a["app_id"] == compose.name)
        assert app["next_run"] is not None and app["next_run"].endswith(":00Z")
        assert app["schedules"][0]["schedule_id"] == f"label:{compose.name}"

        def scheduled_jobs() -> list[dict]:
            jobs = []
            for row in served.call(f"{PREFIX}/snapshots?app_id={compose.name}&limit=50")[1]["data"]["items"]:
                jobs.append(row)
            return jobs

        deadline = time.monotonic() + 200
        completed: list[str] = []
        while time.monotonic() < deadline:
            _, doc = served.call(f"{PREFIX}/schedules?app_id={compose.name}")
            last_job = doc["data"]["items"][0].get("last_job_id")
            if last_job and last_job not in completed:
                job = served.call(f"{PREFIX}/jobs/{last_job}")[1]["data"]
                if job["status"] == "completed":
                    completed.append(last_job)
                    compose.exec("web", f"echo {len(completed)} >> /srv/site/page.txt")
                assert job["status"] in ("queued", "running", "completed"), job
            if len(completed) >= 2:
                break
            time.sleep(1)
        assert len(completed) >= 2, served.output()
        # retention last=1 after each run: one snapshot left, and it is the newest
        rows = scheduled_jobs()
        assert [r["status"] for r in rows] == ["completed"], rows
        job = served.call(f"{PREFIX}/jobs/{completed[1]}")[1]["data"]
        assert len(job["result"]["forgotten"]) == 1 and job["result"]["backup_id"] == rows[0]["backup_id"]
        assert "scheduled" in rows[0]["tags"]
        metrics = served.call("/metrics", key=None)[1]
        assert f'backup_scheduled_runs_total{{app_id="{compose.name}",outcome="completed"}}' in metrics
        # JSON log lines; those of the backups (written in the jobs' own processes) name job and app
        records = [json.loads(line) for line in served.output().splitlines() if line.strip()]
        assert any("scheduled backup started" in r["message"] for r in records)
        saved = [r for r in records if "snapshot" in r["message"] and "saved" in r["message"]]
        assert saved and all(r.get("app_id") == compose.name and r.get("job_id") for r in saved)
        assert {r["job_id"] for r in saved} >= set(completed)
        assert served.stop(signal.SIGTERM) == 0
    finally:
        served.stop(signal.SIGKILL)
