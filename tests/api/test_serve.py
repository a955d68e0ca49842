"""`serve` as a process, without Docker: refuses to start without a key or with a
wrong encryption key, serves the API and /metrics, stops cleanly on SIGTERM."""

from __future__ import annotations

import signal

from sidecar.api import PREFIX
from tests.conftest import run_cli
from tests.serve_helpers import SERVE_KEY, Served


def test_refuses_to_start_without_an_api_key(tmp_path, repo):
    env = {"BACKUP_DATA_DIR": str(tmp_path)}
    result = run_cli("serve", "--repo", repo, "--no-docker", "--listen", "127.0.0.1:0", env=env)
    assert result.code == 1 and "BACKUP_API_KEY" in result.err and "Traceback" not in result.err


def test_refuses_a_wrong_encryption_key_and_a_bad_listen_address(tmp_path, repo):
    env = {"BACKUP_DATA_DIR": str(tmp_path), "BACKUP_API_KEY": SERVE_KEY}
    wrong = run_cli("serve", "--repo", repo, "--no-docker", password="not the key", env=env)
    assert wrong.code == 1 and "WRONG_KEY" in wrong.err
    bad = run_cli("serve", "--repo", repo, "--no-docker", "--listen", "localhost", env=env)
    assert bad.code == 1 and "HOST:PORT" in bad.err


def test_refuses_a_bad_scheduler_setting_naming_it(tmp_path, repo):
    env = {"BACKUP_DATA_DIR": str(tmp_path), "BACKUP_API_KEY": SERVE_KEY}
    for name, value, says in [
        ("TZ", "Mars/Olympus", "TZ: unknown time zone 'Mars/Olympus'"),
        ("BACKUP_PRUNE_SCHEDULE", "sometimes", "BACKUP_PRUNE_SCHEDULE: schedule 'sometimes' is not a valid cron"),
        ("BACKUP_SCHEDULER_RETRIES", "many", "BACKUP_SCHEDULER_RETRIES: must be a whole number"),
    ]:
        result = run_cli("serve", "--repo", repo, "--no-docker", "--listen", "127.0.0.1:0", env={**env, name: value})
        assert result.code == 1 and says in result.err and "Traceback" not in result.err, result.err
        assert len(result.err.strip().splitlines()) == 1


def test_serves_the_api_and_stops_on_sigterm(tmp_path, repo):
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("served")
    env = {"BACKUP_DATA_DIR": str(tmp_path / "data")}
    made = run_cli("backup", "--repo", repo, "--path", src, "--app-id", "a", "--json", env=env)
    assert made.code == 0, made.err
    served = Served(tmp_path, repo, "--no-docker")
    try:
        served.wait_ready()
        assert run_cli("catalog", "rebuild", "--repo", repo, env=env).code == 0
        status, doc = served.call(f"{PREFIX}/snapshots?app_id=a")
        assert status == 200 and doc["data"]["items"][0]["backup_id"] == made.json()["backup_id"]
        assert served.call(f"{PREFIX}/snapshots", key=None)[0] == 401
        assert served.call(f"{PREFIX}/apps")[1]["error"] == "DOCKER_UNAVAILABLE"
        status, text = served.call("/metrics", key=None)
        assert status == 200 and 'backup_size_bytes{app_id="a"} 6.0' in text and "repository_size_bytes" in text
        assert served.stop(signal.SIGTERM) == 0
    finally:
        served.stop(signal.SIGKILL)
    output = served.output()
    assert "stopping" in output and "Traceback" not in output and SERVE_KEY not in output
