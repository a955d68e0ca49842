"""The whole path a user takes, with the real container: build the sidecar's image
from the Dockerfile, run it beside a labelled WordPress-shaped app (web + MariaDB)
with the Docker socket and the volumes root mounted, back the app up through the
HTTP API, damage its files and its database, restore through the API, and find
everything as it was. Slow (an image build); CI runs it.

Nothing can be pulled here: the image is built from a locally imported Debian 12
+ Python base (scripts/test-env image) and a wheelhouse built on the host
(`pip wheel`), as the Dockerfile's WHEELHOUSE build argument allows."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.integration.conftest import CI, service
from tests.integration.test_databases import MARIADB_START, ROOT_PW, mariadb, wait_until
from tests.serve_helpers import free_port

pytestmark = pytest.mark.slow

PYBASE = "websoft9-backup-pybase:1"
IMAGE = "websoft9-backup:e2e"
API = "/api/v1/backup"


def _unavailable(reason: str) -> None:
    if CI:
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def sidecar_image(docker_client) -> str:
    try:
        docker_client.images.get(PYBASE)
    except Exception:
        _unavailable(f"the base image {PYBASE} is missing (scripts/test-env image builds it)")
    wheels = ROOT / ".wheelhouse"
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--disable-pip-version-check", str(ROOT), "-w", str(wheels)],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr[-3000:]
    build = subprocess.run(
        ["docker", "build", "--network", "host", "-q", "-t", IMAGE,
         "--build-arg", f"BASE_IMAGE={PYBASE}", "--build-arg", "WHEELHOUSE=.wheelhouse", str(ROOT)],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert build.returncode == 0, build.stdout[-2000:] + build.stderr[-3000:]
    # small: the venv only (no sources, wheels, pip or build tools), well under 150 MB over its base
    added = docker_client.images.get(IMAGE).attrs["Size"] - docker_client.images.get(PYBASE).attrs["Size"]
    assert added < 150e6, f"the image adds {added / 1e6:.0f} MB to its base"
    return IMAGE


class Sidecar:
    def __init__(self, name: str, port: int, key: str) -> None:
        self.name, self.port, self.key = name, port, key

    def call(self, path: str, method: str = "GET", body: dict | None = None) -> tuple[int, dict]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=data, method=method)
        request.add_header("X-API-Key", self.key)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=600) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def logs(self) -> str:
        out = subprocess.run(["docker", "logs", self.name], capture_output=True, text=True)
        return (out.stdout + out.stderr)[-20000:]

    def health(self) -> str:
        out = subprocess.run(
            ["docker", "inspect", "-f", "{{.State.Health.Status}}", self.name], capture_output=True, text=True
        )
        return out.stdout.strip()


def test_backup_damage_and_restore_through_the_real_container(sidecar_image, compose, tmp_path: Path):
    compose.write(
        {
            "web": service(
                labels={"websoft9.backup.stop": "true"},
                volumes=["uploads:/var/www/html/wp-content/uploads"],
            ),
            "db": service(
                command=MARIADB_START,
                environment={"MARIADB_ROOT_PASSWORD": ROOT_PW},
                labels={"websoft9.backup.db": "mariadb"},
                volumes=["dbdata:/var/lib/mysql"],
            ),
        },
        volumes=["uploads", "dbdata"],
    )
    compose.up()
    db = compose.container("db")
    wait_until(lambda: mariadb(db, "SELECT 1"), "MariaDB")
    mariadb(db, "CREATE DATABASE wp; CREATE TABLE wp.posts (id INT PRIMARY KEY, title VARCHAR(100));"
                "INSERT INTO wp.posts VALUES (1, 'Hello from the container test');")  # fmt: skip
    compose.exec(
        "web",
        "cd /var/www/html/wp-content/uploads && mkdir -p 2026/11 && echo photo > 2026/11/a.jpg "
        "&& head -c 300000 /dev/urandom > 2026/11/big.bin && chown -R 33:33 . && chmod 0640 2026/11/a.jpg",
    )
    before = compose.exec("web", "cd /var/www/html/wp-content/uploads && find . -exec stat -c '%n %s %u:%g %a' {} +")

    key = "e2e-api-" + secrets.token_hex(12)
    secret_dir = tmp_path / "secrets"
    secret_dir.mkdir()
    (secret_dir / "encryption_key").write_text("e2e-encryption-" + secrets.token_hex(12) + "\n")
    (secret_dir / "api_key").write_text(key + "\n")
    port = free_port()
    sidecar = Sidecar("w9e2e" + secrets.token_hex(4), port, key)
    run = subprocess.run(
        ["docker", "run", "-d", "--name", sidecar.name, "--network", "host", "--user", "0",
         "-v", "/var/run/docker.sock:/var/run/docker.sock",
         "-v", "/var/lib/docker/volumes:/var/lib/docker/volumes",
         "-v", f"{tmp_path / 'data'}:/var/lib/websoft9-backup",
         "-v", f"{secret_dir}:/run/secrets:ro",
         "-e", "BACKUP_API_KEY_FILE=/run/secrets/api_key",
         "-e", "BACKUP_ENCRYPTION_KEY_FILE=/run/secrets/encryption_key",
         "-e", f"BACKUP_API_LISTEN=127.0.0.1:{port}", "--health-interval", "2s", sidecar_image],
        capture_output=True, text=True,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                status, doc = sidecar.call(f"{API}/apps")
                if status == 200 and compose.name in {a["app_id"] for a in doc["data"]["items"]}:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, sidecar.logs()
            time.sleep(0.5)
        wait_until(lambda: _assert(sidecar.health() == "healthy"), "the container's health check", timeout=60)
        assert "created repository" in sidecar.logs()
        # the dashboard's templates and static files are in the image (package data)
        with urllib.request.urlopen(f"http://127.0.0.1:{sidecar.port}/login", timeout=30) as page:
            assert page.status == 200 and b'name="api_key"' in page.read()
        with urllib.request.urlopen(f"http://127.0.0.1:{sidecar.port}/ui/static/jobs.js", timeout=30) as script:
            assert script.status == 200 and b"XMLHttpRequest" in script.read()

        status, doc = sidecar.call(f"{API}/{compose.name}?wait=true", "POST", {"description": "before the accident"})
        assert status == 200 and doc["data"]["status"] == "completed", (doc, sidecar.logs())
        backup_id = doc["data"]["backup_id"]
        detail = sidecar.call(f"{API}/snapshots/{backup_id}")[1]["data"]
        assert {s["kind"] for s in detail["sources"]} >= {"volume", "database"}, detail

        # the accident: files gone and changed, a table dropped
        compose.exec(
            "web", "rm -rf /var/www/html/wp-content/uploads/2026 && echo junk > /var/www/html/wp-content/uploads/x"
        )
        mariadb(db, "DROP TABLE wp.posts; CREATE DATABASE junk;")

        status, doc = sidecar.call(f"{API}/restore/{compose.name}/{backup_id}?wait=true", "POST", {})
        assert status == 200, (doc, sidecar.logs())
        after = compose.exec("web", "cd /var/www/html/wp-content/uploads && find . -exec stat -c '%n %s %u:%g %a' {} +")
        assert sorted(after.splitlines()) == sorted(before.splitlines())
        assert compose.exec("web", "cat /var/www/html/wp-content/uploads/2026/11/a.jpg") == "photo\n"
        assert mariadb(db, "SELECT title FROM wp.posts").splitlines() == ["title", "Hello from the container test"]
        assert "junk" not in mariadb(db, "SHOW DATABASES")
        logs = sidecar.logs()
        for secret in (key, (secret_dir / "encryption_key").read_text().strip(), ROOT_PW):
            assert secret not in logs
    finally:
        subprocess.run(["docker", "rm", "-f", sidecar.name], capture_output=True)


def _assert(condition: bool) -> None:
    assert condition
