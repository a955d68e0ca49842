"""The catalog: backups, schedules, jobs and app state in SQLite or PostgreSQL (peewee)."""

from sidecar.catalog.db import default_url, open_catalog
from sidecar.catalog.records import Catalog, RepositoryInfo

__all__ = ["Catalog", "RepositoryInfo", "default_url", "open_catalog"]
