"""The API driving a real app on the real Docker engine: apps, backups and restores as
jobs, progress, busy apps, and the errors a caller can make."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from sidecar.api import PREFIX, create_app
from sidecar.catalog.db import close_catalog
from tests.api.conftest import API_KEY, make_env
from tests.integration.conftest import service
from tests.integration.test_databases import docker_exec


@pytest.fixture
def api(compose, docker_client, tmp_path: Path):
    from sidecar.docker.apps import Registry

    compose.write(
        {
            "web": service(
                labels={"websoft9.backup.schedule": "0 3 * * *", "websoft9.backup.pre": "sleep 2"},
                environment={"W9_APP_NAME": "Site"},
                volumes=["site:/srv/site"],
            )
        },
        volumes=["site"],
    )
    compose.up()
    registry = Registry(log_changes=False)
    registry.inventory(docker_client)
    from sidecar.metrics import Metrics

    env = make_env(
        tmp_path,
        f"sqlite:///{tmp_path / 'catalog.db'}",
        registry=registry,
        docker_client=lambda: docker_client,
        metrics=Metrics(),
    )
    client = create_app(env.ops, API_KEY).test_client()
    client.environ_base["HTTP_X_API_KEY"] = API_KEY
    yield client, env
    env.ops.runner.shutdown()
    close_catalog()


def data(response, status: int = 200):
    assert response.status_code == status, response.get_data(as_text=True)
    return response.get_json()["data"]


def error(response, status: int, code: str) -> str:
    assert response.status_code == status, response.get_data(as_text=True)
    doc = response.get_json()
    assert doc["error"] == code
    return doc["message"]


def wait_job(client, job_id: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = data(client.get(f"{PREFIX}/jobs/{job_id}"))
        if job["status"] not in ("queued", "running"):
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not finish")


def test_backup_and_restore_an_app_through_the_api(api, compose):
    client, _env = api
    app_id = compose.name
    web = compose.container("web")
    apps = data(client.get(f"{PREFIX}/apps"))["items"]
    app = next(a for a in apps if a["app_id"] == app_id)
    assert app["app_name"] == "Site" and app["policy"]["schedule"] == "0 3 * * *" and app["errors"] == []
    assert app["next_run"].endswith("03:00:00Z") and app["last_backup"] is None

    docker_exec(web, "echo one > /srv/site/page.html")
    started = data(client.post(f"{PREFIX}/{app_id}", json={"description": "first"}), 202)
    assert started["status"] == "in_progress" and started["job_id"] and started["backup_id"].startswith("backup_")
    # busy while its pre hook sleeps: a second backup or a restore is refused at once
    assert "busy" in error(client.post(f"{PREFIX}/{app_id}"), 409, "OPERATION_IN_PROGRESS")
    assert data(client.get(f"{PREFIX}/snapshots/{started['backup_id']}"))["status"] == "in_progress"
    job = wait_job(client, started["job_id"])
    assert job["status"] == "completed" and job["kind"] == "backup" and job["finished_at"]
    first = data(client.get(f"{PREFIX}/snapshots/{started['backup_id']}"))
    assert first["status"] == "completed" and first["description"] == "first" and first["job_id"] == job["job_id"]
    assert [s["name"] for s in first["sources"]] == ["volume:site"]
    assert first["size_bytes"] == len("one\n") and first["checksum"] == f"sha256:{first['snapshot_id']}"

    docker_exec(web, "echo two > /srv/site/page.html; echo extra > /srv/site/extra.html")
    second = data(client.post(f"{PREFIX}/{app_id}?wait=true", json={"backup_type": "full"}))  # the epic's example
    assert second["status"] == "completed" and second["backup_type"] == "full" and second["app_id"] == app_id
    assert second["storage_location"] == "local" and second["size_bytes"] > 0 and second["completed_at"]

    restored = data(client.post(f"{PREFIX}/restore/{app_id}/{first['backup_id']}?wait=true", json={}))
    assert restored["status"] == "completed" and restored["kind"] == "restore"
    result = restored["result"]
    assert result["backup_id"] == first["backup_id"] and result["safety_snapshot_id"]
    assert "safety snapshot" in result["phases"]
    assert docker_exec(web, "cat /srv/site/page.html; ls /srv/site") == "one\npage.html\n"
    wrong = client.post(f"{PREFIX}/restore/{app_id}/{first['backup_id']}", json={"volumes": ["sitee"]})
    assert error(wrong, 400, "INVALID_REQUEST").startswith("volumes: sitee not in snapshot")
    listed = data(client.get(f"{PREFIX}/snapshots?app_id={app_id}"))["items"]
    assert len(listed) == 3 and ["pre-restore"] in [b["tags"] for b in listed]  # the safety snapshot is listed

    app = next(a for a in data(client.get(f"{PREFIX}/apps"))["items"] if a["app_id"] == app_id)
    assert app["last_backup"]["status"] == "completed" and app["last_success_at"]
    assert app["last_backup"]["backup_id"] == listed[0]["backup_id"]  # the newest of the three

    text = client.get("/metrics").get_data(as_text=True)
    assert f'backup_success_total{{app_id="{app_id}",type="incremental"}} 1.0' in text
    assert f'backup_success_total{{app_id="{app_id}",type="full"}} 1.0' in text
    assert f'restore_success_total{{app_id="{app_id}"}} 1.0' in text
    assert f'backup_in_progress{{app_id="{app_id}"}} 0.0' in text


def test_what_a_caller_can_get_wrong(api, compose, tmp_path):
    client, env = api
    app_id = compose.name
    assert "nope" in error(client.post(f"{PREFIX}/nope"), 404, "APP_NOT_FOUND")
    error(client.post(f"{PREFIX}/restore/nope/backup_x"), 404, "APP_NOT_FOUND")
    error(client.post(f"{PREFIX}/restore/{app_id}/backup_missing"), 404, "BACKUP_NOT_FOUND")
    other = env.back_up("another-app")
    assert "belongs to app another-app" in error(
        client.post(f"{PREFIX}/restore/{app_id}/{other}"), 400, "INVALID_REQUEST"
    )
    assert error(
        client.post(f"{PREFIX}/restore/{app_id}/{other}", json={"stop_app": "no"}), 400, "INVALID_REQUEST"
    ).startswith("stop_app")
    assert error(
        client.post(f"{PREFIX}/restore/{app_id}/{other}", json={"volumes": "site"}), 400, "INVALID_REQUEST"
    ).startswith("volumes")
    assert error(client.post(f"{PREFIX}/{app_id}", json={"storage_location": "s3"}), 400, "INVALID_REQUEST").startswith(
        "storage_location"
    )
    # a failing backup: the job fails with the engine's code, the record says why
    failing = service(labels={"websoft9.backup.pre": "exit 7"}, volumes=["site:/srv/site"])
    compose.write({"web": failing}, volumes=["site"])
    compose.up()
    env.ops.registry.inventory(env.ops.docker_client())
    message = error(client.post(f"{PREFIX}/{app_id}?wait=true"), 500, "BACKUP_CREATE_FAILED")
    assert "exited 7" in message
    failed = data(client.get(f"{PREFIX}/snapshots?app_id={app_id}&status=failed"))["items"]
    assert len(failed) == 1 and "exited 7" in failed[0]["error_message"]

    # a label error: 409 before any job; a failing restore.pre hook: RESTORE_FAILED, rolled back
    def relabel(labels: dict) -> None:
        compose.write({"web": service(labels=labels, volumes=["site:/srv/site"])}, volumes=["site"])
        compose.up()
        env.ops.registry.inventory(env.ops.docker_client())

    relabel({"websoft9.backup.schedule": "every day"})
    message = error(client.post(f"{PREFIX}/{app_id}"), 409, "APP_POLICY_INVALID")
    assert "websoft9.backup.schedule" in message
    relabel({"websoft9.backup.restore.pre": "exit 3"})
    made = data(client.post(f"{PREFIX}/{app_id}?wait=true"))
    message = error(client.post(f"{PREFIX}/restore/{app_id}/{made['backup_id']}?wait=true"), 500, "RESTORE_FAILED")
    assert "restore.pre hook" in message and "exited 3" in message and "nothing was changed" in message


def test_a_full_repository_disk_is_507(compose, docker_client, tmp_path: Path):
    """The repository on a 3 MiB file system, the app's volume 8 MiB of random data."""
    import os
    import subprocess

    from sidecar.docker.apps import Registry

    if os.geteuid() != 0:  # mounting the small file system needs root (CI runs as root)
        pytest.fail("needs root to mount a tmpfs") if os.environ.get("CI") == "true" else pytest.skip("needs root")
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(small)], check=True)
    try:
        compose.write({"web": service(volumes=["big:/srv/big"])}, volumes=["big"])
        compose.up()
        docker_exec(compose.container("web"), "head -c 8388608 /dev/urandom > /srv/big/blob")
        registry = Registry(log_changes=False)
        registry.inventory(docker_client)
        env = make_env(small, f"sqlite:///{tmp_path / 'catalog.db'}", registry=registry,
                       docker_client=lambda: docker_client)  # fmt: skip
        try:
            client = create_app(env.ops, API_KEY).test_client()
            client.environ_base["HTTP_X_API_KEY"] = API_KEY
            message = error(client.post(f"{PREFIX}/{compose.name}?wait=true"), 507, "BACKUP_QUOTA_EXCEEDED")
            assert "no space left" in message
            failed = data(client.get(f"{PREFIX}/snapshots?status=failed"))["items"]
            assert len(failed) == 1 and env.repo().list_snapshots() == []  # nothing half-made was recorded
        finally:
            env.ops.runner.shutdown()
            close_catalog()
    finally:
        subprocess.run(["umount", "-l", str(small)], check=False)
