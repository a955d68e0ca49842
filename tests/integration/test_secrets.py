"""Secrets never leave: a real `serve --debug` (JSON logs) backs up and restores a MariaDB
app whose root password is known, answers every kind of request, fails a backup on a wrong
database password — and neither the encryption passphrase, the API key nor any database
password appears in a log line, a response, or a process's command line."""

from __future__ import annotations

import os
import signal
import time
import urllib.request
from pathlib import Path

from sidecar.api import PREFIX
from tests.conftest import PASSWORD, run_cli
from tests.integration.test_databases import ROOT_PW, mariadb, mariadb_app
from tests.serve_helpers import SERVE_KEY, Served

WRONG_PW = "n3w-r00t-pw-the-sidecar-does-not-know"


def cmdlines(root_pid: int) -> list[str]:
    """Command lines of a process and all its descendants."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat", "rb") as f:
                    ppid = int(f.read().rsplit(b")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(name))
    out, todo = [], [root_pid]
    while todo:
        pid = todo.pop()
        todo += children.get(pid, [])
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                out.append(f.read().replace(b"\0", b" ").decode(errors="replace"))
        except OSError:
            continue
    return out


def test_no_secret_in_logs_responses_or_command_lines(compose, tmp_path: Path) -> None:
    db = mariadb_app(compose)
    mariadb(
        db, "CREATE DATABASE shop; CREATE TABLE shop.t (id INT PRIMARY KEY, v TEXT); INSERT INTO shop.t VALUES (1,'a');"
    )
    repo = tmp_path / "repo"
    assert run_cli("init", "--repo", repo, env={"BACKUP_DATA_DIR": str(tmp_path / "data")}).code == 0
    served = Served(tmp_path, repo, "--debug", env={"BACKUP_LOG_FORMAT": "json"})
    secrets = {"encryption passphrase": PASSWORD, "API key": SERVE_KEY, "database password": ROOT_PW}
    responses: list[str] = []
    seen_cmdlines: list[str] = []

    def call(path: str, method: str = "GET", body: dict | None = None, key: str | None = "default"):
        status, doc = served.call(path, method=method, body=body, key=key)
        responses.append(f"{method} {path} -> {status}: {doc}")
        seen_cmdlines.extend(cmdlines(served.proc.pid))
        return status, doc

    try:
        served.wait_ready()
        app = compose.name
        status, doc = call(f"{PREFIX}/{app}", method="POST", body={"backup_type": "full"})
        assert status == 202, doc
        job_id = doc["data"]["job_id"]
        deadline = time.monotonic() + 180
        while (job := call(f"{PREFIX}/jobs/{job_id}")[1]["data"])["status"] in ("queued", "running"):
            assert time.monotonic() < deadline, job
            time.sleep(0.2)  # the command lines of the job's process and its docker execs are read meanwhile
        assert job["status"] == "completed", job
        backup_id = doc["data"]["backup_id"]
        for path in (
            "/apps",
            "/snapshots",
            f"/snapshots/{backup_id}",
            f"/snapshots?app_id={app}",
            "/schedules",
            "/openapi.json",
            f"/jobs/{job_id}",
        ):
            status, doc = call(PREFIX + path)
            assert status == 200, (path, doc)
        status, _ = call(f"{PREFIX}/snapshots/{backup_id}/verify?wait=true", method="POST", body={})
        assert status == 200
        assert call(f"{PREFIX}/apps", key="wrong-" + SERVE_KEY)[0] == 401
        assert call(f"{PREFIX}/{app}", method="POST", body={"backup_type": "hourly"})[0] == 400
        status, doc = call(f"{PREFIX}/restore/{app}/{backup_id}?wait=true", method="POST", body={})
        assert status == 200 and doc["data"]["status"] == "completed", doc
        with urllib.request.urlopen(served.base + "/metrics", timeout=30) as r:
            responses.append(r.read().decode())

        # the server's password changes under the app's feet: the dump fails with the password the
        # sidecar has (the container's MARIADB_ROOT_PASSWORD); the error says so without echoing it
        mariadb(db, f"ALTER USER 'root'@'localhost' IDENTIFIED BY '{WRONG_PW}';")
        status, doc = call(f"{PREFIX}/{app}?wait=true", method="POST", body={})
        assert status == 500 and "Access denied" in str(doc), doc
    finally:
        served.stop(signal.SIGTERM)
        served.stop(signal.SIGKILL)
    log = served.output()
    assert '"job_id"' in log and "backup" in log, "the JSON log is not what the test expects"
    assert any("mariadb-dump" in c or "sidecar.jobs.child" in c for c in seen_cmdlines), seen_cmdlines[:20]
    for what, secret in secrets.items():
        assert secret not in log, f"the {what} is in the serve log"
        for text in responses:
            assert secret not in text, f"the {what} is in a response: {text[:300]}"
        for line in seen_cmdlines:
            assert secret not in line, f"the {what} is in a command line: {line}"
