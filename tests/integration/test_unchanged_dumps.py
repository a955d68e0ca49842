"""A restore's safety snapshot reuses the previous dump only while the database server shows no
write since that dump began (real MariaDB and PostgreSQL): every kind of write, and a restart,
makes it dump again; a reused dump restores the state it stands for."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from sidecar.jobs.backup import backup_app, backup_app_locked
from sidecar.jobs.dumps import read_fingerprint
from sidecar.jobs.restore import RestoreOptions, restore_app
from sidecar.repo.restore import restore_snapshot
from tests.integration.conftest import job_context, service
from tests.integration.test_databases import MARIADB_START, POSTGRES_START, ROOT_PW, mariadb, psql, wait_until

# (what, statement, a text the next dump holds because of it)
WRITES = {
    "mariadb": [
        ("a row in an InnoDB table", "INSERT INTO app.t VALUES (2, 'marker-row')", "marker-row"),
        ("a view (a file, no row)", "CREATE VIEW app.marker_view AS SELECT id FROM app.t", "marker_view"),
        ("a trigger", "CREATE TRIGGER app.marker_trg BEFORE INSERT ON app.t FOR EACH ROW SET NEW.v = NEW.v",
         "marker_trg"),
        ("a user (Aria system table)", "CREATE USER marker_user IDENTIFIED BY 'x'", "marker_user"),
        ("a row in an Aria table", "INSERT INTO app.a VALUES ('marker-aria')", "marker-aria"),
        ("a row deleted", "DELETE FROM app.t WHERE id = 1", None),
    ],
    "postgres": [
        ("a row", "INSERT INTO t VALUES (2, 'marker-row')", "marker-row"),
        ("a view", "CREATE VIEW marker_view AS SELECT id FROM t", "marker_view"),
        ("a role", "CREATE ROLE marker_role", "marker_role"),
        ("a row in an unlogged table", "INSERT INTO u VALUES ('marker-unlogged')", "marker-unlogged"),
        ("a row deleted", "DELETE FROM t WHERE id = 1", None),
    ],
}  # fmt: skip


def _app(compose, engine: str):
    if engine == "mariadb":
        db = service(command=MARIADB_START, environment={"MARIADB_ROOT_PASSWORD": ROOT_PW},
                     labels={"websoft9.backup.db": "mariadb"}, volumes=["dbdata:/var/lib/mysql"])  # fmt: skip
    else:
        db = service(command=POSTGRES_START, labels={"websoft9.backup.db": "postgres"},
                     volumes=["dbdata:/var/lib/postgresql/data"])  # fmt: skip
    compose.write({"web": service(volumes=["files:/srv/files"]), "db": db}, volumes=["files", "dbdata"])
    compose.up()
    container = compose.container("db")
    if engine == "mariadb":
        wait_until(lambda: mariadb(container, "SELECT 1"), "MariaDB")
        sql = lambda text: mariadb(container, text)  # noqa: E731
        sql("CREATE DATABASE app; CREATE TABLE app.t (id INT PRIMARY KEY, v TEXT) ENGINE=InnoDB;"
            "CREATE TABLE app.a (v TEXT) ENGINE=Aria; INSERT INTO app.t VALUES (1, 'first');")  # fmt: skip
        rows = "SELECT * FROM app.t ORDER BY id"
    else:
        wait_until(lambda: psql(container, "SELECT 1"), "PostgreSQL")
        sql = lambda text: psql(container, text)  # noqa: E731
        sql("CREATE TABLE t (id INT PRIMARY KEY, v TEXT); CREATE UNLOGGED TABLE u (v TEXT);"
            "INSERT INTO t VALUES (1, 'first');")  # fmt: skip
        rows = "SELECT * FROM t ORDER BY id"
    return container, sql, rows


def _settle(ctx, app) -> None:
    """Wait until the server's own background work after a write (InnoDB statistics, a checkpoint)
    is done: the fingerprint the same twice, 2 s apart. Only so that 'reused' can be asserted."""
    container = app.container(app.policy.databases[0].container)
    spec = app.policy.databases[0]
    deadline = time.monotonic() + 90
    last = read_fingerprint(ctx.client, container, spec)
    assert last is not None, "no fingerprint could be read"
    while time.monotonic() < deadline:
        time.sleep(2)
        now = read_fingerprint(ctx.client, container, spec)
        if now == last:
            return
        last = now
    raise AssertionError("the server kept writing for 90 s")


def _dump_text(repo, snapshot, tmp_path: Path) -> str:
    out = tmp_path / f"dump-{snapshot.id[:8]}"
    restore_snapshot(repo, snapshot, out, source="database:db")
    (file,) = out.iterdir()
    return file.read_text(errors="replace")


@pytest.mark.parametrize("engine", ["mariadb", "postgres"])
def test_safety_snapshots_reuse_a_dump_only_while_nothing_was_written(
    engine, compose, registry, docker_client, local_repo, tmp_path
):
    container, sql, rows_query = _app(compose, engine)
    ctx = job_context(docker_client, local_repo, tmp_path / "state")
    registry.inventory(docker_client)
    app = registry.require(compose.name)

    def safety():
        return backup_app_locked(ctx, app, tags=["pre-restore"], reuse_unchanged_dumps=True).snapshot

    _settle(ctx, app)
    first = backup_app(ctx, app).snapshot
    assert first.source("database:db").fingerprint is not None
    again = safety()
    assert again.source("database:db").reused_from == first.id
    assert again.source("database:db").tree == first.source("database:db").tree
    # a safety snapshot of an app whose policy says full has no parent: the latest snapshot's dump is reused
    full = backup_app_locked(ctx, app, backup_type="full", tags=["pre-restore"], reuse_unchanged_dumps=True).snapshot
    assert full.backup_type == "full" and full.source("database:db").reused_from == again.id
    assert backup_app(ctx, app).snapshot.source("database:db").reused_from is None  # only safety snapshots reuse

    for what, statement, marker in WRITES[engine]:
        sql(statement)
        _settle(ctx, app)
        fresh = safety()
        assert fresh.source("database:db").reused_from is None, f"{what}: the dump was reused"
        text = _dump_text(local_repo, fresh, tmp_path)
        if marker is not None:
            assert marker in text, what
        else:
            assert "'first'" not in text and "\tfirst" not in text, what
        following = safety()
        if engine == "postgres" and following.source("database:db").reused_from is None:
            # PostgreSQL may prune the changed pages while the dump reads them, which is WAL-logged: the
            # dump after a change can itself move the WAL position once (so the next one dumps again)
            fresh, following = following, safety()
        assert following.source("database:db").reused_from == fresh.id, f"after {what}: not reused"

    docker_client.containers.get(container).restart()
    if engine == "mariadb":
        wait_until(lambda: mariadb(container, "SELECT 1"), "MariaDB")
    else:
        wait_until(lambda: psql(container, "SELECT 1"), "PostgreSQL")
    _settle(ctx, app)
    assert safety().source("database:db").reused_from is None, "a restarted server: the dump was reused"

    # restoring an older snapshot takes a safety snapshot that reuses the dump; restoring that
    # safety snapshot gives back the rows of before
    before = sql(rows_query)
    reused = safety()
    assert reused.source("database:db").reused_from is not None
    restore_app(ctx, app, first, RestoreOptions(safety=False))
    assert sql(rows_query) != before
    restore_app(ctx, app, reused, RestoreOptions(safety=False))
    assert sql(rows_query) == before
