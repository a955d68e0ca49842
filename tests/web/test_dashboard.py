"""The dashboard through Flask's test client: login, CSRF, every page, the actions. The apps
come from a faked Docker host (the real engine and a real browser: test_dashboard_browser.py);
backups are real snapshots in a real repository and catalog."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask.testing import FlaskClient

from sidecar.api import PREFIX, create_app
from tests.api.conftest import API_KEY, ApiEnv, fake_host, sqlite_env


@pytest.fixture
def env(tmp_path: Path) -> Iterator[ApiEnv]:
    shop = {"websoft9.backup.schedule": "0 3 * * *", "websoft9.backup.retention": "last=5"}
    yield from sqlite_env(tmp_path, registry=fake_host(shop))


@pytest.fixture
def web(env: ApiEnv) -> FlaskClient:
    return create_app(env.ops, API_KEY).test_client()


def token(page: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert match, "no CSRF token in the page"
    return match.group(1)


def log_in(web: FlaskClient, key: str = API_KEY, next_path: str = "/"):  # type: ignore[no-untyped-def]
    page = web.get(f"/login?next={next_path}").get_data(as_text=True)
    return web.post("/login", data={"api_key": key, "next": next_path, "csrf_token": token(page)})


def test_pages_need_a_login_and_the_cookie_is_guarded(web: FlaskClient) -> None:
    for path in ("/", "/apps/shop", "/jobs", "/repository"):
        response = web.get(path)
        assert response.status_code == 302 and response.headers["Location"].startswith("/login?next="), path
    assert web.get("/ui/jobs.json").status_code == 401  # the pages' scripts get JSON, not a login page
    response = log_in(web)
    assert response.status_code == 302 and response.headers["Location"] == "/"
    cookie = next(c for c in response.headers.getlist("Set-Cookie") if c.startswith("w9_session="))
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert API_KEY not in cookie
    assert web.get("/").status_code == 200
    # the API still wants its key: the cookie is not enough
    assert web.get(f"{PREFIX}/snapshots").status_code == 401


def test_a_wrong_key_is_refused_and_a_login_without_csrf_too(web: FlaskClient) -> None:
    response = log_in(web, key="not-the-key")
    assert response.status_code == 401 and "that API key is wrong" in response.get_data(as_text=True)
    assert web.get("/").status_code == 302
    response = web.post("/login", data={"api_key": API_KEY})  # no token: a cross-site login
    assert response.status_code == 400 and "CSRF" in response.get_data(as_text=True)
    assert web.get("/").status_code == 302


def test_next_never_leaves_the_site(web: FlaskClient) -> None:
    for target in ("//evil.example/x", "https://evil.example/", "javascript:alert(1)"):
        response = log_in(web, next_path=target)
        assert response.headers["Location"] == "/", target


def test_apps_page_shows_policies_label_errors_and_backs_up(web: FlaskClient, env: ApiEnv) -> None:
    env.back_up("shop", b"hello shop")
    log_in(web)
    page = web.get("/").get_data(as_text=True)
    assert "shop" in page and "blog" in page and "0 3 * * *" in page and "last=5" in page
    error = re.search(r'<p class="label-error" role="alert">(.*?)</p>', page, re.S)
    assert error and "websoft9.backup.schedule=sometimes" in error.group(1)  # in red, and in words
    assert "OK" in page  # the last backup's status as a word, not only a colour
    # back up now: refused without the token, started with it
    assert web.post("/apps/shop/backup").status_code == 400
    response = web.post("/apps/shop/backup", data={"csrf_token": token(page)})
    assert response.status_code == 302 and response.headers["Location"].startswith("/jobs/job_")
    job_id = response.headers["Location"].rsplit("/", 1)[1]
    env.ops.runner.wait(job_id, 60)
    assert job_id in web.get("/jobs").get_data(as_text=True)
    listed = web.get("/ui/jobs.json").get_json()
    assert job_id in [j["job_id"] for j in listed["items"]]
    one = web.get(f"/ui/jobs/{job_id}.json").get_json()["job"]
    assert one["kind"] == "backup" and one["app_id"] == "shop"
    assert f"Job {job_id}" in web.get(f"/jobs/{job_id}").get_data(as_text=True)
    # an app with a label error cannot be backed up: the page says why instead of failing
    response = web.post("/apps/blog/backup", data={"csrf_token": token(page)}, follow_redirects=True)
    shown = response.get_data(as_text=True)
    assert response.status_code == 200 and 'class="flash error"' in shown and "websoft9.backup.schedule" in shown


def test_app_detail_history_chart_and_guarded_restore(web: FlaskClient, env: ApiEnv) -> None:
    ids = [env.back_up("shop", f"version {n}".encode() * (n + 1)) for n in range(3)]
    env.ops.catalog.start_backup("backup_failed_1", "shop", "Shop", "full", env.ops.repo_info)
    env.ops.catalog.fail_backup("backup_failed_1", "disk full")
    log_in(web)
    page = web.get("/apps/shop").get_data(as_text=True)
    for backup_id in ids:
        assert backup_id in page
    svg = re.search(r"<svg.*?</svg>", page, re.S)
    assert svg and svg.group(0).count("<circle") == 3 and svg.group(0).count('class="added"') == 3
    assert svg.group(0).count('<g class="failed">') == 1 and "disk full" in svg.group(0)  # the failure, marked
    assert "FAILED" in page and "disk full" in page  # and in words in the table
    assert 'aria-label="Backup history' in svg.group(0)
    detail = web.get(f"/backups/{ids[0]}").get_data(as_text=True)
    assert "volume:data" in detail and "Restore…" in detail
    restore_page = web.get(f"/apps/shop/restore/{ids[0]}").get_data(as_text=True)
    assert "volume <code>data</code>" in restore_page and "safety snapshot" in restore_page
    # the app id must be typed: anything else is refused and starts nothing
    wrong = web.post(f"/apps/shop/restore/{ids[0]}", data={"confirm": "sho", "csrf_token": token(restore_page)})
    assert wrong.status_code == 400 and "type the app id" in wrong.get_data(as_text=True)
    no_token = web.post(f"/apps/shop/restore/{ids[0]}", data={"confirm": "shop"})
    assert no_token.status_code == 400
    jobs_before = web.get("/ui/jobs.json").get_json()["items"]
    assert not [j for j in jobs_before if j["kind"] == "restore"]
    started = web.post(f"/apps/shop/restore/{ids[0]}", data={"confirm": "shop", "csrf_token": token(restore_page)})
    assert started.status_code == 302 and started.headers["Location"].startswith("/jobs/job_")
    # a backup of another app is not restored through this app's page
    other = env.back_up("blog-files", b"x")
    assert web.get(f"/apps/shop/restore/{other}").status_code == 400


def test_repository_page_and_verify(web: FlaskClient, env: ApiEnv) -> None:
    env.back_up("shop", b"a" * 10000)
    env.back_up("shop", b"a" * 10000 + b"b")
    log_in(web)
    page = web.get("/repository").get_data(as_text=True)
    assert "2 completed" in page and "Dedup ratio" in page and "never from here" in page
    response = web.post("/repository/verify", data={"csrf_token": token(page)})
    assert response.status_code == 302
    job_id = response.headers["Location"].rsplit("/", 1)[1]
    env.ops.runner.wait(job_id, 60)
    job = web.get(f"/ui/jobs/{job_id}.json").get_json()["job"]
    assert job["kind"] == "check" and job["status"] == "completed" and job["result"]["ok"] is True, job
    page = web.get("/repository").get_data(as_text=True)
    assert "no errors" in page and "never from here" not in page


def test_logout_ends_the_session_and_a_new_api_key_ends_every_session(web: FlaskClient, env: ApiEnv) -> None:
    log_in(web)
    page = web.get("/").get_data(as_text=True)
    assert web.post("/logout").status_code == 400  # a cross-site logout is refused too
    assert web.post("/logout", data={"csrf_token": token(page)}).status_code == 302
    assert web.get("/").status_code == 302
    log_in(web)
    cookie = web.get_cookie("w9_session")
    assert cookie is not None
    other = create_app(env.ops, API_KEY + "-rotated").test_client()
    other.set_cookie("w9_session", cookie.value)
    assert other.get("/").status_code == 302  # signed with the old key's secret: not a session here


def test_no_login_when_the_api_runs_without_a_key(env: ApiEnv) -> None:
    web = create_app(env.ops, None, insecure_no_auth=True).test_client()
    assert web.get("/").status_code == 200
    assert web.get("/login").status_code == 302
