"""`catalog rebuild`: the Backup rows again from the repository, which is the truth.

Every snapshot gets its row (added, or updated where it differs); rows of
completed backups whose snapshot is gone from this repository (forgotten, or
the catalog was copied from elsewhere) are removed; failed attempts, which
have no snapshot, are kept. Safe to run at any time, and after the catalog
file was lost it gives back every backup.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sidecar.catalog.models import Backup, database
from sidecar.catalog.records import Catalog, RepositoryInfo, snapshot_fields
from sidecar.repo.repository import Repository


@dataclass
class RebuildReport:
    snapshots: int = 0
    added: int = 0
    updated: int = 0
    removed: int = 0
    problems: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {
            "snapshots": self.snapshots,
            "added": self.added,
            "updated": self.updated,
            "removed": self.removed,
            "problems": self.problems,
        }


_COMPARED = ("snapshot_id", "status", "size_bytes", "app_id", "backup_type", "tags", "description", "file_path")


def rebuild_catalog(catalog: Catalog, repo: Repository, info: RepositoryInfo) -> RebuildReport:
    snaps = repo.list_snapshots()
    report = RebuildReport(snapshots=len(snaps), problems=list(repo.problems))
    by_id = {s.backup_id: s for s in snaps}
    with database.atomic():
        existing = {
            row.backup_id: row for row in Backup.select().where(Backup.repository == info.location)
        }  # fmt: skip
        for backup_id, snap in by_id.items():
            row = existing.get(backup_id) or Backup.get_or_none(Backup.backup_id == backup_id)
            if row is None:
                Backup.create(**snapshot_fields(snap, info))
                report.added += 1
                continue
            fields = snapshot_fields(snap, info)
            if any(getattr(row, k) != fields[k] for k in _COMPARED):
                Backup.update(**fields).where(Backup.backup_id == backup_id).execute()
                report.updated += 1
        gone = [b for b, row in existing.items() if b not in by_id and row.status == "completed"]
        for start in range(0, len(gone), 500):
            report.removed += Backup.delete().where(Backup.backup_id.in_(gone[start : start + 500])).execute()
    return report
