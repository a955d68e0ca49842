"""Opening the catalog: `sqlite:///…` (the default, in the data directory) or
`postgresql://…`, and bringing its schema up to date.

SQLite runs with WAL, foreign keys and a busy timeout so the API's threads and
a running job can use it at once; its file is created 0600. The schema version
is a row in `schema_version`; a fresh catalog gets every table at the latest
version, an older one the migrations (playhouse.migrate) from its version on,
under an advisory lock on PostgreSQL so two sidecars starting together do not
both migrate.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from peewee import Database, OperationalError, PeeweeException, PostgresqlDatabase, fn
from playhouse.db_url import connect
from playhouse.migrate import SchemaMigrator, migrate

from sidecar.catalog.models import TABLES, ScheduleState, SchemaVersion, database
from sidecar.errors import CatalogUnavailable

log = logging.getLogger(__name__)

SQLITE_PRAGMAS = {"journal_mode": "wal", "foreign_keys": 1, "busy_timeout": 10_000, "synchronous": "normal"}
_MIGRATION_LOCK = 0x5739_4261  # "W9Ba": pg_advisory_xact_lock key

# MIGRATIONS[i] takes a catalog from version i + 1 to i + 2: it returns playhouse.migrate
# operations (add_column, add_index, ...) made with the migrator it is given.
Migration = Callable[[SchemaMigrator], list]


def _v2_newest_completed_index(migrator: SchemaMigrator) -> list:
    """Version 2: an index on backup (status, app_id, created_at), covering the search for
    each app's newest completed backup (metrics; with 10 000 backups 28 -> 22 ms)."""
    columns = ("status", "app_id", "created_at")
    if any(tuple(i.columns) == columns for i in migrator.database.get_indexes("backup")):
        return []
    return [migrator.add_index("backup", columns, False)]


def _v3_schedule_state(migrator: SchemaMigrator) -> list:
    """Version 3: the scheduler's memory of each schedule (ScheduleState)."""
    migrator.database.create_tables([ScheduleState], safe=True)
    return []


MIGRATIONS: list[Migration] = [_v2_newest_completed_index, _v3_schedule_state]


def latest_version() -> int:
    return 1 + len(MIGRATIONS)


def safe_url(url: str) -> str:
    """The URL without its password, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


def open_catalog(url: str) -> Database:
    """Connect `database` to `url` and migrate it; CatalogUnavailable names what failed."""
    scheme = urlsplit(url).scheme
    kwargs: dict = {}
    if scheme == "sqlite":
        path = url.split("://", 1)[1][1:]
        if not path or path == ":memory:":
            raise CatalogUnavailable(f"catalog URL {url!r}: give a file path, as in sqlite:////var/lib/catalog.db")
        try:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CatalogUnavailable(f"catalog {path}: cannot create its directory: {exc.strerror}") from None
        try:
            os.close(os.open(path, os.O_CREAT | os.O_RDWR, 0o600))
        except OSError as exc:
            raise CatalogUnavailable(f"catalog {path}: {exc.strerror}") from None
        kwargs["pragmas"] = SQLITE_PRAGMAS
        # every transaction takes the write lock when it begins: a deferred one that read first and
        # then writes fails at once with "database is locked" when another connection wrote meanwhile
        # (WAL cannot upgrade its snapshot; the busy timeout does not apply), which 30 apps' jobs
        # finishing together did
        kwargs["lock_type"] = "IMMEDIATE"
    elif scheme not in ("postgresql", "postgres", "postgresql+pool", "postgres+pool"):
        raise CatalogUnavailable(f"catalog URL {safe_url(url)!r}: use sqlite:///PATH or postgresql://USER@HOST/DB")
    try:
        db = connect(url, **kwargs)
        database.initialize(db)
        db.connect(reuse_if_open=True)
        migrate_schema(db)
    except PeeweeException as exc:
        raise CatalogUnavailable(f"catalog {safe_url(url)}: {_first_line(exc)}") from None
    return db


def _first_line(exc: Exception) -> str:
    text = str(exc).strip() or exc.__class__.__name__
    return text.splitlines()[0]


def schema_version(db: Database) -> int:
    if not SchemaVersion.table_exists():
        return 0
    return SchemaVersion.select(fn.MAX(SchemaVersion.version)).scalar() or 0


def migrate_schema(db: Database) -> int:
    """Bring the schema to the latest version; returns the version found before."""
    latest = latest_version()
    with db.atomic():
        if isinstance(db, PostgresqlDatabase):
            db.execute_sql("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
        found = schema_version(db)
        if found > latest:
            raise OperationalError(
                f"its schema is version {found}, newer than this program's {latest}: upgrade websoft9-backup"
            )
        if found == 0:
            db.create_tables(TABLES, safe=True)
            SchemaVersion.create(version=latest)
            log.info("catalog: created (schema version %d)", latest)
            return 0
        migrator = SchemaMigrator.from_database(db)
        for version in range(found, latest):
            migrate(*MIGRATIONS[version - 1](migrator))
            SchemaVersion.create(version=version + 1)
            log.info("catalog: migrated to schema version %d", version + 1)
    return found


def close_catalog() -> None:
    db = database.obj
    if db is not None and not db.is_closed():
        db.close()
