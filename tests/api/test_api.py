"""The REST API without Docker: backups, jobs, schedules, errors, auth and the
OpenAPI document, through Flask's test client and a real HTTP server."""

from __future__ import annotations

import io
import json
import tarfile
import urllib.error
import urllib.request
from datetime import UTC, datetime

import pytest

from sidecar.api import PREFIX, create_app
from sidecar.catalog.db import close_catalog
from sidecar.errors import InvalidRequest
from tests.api.conftest import API_KEY, make_env

ERROR_KEYS = {"code", "message", "error", "data"}


def error_of(response, status: int, code: str) -> str:
    assert response.status_code == status, response.get_data(as_text=True)
    doc = response.get_json()
    assert set(doc) == ERROR_KEYS and doc["code"] == status and doc["error"] == code and doc["data"] is None
    return doc["message"]


def data_of(response, status: int = 200):
    assert response.status_code == status, response.get_data(as_text=True)
    doc = response.get_json()
    assert doc["code"] == status and "error" not in doc
    return doc["data"]


# ---- backups -------------------------------------------------------------------------------------


def test_list_filter_and_page_backups(env, client):
    ids = [env.back_up(app, f"{app}{n}".encode()) for n in range(3) for app in ("wp", "gitea")]
    page = data_of(client.get(f"{PREFIX}/snapshots?app_id=wp&limit=2"))
    assert page["total"] == 3 and page["limit"] == 2 and page["offset"] == 0
    wp = ids[0::2]  # made wp, gitea, wp, ...: newest first
    assert [b["backup_id"] for b in page["items"]] == wp[::-1][:2]
    first = page["items"][0]
    for key in ("backup_id", "app_id", "app_name", "backup_type", "size_bytes", "compressed", "encrypted",
                "storage_location", "file_path", "checksum", "status", "created_at", "completed_at"):  # fmt: skip
        assert key in first
    assert first["status"] == "completed" and first["app_id"] == "wp" and first["encrypted"] is True
    assert data_of(client.get(f"{PREFIX}/snapshots?offset=5"))["items"].__len__() == 1
    assert data_of(client.get(f"{PREFIX}/snapshots?status=failed"))["total"] == 0
    assert "limit" in error_of(client.get(f"{PREFIX}/snapshots?limit=0"), 400, "INVALID_REQUEST")
    assert "limit" in error_of(client.get(f"{PREFIX}/snapshots?limit=ten"), 400, "INVALID_REQUEST")
    assert "offset" in error_of(client.get(f"{PREFIX}/snapshots?offset=-1"), 400, "INVALID_REQUEST")
    assert "status" in error_of(client.get(f"{PREFIX}/snapshots?status=weird"), 400, "INVALID_REQUEST")


def test_one_backup_has_its_sources_and_can_be_deleted(env, client):
    backup_id = env.back_up("wp", b"content")
    doc = data_of(client.get(f"{PREFIX}/snapshots/{backup_id}"))
    assert doc["backup_id"] == backup_id and doc["sources"][0]["name"] == "volume:data"
    assert doc["sources"][0]["stats"]["files"] == 1
    assert "backup_nope" in error_of(client.get(f"{PREFIX}/snapshots/backup_nope"), 404, "BACKUP_NOT_FOUND")
    assert data_of(client.delete(f"{PREFIX}/snapshots/{backup_id}"))["backup_id"] == backup_id
    error_of(client.get(f"{PREFIX}/snapshots/{backup_id}"), 404, "BACKUP_NOT_FOUND")
    assert env.repo().list_snapshots() == []  # forgotten in the repository too
    error_of(client.delete(f"{PREFIX}/snapshots/{backup_id}"), 404, "BACKUP_NOT_FOUND")


def test_a_backup_whose_snapshot_left_the_repository_says_so(env, client):
    backup_id = env.back_up("wp")
    snapshot_id = env.ops.catalog.get_backup(backup_id).snapshot_id
    env.repo().backend.delete(f"snapshots/{snapshot_id}")
    assert "catalog rebuild" in error_of(client.get(f"{PREFIX}/snapshots/{backup_id}"), 404, "BACKUP_NOT_FOUND")


def test_verify_as_a_job_and_waiting_for_it(env, client):
    backup_id = env.back_up("wp", b"x" * 100_000)
    job = data_of(client.post(f"{PREFIX}/snapshots/{backup_id}/verify"), 202)
    assert job["kind"] == "verify" and job["status"] in ("queued", "running", "completed")
    env.ops.runner.wait(job["job_id"], 60)
    done = data_of(client.get(f"{PREFIX}/jobs/{job['job_id']}"))
    assert done["status"] == "completed" and done["result"] == {"backup_id": backup_id, "ok": True}
    waited = data_of(client.post(f"{PREFIX}/snapshots/{backup_id}/verify?wait=true"))
    assert waited["status"] == "completed"
    # damage a pack: the verification fails with BACKUP_CORRUPTED, also through ?wait=true
    pack = next(p for p in (env.repo_path / "data").rglob("*") if p.is_file())
    data = bytearray(pack.read_bytes())
    data[len(data) // 3] ^= 0xFF
    pack.write_bytes(bytes(data))
    message = error_of(client.post(f"{PREFIX}/snapshots/{backup_id}/verify?wait=true"), 500, "BACKUP_CORRUPTED")
    assert message
    error_of(client.get(f"{PREFIX}/jobs/job_nope"), 404, "JOB_NOT_FOUND")
    error_of(client.post(f"{PREFIX}/snapshots/backup_nope/verify"), 404, "BACKUP_NOT_FOUND")
    assert "wait" in error_of(client.post(f"{PREFIX}/snapshots/{backup_id}/verify?wait=maybe"), 400, "INVALID_REQUEST")


def test_export_streams_a_tar(env, client):
    backup_id = env.back_up("wp", b"exported content", name="page.html")
    response = client.get(f"{PREFIX}/snapshots/{backup_id}/export")
    assert response.status_code == 200 and response.mimetype == "application/x-tar"
    with tarfile.open(fileobj=io.BytesIO(response.get_data()), mode="r:") as tar:
        member = tar.extractfile("page.html")
        assert member is not None and member.read() == b"exported content"
    error_of(client.get(f"{PREFIX}/snapshots/backup_nope/export"), 404, "BACKUP_NOT_FOUND")


def test_backups_and_restores_of_unknown_apps_without_docker(env, client):
    message = error_of(client.post(f"{PREFIX}/wp"), 503, "DOCKER_UNAVAILABLE")
    assert "Docker" in message
    error_of(client.get(f"{PREFIX}/apps"), 503, "DOCKER_UNAVAILABLE")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ("not json", "body"),
        ("[1, 2]", "body"),
        ('{"backup_type": "weekly"}', "backup_type"),
        ('{"include_database": "yes"}', "include_database"),
        ('{"description": 5}', "description"),
        ('{"colour": "blue"}', "colour"),
    ],
)
def test_bad_backup_bodies_name_the_field(client, body, field):
    response = client.post(f"{PREFIX}/wp", data=body, content_type="application/json")
    assert error_of(response, 400, "INVALID_REQUEST").startswith(field)


# ---- schedules -----------------------------------------------------------------------------------


def test_schedules_crud_and_validation(client):
    weekly = {"app_id": "wp", "frequency": "weekly", "time": "02:30", "day_of_week": 0}
    created = data_of(client.post(f"{PREFIX}/schedules", json=weekly), 201)
    sid = created["schedule_id"]
    assert created["source"] == "api" and created["retention_days"] == 30 and created["day_of_week"] == 0
    assert data_of(client.get(f"{PREFIX}/schedules/{sid}"))["time"] == "02:30"
    changed = data_of(client.put(f"{PREFIX}/schedules/{sid}", json={"time": "04:00", "enabled": False}))
    assert changed["time"] == "04:00" and changed["enabled"] is False and changed["frequency"] == "weekly"
    listed = data_of(client.get(f"{PREFIX}/schedules?app_id=wp"))
    assert [s["schedule_id"] for s in listed["items"]] == [sid]
    assert data_of(client.get(f"{PREFIX}/schedules?app_id=other"))["total"] == 0
    assert data_of(client.delete(f"{PREFIX}/schedules/{sid}"))["schedule_id"] == sid
    error_of(client.get(f"{PREFIX}/schedules/{sid}"), 404, "SCHEDULE_NOT_FOUND")
    error_of(client.put(f"{PREFIX}/schedules/{sid}", json={}), 404, "SCHEDULE_NOT_FOUND")
    error_of(client.delete(f"{PREFIX}/schedules/{sid}"), 404, "SCHEDULE_NOT_FOUND")
    assert "label" in error_of(client.delete(f"{PREFIX}/schedules/label:wp"), 400, "INVALID_REQUEST")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "app_id"),
        ({"app_id": "wp", "frequency": "hourly"}, "frequency"),
        ({"app_id": "wp", "time": "25:00"}, "time"),
        ({"app_id": "wp", "time": "3:00"}, "time"),
        ({"app_id": "wp", "frequency": "weekly"}, "day_of_week"),
        ({"app_id": "wp", "frequency": "weekly", "day_of_week": 7}, "day_of_week"),
        ({"app_id": "wp", "frequency": "monthly"}, "day_of_month"),
        ({"app_id": "wp", "frequency": "monthly", "day_of_month": 0}, "day_of_month"),
        ({"app_id": "wp", "frequency": "cron", "cron": "every day"}, "cron"),
        ({"app_id": "wp", "cron": "0 3 * * *"}, "cron"),
        ({"app_id": "wp", "retention_days": 0}, "retention_days"),
        ({"app_id": "wp", "retention_days": True}, "retention_days"),
        ({"app_id": "wp", "backup_type": "snapshot"}, "backup_type"),
        ({"app_id": "wp", "storage_location": "s3"}, "storage_location"),
        ({"app_id": "wp", "include_uploads": 1}, "include_uploads"),
        ({"app_id": "wp", "include_uploads": False, "include_database": False}, "include_database, include_uploads"),
        ({"app_id": "wp", "frequency": "cron", "cron": "0 0 3 * * *"}, "cron"),
        ({"app_id": "wp", "when": "now"}, "when"),
    ],
)
def test_bad_schedules_name_the_field(client, body, field):
    assert error_of(client.post(f"{PREFIX}/schedules", json=body), 400, "INVALID_REQUEST").startswith(field)


def test_a_cron_schedule(client):
    body = {"app_id": "x", "frequency": "cron", "cron": "15 4 * * 1-5"}
    made = data_of(client.post(f"{PREFIX}/schedules", json=body), 201)
    assert made["cron"] == "15 4 * * 1-5"
    # without a running scheduler (no serve) the next run is still shown: a weekday at 04:15 UTC
    when = datetime.fromisoformat(made["next_run"])
    assert (when.hour, when.minute, when.weekday() < 5) == (4, 15, True)
    assert when > datetime.now(UTC)


# ---- auth, errors, documentation ---------------------------------------------------------------


def test_every_api_route_refuses_a_missing_or_wrong_key(env):
    app = create_app(env.ops, API_KEY)
    client = app.test_client()
    rules = [r for r in app.url_map.iter_rules() if r.rule.startswith("/api/")]
    assert len(rules) >= 12
    for rule in rules:
        path = rule.rule.replace("<", "").replace(">", "")
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            for headers, why in (
                ({}, "missing"),
                ({"X-API-Key": API_KEY + "x"}, "wrong"),
                ({"X-API-Key": ""}, "missing"),
            ):
                response = client.open(path, method=method, headers=headers)
                assert why in error_of(response, 401, "UNAUTHORIZED"), (method, path)
    error_of(client.get("/api/v1/backup/no/such/route"), 401, "UNAUTHORIZED")  # unknown routes too
    assert client.get("/healthz").status_code == 200  # no key needed


def test_no_key_no_api_unless_asked(env):
    with pytest.raises(InvalidRequest, match="BACKUP_API_KEY"):
        create_app(env.ops, None)
    open_app = create_app(env.ops, None, insecure_no_auth=True).test_client()
    assert open_app.get(f"{PREFIX}/snapshots").status_code == 200


def test_unknown_routes_and_methods_get_the_envelope(client):
    error_of(client.get(f"{PREFIX}/no/such/thing"), 404, "NOT_FOUND")
    error_of(client.put(f"{PREFIX}/snapshots"), 405, "METHOD_NOT_ALLOWED")
    error_of(
        client.post(f"{PREFIX}/wp", data=b"x" * (2 << 20), content_type="application/json"), 413, "INVALID_REQUEST"
    )


def test_an_unexpected_error_is_a_500_envelope_without_details(env, client, monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("secret-detail-xyz")

    monkeypatch.setattr(env.ops.catalog, "list_backups", boom)
    response = client.get(f"{PREFIX}/snapshots")
    message = error_of(response, 500, "INTERNAL_ERROR")
    assert "secret-detail-xyz" not in response.get_data(as_text=True) and "RuntimeError" in message


def test_openapi_is_valid_and_describes_every_route(env, client):
    from openapi_spec_validator import validate

    doc = data_of_raw(client.get(f"{PREFIX}/openapi.json"))
    validate(doc)
    app = create_app(env.ops, API_KEY)
    described = {
        (path, method.upper()) for path, ops in doc["paths"].items() for method in ops if method != "parameters"
    }
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static" or rule.endpoint.startswith("web."):  # the HTML dashboard: docs/dashboard.md
            continue
        path = rule.rule.replace("<", "{").replace(">", "}")
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            assert (path, method) in described, f"{method} {path} is not in openapi.json"


def data_of_raw(response):
    assert response.status_code == 200
    return response.get_json()


# ---- the same on a real server, and on PostgreSQL --------------------------------------------------


def test_a_real_http_server(env, live_server):
    backup_id = env.back_up("wp", b"over http", name="x.txt")

    def call(path: str, key: str | None = API_KEY, method: str = "GET") -> tuple[int, bytes]:
        request = urllib.request.Request(live_server + path, method=method)
        if key is not None:
            request.add_header("X-API-Key", key)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    status, body = call(f"{PREFIX}/snapshots?app_id=wp")
    assert status == 200 and json.loads(body)["data"]["items"][0]["backup_id"] == backup_id
    status, body = call(f"{PREFIX}/snapshots", key=None)
    assert status == 401 and json.loads(body)["error"] == "UNAUTHORIZED"
    status, body = call(f"{PREFIX}/snapshots/{backup_id}/export")
    with tarfile.open(fileobj=io.BytesIO(body)) as tar:
        assert tar.extractfile("x.txt").read() == b"over http"
    status, body = call(f"{PREFIX}/snapshots/{backup_id}/verify?wait=true", method="POST")
    assert status == 200 and json.loads(body)["data"]["status"] == "completed"
    assert call("/healthz", key=None)[0] == 200


def test_a_catalog_that_goes_away_is_a_503(tmp_path, postgres_server):
    from tests.postgres import _admin

    _admin(postgres_server, "CREATE DATABASE w9_goes_away")
    env = make_env(tmp_path, f"{postgres_server}/w9_goes_away")
    try:
        client = create_app(env.ops, API_KEY).test_client()
        client.environ_base["HTTP_X_API_KEY"] = API_KEY
        assert client.get(f"{PREFIX}/snapshots").status_code == 200
        _admin(postgres_server, "DROP DATABASE w9_goes_away WITH (FORCE)")
        response = client.get(f"{PREFIX}/snapshots")
        assert "catalog is unavailable" in error_of(response, 503, "CATALOG_UNAVAILABLE")
        assert "pg-" not in response.get_data(as_text=True)  # no password
    finally:
        env.ops.runner.shutdown()
        close_catalog()
        _admin(postgres_server, "DROP DATABASE IF EXISTS w9_goes_away WITH (FORCE)")


def test_the_api_on_postgresql(tmp_path, postgres_url):
    env = make_env(tmp_path, postgres_url)
    try:
        client = create_app(env.ops, API_KEY).test_client()
        client.environ_base["HTTP_X_API_KEY"] = API_KEY
        backup_id = env.back_up("pg", b"on postgres")
        assert data_of(client.get(f"{PREFIX}/snapshots?app_id=pg"))["items"][0]["backup_id"] == backup_id
        job = data_of(client.post(f"{PREFIX}/snapshots/{backup_id}/verify?wait=true"))
        assert job["status"] == "completed"
        data_of(client.post(f"{PREFIX}/schedules", json={"app_id": "pg"}), 201)
    finally:
        env.ops.runner.shutdown()
        close_catalog()
