"""The catalog: backups, schedules, jobs and app state in SQLite or PostgreSQL (peewee)."""

from sidecar.catalog.db import open_catalog
from sidecar.catalog.records import Catalog, RepositoryInfo

__all__ = ["Catalog", "RepositoryInfo", "open_catalog"]
