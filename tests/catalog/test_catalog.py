"""The catalog on SQLite and on a real PostgreSQL server: the same tests, both URLs."""

from __future__ import annotations

import os
import stat
from datetime import UTC, datetime
from pathlib import Path

import pytest
from peewee import BigIntegerField

from sidecar.catalog import db as catalog_db
from sidecar.catalog.db import latest_version, open_catalog, safe_url, schema_version
from sidecar.catalog.models import AppState, Backup, Job
from sidecar.catalog.rebuild import rebuild_catalog
from sidecar.catalog.records import Catalog, RepositoryInfo, backup_to_dict, job_to_dict
from sidecar.errors import BackupNotFound, CatalogUnavailable, InvalidRequest, JobNotFound
from sidecar.repo.backends.local import LocalBackend
from sidecar.repo.backup import BackupOptions, BackupSession
from sidecar.repo.repository import Repository


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    return Repository.init(LocalBackend(tmp_path / "repo"), b"catalog test key")


def back_up(repo: Repository, tmp_path: Path, app_id: str, content: str, **options) -> object:
    src = tmp_path / f"src-{app_id}"
    src.mkdir(exist_ok=True)
    (src / "f.txt").write_text(content)
    with BackupSession(repo, BackupOptions(app_id=app_id, app_name=app_id.title(), **options)) as session:
        session.add_tree("volume:data", str(src), kind="volume")
        return session.commit()


def info(repo: Repository) -> RepositoryInfo:
    return RepositoryInfo(repo.backend.location, "local", True)


def test_a_fresh_catalog_gets_every_table_at_the_latest_version(catalog_url):
    db = open_catalog(catalog_url)
    assert schema_version(db) == latest_version()
    for model in (Backup, Job, AppState):
        assert model.table_exists()
    open_catalog(catalog_url)  # again: nothing to do, nothing lost
    assert schema_version(db) == latest_version()
    if catalog_url.startswith("sqlite"):
        path = catalog_url.split("://", 1)[1][1:]
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert db.execute_sql("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute_sql("PRAGMA foreign_keys").fetchone()[0] == 1


def test_backups_are_recorded_listed_paged_and_found(catalog_url, repo, tmp_path):
    open_catalog(catalog_url)
    catalog = Catalog()
    snaps = [back_up(repo, tmp_path, app, f"{app} {n}") for n in range(3) for app in ("wp", "gitea")]
    for snap in snaps:
        catalog.record_snapshot(snap, info(repo))
    catalog.record_snapshot(snaps[0], info(repo))  # recorded twice: still one row

    rows, total = catalog.list_backups(app_id="wp", limit=2)
    assert total == 3 and len(rows) == 2
    wp = [s for s in snaps if s.app_id == "wp"]
    assert [r.backup_id for r in rows] == [wp[2].backup_id, wp[1].backup_id]  # newest first
    rest, _ = catalog.list_backups(app_id="wp", limit=2, offset=2)
    assert [r.backup_id for r in rest] == [wp[0].backup_id]
    assert catalog.list_backups(limit=1000)[1] == 6
    assert catalog.list_backups(status="failed") == ([], 0)

    doc = backup_to_dict(catalog.get_backup(wp[0].backup_id))
    assert doc["status"] == "completed" and doc["app_name"] == "Wp" and doc["encrypted"] is True
    assert doc["snapshot_id"] == wp[0].id and doc["checksum"] == f"sha256:{wp[0].id}"
    assert doc["file_path"] == f"{repo.backend.location}/snapshots/{wp[0].id}"
    assert doc["size_bytes"] == len("wp 0") and doc["created_at"].endswith("Z")
    assert doc["created_at"].startswith(wp[0].time.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S"))

    with pytest.raises(BackupNotFound, match="backup_nope"):
        catalog.get_backup("backup_nope")
    for bad in ({"limit": 0}, {"limit": 1001}, {"offset": -1}, {"status": "done"}):
        with pytest.raises(InvalidRequest):
            catalog.list_backups(**bad)
    catalog.delete_backup(wp[0].backup_id)
    assert catalog.list_backups(app_id="wp")[1] == 2


def test_s3_repositories_fill_bucket_and_key():
    file_path, bucket, key = RepositoryInfo("s3://bucket/some/prefix", "s3").object_path("ab" * 32)
    assert (bucket, key) == ("bucket", "some/prefix/snapshots/" + "ab" * 32)
    assert file_path == f"s3://bucket/{key}"
    assert RepositoryInfo("s3://bucket", "s3").object_path("cd")[2] == "snapshots/cd"


def test_jobs_progress_finish_and_interruption(catalog_url):
    open_catalog(catalog_url)
    catalog = Catalog()
    job = catalog.create_job("backup", app_id="wp")
    catalog.start_job(job.job_id)
    catalog.job_progress(job.job_id, "volumes", 512, 1024)
    doc = job_to_dict(catalog.get_job(job.job_id))
    assert doc["status"] == "running" and doc["phase"] == "volumes"
    assert doc["progress"] == {"bytes_done": 512, "bytes_total": 1024}
    catalog.finish_job(job.job_id, "completed", result={"files": 3}, backup_id="backup_x")
    doc = job_to_dict(catalog.get_job(job.job_id))
    assert doc["status"] == "completed" and doc["result"] == {"files": 3} and doc["backup_id"] == "backup_x"
    assert doc["finished_at"] is not None

    left = catalog.create_job("restore", app_id="gitea")
    catalog.start_job(left.job_id)
    queued = catalog.create_job("backup", app_id="wp")
    catalog.start_backup("backup_20260101_000000_abcdef", "wp", "WP", "full", RepositoryInfo("/r"))
    assert catalog.interrupt_unfinished() == 2  # as a restarted daemon does
    assert {catalog.get_job(j.job_id).status for j in (left, queued)} == {"interrupted"}
    assert catalog.get_job(job.job_id).status == "completed"
    half = catalog.get_backup("backup_20260101_000000_abcdef")
    assert half.status == "failed" and "stopped" in half.error_message
    with pytest.raises(JobNotFound):
        catalog.get_job("job_missing")
    with pytest.raises(InvalidRequest):
        catalog.create_job("dance")


def test_app_state_and_last_successes(catalog_url, repo, tmp_path):
    open_catalog(catalog_url)
    catalog = Catalog()
    catalog.note_result("wp", "WordPress", "backup_1", None)
    catalog.note_result("wp", "WordPress", None, "disk full")
    state = AppState.get_by_id("wp")
    assert state.last_backup_id == "backup_1" and state.last_error == "disk full"
    assert state.last_success_at is not None and state.last_failure_at is not None
    snap = back_up(repo, tmp_path, "wp", "x")
    catalog.record_snapshot(snap, info(repo))
    newest = catalog.newest_completed()
    assert set(newest) == {"wp"}
    last, size = newest["wp"]
    assert abs((last - snap.time).total_seconds()) < snap.duration_s + 1
    assert last.tzinfo is not None and size == len("x")


def test_rebuild_gives_back_every_backup_after_the_catalog_is_lost(catalog_url, repo, tmp_path):
    open_catalog(catalog_url)
    catalog = Catalog()
    snaps = [back_up(repo, tmp_path, app, f"{app} {n}", tags=["t"]) for n in range(2) for app in ("a", "b")]
    for snap in snaps:
        catalog.record_snapshot(snap, info(repo))
    catalog.start_backup("backup_20260101_000000_fa11ed", "a", "A", "full", info(repo))
    catalog.fail_backup("backup_20260101_000000_fa11ed", "dump failed")
    before = {r.backup_id: backup_to_dict(r) for r in catalog.list_backups(limit=100)[0]}

    # lose every row
    Backup.delete().execute()
    report = rebuild_catalog(catalog, repo, info(repo))
    assert (report.snapshots, report.added, report.updated, report.removed) == (4, 4, 0, 0)
    after = {r.backup_id: backup_to_dict(r) for r in catalog.list_backups(limit=100)[0]}
    completed = {k: v for k, v in before.items() if v["status"] == "completed"}
    assert after == completed

    # a snapshot forgotten in the repository: its row goes; the failed attempt stays
    catalog.start_backup("backup_20260101_000000_fa11ed", "a", "A", "full", info(repo))
    catalog.fail_backup("backup_20260101_000000_fa11ed", "dump failed")
    repo.backend.delete(f"snapshots/{snaps[0].id}")
    report = rebuild_catalog(catalog, Repository.open(LocalBackend(tmp_path / "repo"), b"catalog test key"), info(repo))
    assert (report.snapshots, report.added, report.removed) == (3, 0, 1)
    ids = {r.backup_id for r in catalog.list_backups(limit=100)[0]}
    assert snaps[0].backup_id not in ids and "backup_20260101_000000_fa11ed" in ids and len(ids) == 4
    assert rebuild_catalog(catalog, repo, info(repo)).to_json()["added"] == 0  # nothing left to do


def test_a_version_1_catalog_is_migrated(catalog_url, monkeypatch):
    from sidecar.catalog.models import SchemaVersion

    monkeypatch.setattr(catalog_db, "MIGRATIONS", [])
    db = open_catalog(catalog_url)  # as version 1 made it: without the index of version 2, the table of 3
    db.execute_sql("DROP INDEX backup_status_app_id_created_at")
    db.execute_sql("DROP TABLE schedule_state")
    assert schema_version(db) == 1
    monkeypatch.undo()
    db = open_catalog(catalog_url)
    assert schema_version(db) == 3 == latest_version()
    assert ("status", "app_id", "created_at") in {tuple(i.columns) for i in db.get_indexes("backup")}
    assert "schedule_state" in db.get_tables()
    assert [v.version for v in SchemaVersion.select().order_by(SchemaVersion.version)] == [1, 2, 3]


def test_migrations_run_from_the_version_found(catalog_url, monkeypatch):
    db = open_catalog(catalog_url)
    latest = latest_version()
    assert schema_version(db) == latest

    def add_column(migrator):
        return [migrator.add_column("backup", "retained_until", BigIntegerField(null=True))]

    monkeypatch.setattr(catalog_db, "MIGRATIONS", [*catalog_db.MIGRATIONS, add_column])
    db = open_catalog(catalog_url)
    assert schema_version(db) == latest + 1
    assert "retained_until" in {c.name for c in db.get_columns("backup")}
    open_catalog(catalog_url)  # already there: not applied twice
    assert schema_version(db) == latest + 1

    monkeypatch.setattr(catalog_db, "MIGRATIONS", [])  # an older program meets the newer catalog
    with pytest.raises(CatalogUnavailable, match="newer than this program"):
        open_catalog(catalog_url)


def test_bad_urls_and_servers_are_clear_errors_without_the_password(postgres_server, tmp_path):
    wrong = postgres_server.replace(":pg-", ":wrong-pg-") + "/postgres"
    with pytest.raises(CatalogUnavailable) as info_:
        open_catalog(wrong)
    message = str(info_.value)
    assert "password" in message.lower() and "wrong-pg-" not in message and ":***@" in message
    with pytest.raises(CatalogUnavailable, match="use sqlite"):
        open_catalog("mysql://u:secret@127.0.0.1/x")
    with pytest.raises(CatalogUnavailable, match="file path"):
        open_catalog("sqlite:///:memory:")
    with pytest.raises(CatalogUnavailable, match="catalog"):
        open_catalog("postgresql://u:pw@127.0.0.1:1/nothing")
    blocked = tmp_path / "file"
    blocked.write_text("")
    with pytest.raises(CatalogUnavailable, match="cannot create its directory"):
        open_catalog(f"sqlite:///{blocked}/catalog.db")
    assert safe_url("postgresql://u:s3cret@h:5/db") == "postgresql://u:***@h:5/db"
    assert safe_url("sqlite:////x.db") == "sqlite:////x.db"


def test_times_are_stored_as_utc(catalog_url, repo, tmp_path):
    open_catalog(catalog_url)
    snap = back_up(repo, tmp_path, "tz", "x")
    Catalog().record_snapshot(snap, info(repo))
    row = Backup.get_by_id(snap.backup_id)
    assert isinstance(row.created_at, datetime) and row.created_at.tzinfo is None  # naive, meaning UTC
    assert row.created_at.replace(tzinfo=UTC) == snap.time.astimezone(UTC)  # to the microsecond


def test_catalog_rebuild_from_the_command_line(catalog_url, tmp_path):
    from tests.conftest import run_cli

    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("x")
    repo = tmp_path / "r"
    env = {"BACKUP_DATA_DIR": str(tmp_path / "data"), "BACKUP_CATALOG_URL": catalog_url}
    assert run_cli("init", "--repo", repo, env=env).code == 0
    made = [run_cli("backup", "--repo", repo, "--path", src, "--app-id", "a", "--json", env=env) for _ in range(2)]
    assert all(m.code == 0 for m in made), made[0].err
    first = run_cli("catalog", "rebuild", "--repo", repo, "--json", env=env)
    assert first.code == 0, first.err
    doc = first.json()
    assert (doc["snapshots"], doc["added"], doc["removed"]) == (2, 2, 0)
    assert ":***@" in doc["catalog"] or doc["catalog"].startswith("sqlite")
    assert "pg-" not in first.out + first.err  # the server's password is not shown
    again = run_cli("catalog", "rebuild", "--repo", repo, "--catalog", catalog_url, env=env)
    assert again.code == 0 and "0 backups added, 0 updated, 0 removed" in again.out
    open_catalog(catalog_url)
    assert {r.backup_id for r in Catalog().list_backups()[0]} == {m.json()["backup_id"] for m in made}
    if catalog_url.startswith("sqlite"):  # the catalog file is lost: the repository gives every backup back
        from sidecar.catalog.db import close_catalog

        close_catalog()
        path = Path(catalog_url.split("://", 1)[1][1:])
        for p in path.parent.glob(path.name + "*"):
            p.unlink()
        lost = run_cli("catalog", "rebuild", "--repo", repo, env=env)
        assert lost.code == 0 and "2 backups added" in lost.out, lost.err
        open_catalog(catalog_url)
        assert {r.backup_id for r in Catalog().list_backups()[0]} == {m.json()["backup_id"] for m in made}


def test_a_write_between_a_transactions_read_and_write_waits_instead_of_failing(catalog_url, repo, tmp_path):
    """record_snapshot reads, then writes, in one transaction. Another thread's write in between
    must wait for it (SQLite: BEGIN IMMEDIATE) — a deferred transaction failed at once with
    "database is locked" when 30 apps' backups finished together."""
    import threading

    open_catalog(catalog_url)
    catalog = Catalog()
    snap = back_up(repo, tmp_path, "wp", "first")
    catalog.record_snapshot(snap, info(repo))
    other_wrote = threading.Event()
    errors: list[BaseException] = []
    real = Backup.get_or_none

    def other_writer() -> None:
        try:
            catalog.note_result("gitea", "Gitea", "backup_x", None)  # a write on another connection
        except BaseException as exc:
            errors.append(exc)
        finally:
            other_wrote.set()
            catalog_db.database.close()

    def read_then_let_the_other_write(*args, **kwargs):  # type: ignore[no-untyped-def]
        row = real(*args, **kwargs)
        thread = threading.Thread(target=other_writer)
        thread.start()
        other_wrote.wait(1.0)  # deferred: it writes at once; immediate: it waits for our commit
        read_then_let_the_other_write.thread = thread  # type: ignore[attr-defined]
        return row

    Backup.get_or_none = read_then_let_the_other_write  # type: ignore[method-assign]
    try:
        catalog.record_snapshot(snap, info(repo), job_id="job_1")  # the update path: read, then write
    finally:
        Backup.get_or_none = real  # type: ignore[method-assign]
    read_then_let_the_other_write.thread.join(30)  # type: ignore[attr-defined]
    assert not errors, errors
    assert Backup.get_by_id(snap.backup_id).job_id == "job_1"
    assert AppState.get_by_id("gitea").last_backup_id == "backup_x"
