"""Restoring whole apps to points in time, with real MariaDB/PostgreSQL: exactness, disaster, rollback."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from bench.treecompare import compare
from sidecar.errors import BackupCorrupted, InvalidRequest, RestoreFailed
from sidecar.jobs import restore as restore_module
from sidecar.jobs.backup import backup_app
from sidecar.jobs.restore import RestoreOptions, restore_app
from tests.integration.conftest import job_context, service, volume_path
from tests.integration.test_databases import (
    MARIADB_START,
    POSTGRES_START,
    ROOT_PW,
    docker_exec,
    mariadb,
    psql,
    wait_until,
)

DB_QUERIES = [
    "SELECT id, title, HEX(thumb) FROM wp.posts ORDER BY id",
    "SELECT option_name, option_value FROM wp.options ORDER BY option_name",
    "SELECT SCHEMA_NAME FROM information_schema.SCHEMATA ORDER BY SCHEMA_NAME",
]


def wordpress_app(compose) -> tuple[str, str]:
    compose.write(
        {
            "web": service(
                labels={"websoft9.backup.schedule": "@daily"},
                environment={"W9_APP_NAME": "WordPress"},
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
    return compose.container("web"), db


def snapshot_state(docker_client, compose, db: str, dest: Path) -> list[str]:
    """A copy of the uploads volume (cp -a) and the query results: what 'that moment' was."""
    subprocess.run(["cp", "-a", volume_path(docker_client, compose.volume("uploads")), str(dest)], check=True)
    return [mariadb(db, q) for q in DB_QUERIES]


def assert_state(docker_client, compose, db: str, tree: Path, rows: list[str]) -> None:
    problems = compare(str(tree), volume_path(docker_client, compose.volume("uploads")))
    assert problems == [], problems[:10]
    assert [mariadb(db, q) for q in DB_QUERIES] == rows


def _web(docker_client, compose, command: str) -> None:
    docker_exec(compose.container("web"), command)


def test_point_in_time_restores_and_a_disaster_drill(compose, registry, docker_client, local_repo, tmp_path):
    web, db = wordpress_app(compose)
    ctx = job_context(docker_client, local_repo, tmp_path / "state")
    up = "/var/www/html/wp-content/uploads"
    _web(docker_client, compose, f"mkdir -p {up}/2026/11 && head -c 200000 /dev/urandom > {up}/2026/11/a.jpg"
         f" && echo one > {up}/note.txt && ln -s 2026/11/a.jpg {up}/latest.jpg && chown -R 33:33 {up}"
         f" && chmod 0600 {up}/note.txt")  # fmt: skip
    mariadb(
        db,
        "CREATE DATABASE wp; CREATE TABLE wp.posts (id INT PRIMARY KEY, title VARCHAR(100), thumb BLOB);"
        "CREATE TABLE wp.options (option_name VARCHAR(64) PRIMARY KEY, option_value TEXT);"
        "INSERT INTO wp.posts VALUES (1, 'Hello wörld', UNHEX('FF00')); INSERT INTO wp.options VALUES ('v', '1');",
    )
    registry.inventory(docker_client)
    app = registry.require(compose.name)
    states = {}
    snaps = {}
    snaps["t1"] = backup_app(ctx, app).snapshot
    states["t1"] = snapshot_state(docker_client, compose, db, tmp_path / "t1")

    _web(docker_client, compose, f"echo two >> {up}/note.txt && rm {up}/latest.jpg && mkdir {up}/2026/12"
         f" && head -c 100000 /dev/urandom > {up}/2026/12/b.png && chown -R 33:33 {up}/2026/12")  # fmt: skip
    mariadb(db, "INSERT INTO wp.posts VALUES (2, 'Second ✓', NULL); UPDATE wp.options SET option_value='2';")
    snaps["t2"] = backup_app(ctx, app).snapshot
    states["t2"] = snapshot_state(docker_client, compose, db, tmp_path / "t2")

    _web(docker_client, compose, f"rm -rf {up}/2026/11 && echo three > {up}/note.txt && ln {up}/note.txt {up}/hard")
    mariadb(
        db, "DELETE FROM wp.posts WHERE id = 1; CREATE DATABASE plugin_cache; UPDATE wp.options SET option_value='3';"
    )
    snaps["t3"] = backup_app(ctx, app).snapshot
    states["t3"] = snapshot_state(docker_client, compose, db, tmp_path / "t3")

    for moment in ("t1", "t3", "t2"):
        result = restore_app(ctx, registry.require(compose.name), snaps[moment])
        assert result.safety_snapshot_id is not None
        assert_state(docker_client, compose, db, tmp_path / moment, states[moment])
        assert docker_client.api.inspect_container(web)["State"]["Running"]
        if moment == "t1":
            assert result.databases[0]["dropped"] == ["plugin_cache"]  # made after t1: gone, as at t1
    safety = local_repo.load_snapshot(result.safety_snapshot_id)
    assert safety.tags == ["pre-restore"]

    # disaster drill: the app's containers and volumes are deleted entirely, then the app is re-created empty
    compose.down()
    compose.up()
    wait_until(lambda: mariadb(db, "SELECT 1"), "MariaDB (fresh)")
    registry.inventory(docker_client)
    restore_app(ctx, registry.require(compose.name), snaps["t2"])
    assert_state(docker_client, compose, db, tmp_path / "t2", states["t2"])


def test_failures_midway_roll_back_to_the_state_before(
    compose, registry, docker_client, local_repo, tmp_path, monkeypatch
):
    web, db = wordpress_app(compose)
    ctx = job_context(docker_client, local_repo, tmp_path / "state")
    up = "/var/www/html/wp-content/uploads"
    _web(docker_client, compose, f"echo old > {up}/file && chown 33:33 {up}/file")
    mariadb(db, "CREATE DATABASE wp; CREATE TABLE wp.posts (id INT PRIMARY KEY, title VARCHAR(100), thumb BLOB);"
                "CREATE TABLE wp.options (option_name VARCHAR(64) PRIMARY KEY, option_value TEXT);"
                "INSERT INTO wp.posts VALUES (1, 'old', NULL);")  # fmt: skip
    registry.inventory(docker_client)
    old = backup_app(ctx, registry.require(compose.name)).snapshot
    _web(docker_client, compose, f"echo new > {up}/file && head -c 50000 /dev/urandom > {up}/new.bin")
    mariadb(db, "INSERT INTO wp.posts VALUES (2, 'new', NULL); CREATE DATABASE newer;")
    before = snapshot_state(docker_client, compose, db, tmp_path / "before")

    # 1. the DB container dies during the load
    real_load = restore_module.load_database
    calls = []

    def dying_load(client, container, spec, dump, exact=False):
        calls.append(container.name)
        if len(calls) == 1:
            docker_client.api.kill(container.id)
        return real_load(client, container, spec, dump, exact=exact)

    monkeypatch.setattr(restore_module, "load_database", dying_load)
    with pytest.raises(RestoreFailed, match="rolled back to the safety snapshot") as failure:
        restore_app(ctx, registry.require(compose.name), old)
    assert db in str(failure.value) or "mariadb" in str(failure.value)
    wait_until(lambda: mariadb(db, "SELECT 1"), "MariaDB after the rollback")
    assert_state(docker_client, compose, db, tmp_path / "before", before)
    assert docker_client.api.inspect_container(web)["State"]["Running"]
    monkeypatch.setattr(restore_module, "load_database", real_load)

    # 2. a volume write fails halfway
    access = ctx.volume_access
    real_restore = access.restore
    writes = []

    def failing_restore(repo, snapshot, source, app, volume, delete=True):
        writes.append(source)
        real_restore(repo, snapshot, source, app, volume, delete=delete)  # the volume is overwritten...
        if len(writes) == 1:
            raise OSError(28, "No space left on device")  # ...and then the write "fails"

    access.restore = failing_restore
    with pytest.raises(RestoreFailed, match=r"No space left on device.*rolled back"):
        restore_app(ctx, registry.require(compose.name), old)
    access.restore = real_restore
    assert_state(docker_client, compose, db, tmp_path / "before", before)
    assert docker_client.api.inspect_container(web)["State"]["Running"]


def test_a_corrupted_pack_is_refused_before_anything_is_stopped(compose, registry, docker_client, local_repo, tmp_path):
    web, _db = wordpress_app(compose)
    ctx = job_context(docker_client, local_repo, tmp_path / "state")
    _web(docker_client, compose, "head -c 3000000 /dev/urandom > /var/www/html/wp-content/uploads/big")
    registry.inventory(docker_client)
    snap = backup_app(ctx, registry.require(compose.name)).snapshot
    started = docker_client.api.inspect_container(web)["State"]["StartedAt"]
    packs = sorted((tmp_path / "repo" / "data").rglob("*"), key=lambda p: p.stat().st_size if p.is_file() else 0)
    biggest = packs[-1]
    data = bytearray(biggest.read_bytes())
    data[len(data) // 2] ^= 0x55  # a flipped byte in the middle: only reading the data finds it
    biggest.write_bytes(bytes(data))
    phases = []
    ctx.on_phase = lambda phase, app: phases.append(phase)
    with pytest.raises(BackupCorrupted, match="cannot be restored, nothing was touched"):
        restore_app(ctx, registry.require(compose.name), snap, RestoreOptions(verify_data=True))
    biggest.write_bytes(bytes(data[: len(data) // 3]))  # truncated: found without reading the data
    with pytest.raises(BackupCorrupted, match="cannot be restored"):
        restore_app(ctx, registry.require(compose.name), snap)
    assert phases == []  # no safety snapshot, nothing stopped
    assert docker_client.api.inspect_container(web)["State"]["StartedAt"] == started
    assert len(local_repo.list_snapshots()) == 1


def test_postgres_app_restore_drops_what_came_later(compose, registry, docker_client, local_repo, tmp_path):
    compose.write(
        {
            "app": service(volumes=["files:/srv/files"]),
            "db": service(command=POSTGRES_START, labels={"websoft9.backup.db": "postgres"},
                          volumes=["pgdata:/var/lib/postgresql/data"]),
        },
        volumes=["files", "pgdata"],
    )  # fmt: skip
    compose.up()
    db = compose.container("db")
    wait_until(lambda: psql(db, "SELECT 1"), "PostgreSQL")
    psql(db, "CREATE DATABASE gitea;")
    psql(db, "CREATE TABLE repos (id INT PRIMARY KEY, name TEXT); INSERT INTO repos VALUES (1, 'ünïcode');", "gitea")
    docker_exec(compose.container("app"), "echo v1 > /srv/files/readme")
    ctx = job_context(docker_client, local_repo, tmp_path / "state")
    registry.inventory(docker_client)
    snap = backup_app(ctx, registry.require(compose.name)).snapshot
    rows = psql(db, "SELECT * FROM repos ORDER BY id", "gitea")

    psql(db, "INSERT INTO repos VALUES (2, 'later'); UPDATE repos SET name = 'x' WHERE id = 1;", "gitea")
    psql(db, "CREATE DATABASE later;")
    docker_exec(compose.container("app"), "echo v2 > /srv/files/readme; touch /srv/files/extra")
    result = restore_app(ctx, registry.require(compose.name), snap)
    assert result.databases[0]["dropped"] == ["later"]
    assert psql(db, "SELECT * FROM repos ORDER BY id", "gitea") == rows
    assert docker_exec(compose.container("app"), "cat /srv/files/readme; ls /srv/files") == "v1\nreadme\n"


def test_restore_app_from_the_command_line(compose, docker_client, tmp_path):
    from tests.conftest import run_cli

    compose.write(
        {"web": service(labels={"websoft9.backup.type": "full"}, volumes=["site:/srv/site"])}, volumes=["site"]
    )
    compose.up()
    docker_exec(compose.container("web"), "echo first > /srv/site/index.html")
    env = {"BACKUP_DATA_DIR": str(tmp_path / "data")}
    repo = tmp_path / "repo"
    assert run_cli("init", "--repo", repo, env=env).code == 0
    backup = run_cli("backup", "--repo", repo, "--app", compose.name, "--json", env=env)
    assert backup.code == 0, backup.err
    docker_exec(compose.container("web"), "echo second > /srv/site/index.html; touch /srv/site/extra")

    both = run_cli("restore", "--repo", repo, "latest", "--app", compose.name, "--target", tmp_path, env=env)
    assert both.code == 1 and "not both" in both.err
    restored = run_cli("restore", "--repo", repo, "latest", "--app", compose.name, "--json", env=env)
    assert restored.code == 0, restored.err
    doc = restored.json()
    assert doc["snapshot_id"] == backup.json()["snapshot_id"]
    assert doc["safety_snapshot_id"] and doc["volumes"][0]["source"] == "volume:site"
    assert list(doc["phases"]) == ["verifying", "safety snapshot", "stopping", "databases and volumes", "starting"]
    assert 0 < sum(doc["phases"].values()) <= doc["duration_s"] + 0.01
    assert docker_exec(compose.container("web"), "cat /srv/site/index.html; ls /srv/site") == "first\nindex.html\n"
    listed = run_cli("snapshots", "--repo", repo, "--app-id", compose.name, "--json", env=env).json()
    assert sorted(s["tags"] == ["pre-restore"] for s in listed) == [False, True]


def test_a_subset_of_volumes_without_the_database(compose, registry, docker_client, local_repo, tmp_path):
    web, db = wordpress_app(compose)
    compose.write(
        {
            "web": service(volumes=["uploads:/var/www/html/wp-content/uploads", "themes:/var/www/html/themes"]),
            "db": service(command=MARIADB_START, environment={"MARIADB_ROOT_PASSWORD": ROOT_PW},
                          labels={"websoft9.backup.db": "mariadb"}, volumes=["dbdata:/var/lib/mysql"]),
        },
        volumes=["uploads", "themes", "dbdata"],
    )  # fmt: skip
    compose.up()
    wait_until(lambda: mariadb(db, "SELECT 1"), "MariaDB")
    docker_exec(web, "echo u1 > /var/www/html/wp-content/uploads/f; echo t1 > /var/www/html/themes/f")
    mariadb(db, "CREATE DATABASE wp; CREATE TABLE wp.t (v INT); INSERT INTO wp.t VALUES (1);")
    ctx = job_context(docker_client, local_repo, tmp_path / "state")
    registry.inventory(docker_client)
    snap = backup_app(ctx, registry.require(compose.name)).snapshot
    docker_exec(web, "echo u2 > /var/www/html/wp-content/uploads/f; echo t2 > /var/www/html/themes/f")
    mariadb(db, "UPDATE wp.t SET v = 2;")
    options = RestoreOptions(volumes=["uploads"], restore_database=False, safety=False)
    result = restore_app(ctx, registry.require(compose.name), snap, options)
    assert [v["source"] for v in result.volumes] == ["volume:uploads"] and result.databases == []
    assert docker_exec(web, "cat /var/www/html/wp-content/uploads/f /var/www/html/themes/f") == "u1\nt2\n"
    assert mariadb(db, "SELECT v FROM wp.t").split()[-1] == "2"
    # by volume name too; a name the snapshot does not hold is refused before anything happens
    app = registry.require(compose.name)
    by_name = RestoreOptions(volumes=[compose.volume("themes")], restore_database=False, safety=False)
    assert [v["source"] for v in restore_app(ctx, app, snap, by_name).volumes] == ["volume:themes"]
    assert docker_exec(web, "cat /var/www/html/themes/f") == "t1\n"
    with pytest.raises(InvalidRequest, match=r"volumes: uplods not in snapshot \w+ \(its volumes: themes, uploads\)"):
        restore_app(ctx, app, snap, RestoreOptions(volumes=["uplods"], safety=False))
    assert len(local_repo.list_snapshots(compose.name)) == 1  # no safety snapshot was even taken
