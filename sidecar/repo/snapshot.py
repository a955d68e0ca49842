"""Snapshot records (what one backup of one app contains) and their JSON form."""

from __future__ import annotations

import secrets
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

from sidecar.errors import IntegrityError

BACKUP_TYPES = ("full", "incremental", "differential")
SOURCE_KINDS = ("volume", "database", "path", "stream")


def new_backup_id(when: datetime) -> str:
    """`backup_20260105_103000_<6 hex>`: sortable, readable, unique."""
    return f"backup_{when.astimezone(UTC):%Y%m%d_%H%M%S}_{secrets.token_hex(3)}"


def format_time(when: datetime) -> str:
    return when.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


@dataclass
class SourceStats:
    files: int = 0
    dirs: int = 0
    other: int = 0
    bytes: int = 0  # logical size of the files
    new_blobs: int = 0
    added_bytes: int = 0  # plaintext bytes of blobs this backup added
    stored_bytes: int = 0  # their size in the repository (compressed + sealed)
    reused_files: int = 0  # unchanged files whose content list came from the parent
    skipped: int = 0  # unreadable entries (see the snapshot's warnings)

    def add(self, other: SourceStats) -> None:
        for k, v in asdict(other).items():
            setattr(self, k, getattr(self, k) + v)


@dataclass
class SourceRecord:
    name: str
    kind: str
    tree: list[str]  # blob ids (hex) of the tree text, in order
    stats: SourceStats = field(default_factory=SourceStats)
    engine: str | None = None
    root_path: str | None = None  # where it was read from (informational)
    # a database dump: the server's change counters just before it began (see sidecar.databases)
    fingerprint: str | None = None
    # the snapshot whose dump this one carries over, the server unchanged since (a safety snapshot)
    reused_from: str | None = None

    def to_json(self) -> dict:
        doc = {"name": self.name, "kind": self.kind, "tree": self.tree, "stats": asdict(self.stats)}
        for key in ("engine", "root_path", "fingerprint", "reused_from"):
            if getattr(self, key):
                doc[key] = getattr(self, key)
        return doc

    @classmethod
    def from_json(cls, doc: dict) -> SourceRecord:
        stats = SourceStats(**{k: v for k, v in doc.get("stats", {}).items() if k in SourceStats.__dataclass_fields__})
        return cls(
            doc["name"],
            doc["kind"],
            list(doc["tree"]),
            stats,
            doc.get("engine"),
            doc.get("root_path"),
            doc.get("fingerprint"),
            doc.get("reused_from"),
        )


@dataclass
class SnapshotRecord:
    """One backup. `id` is the repository object name; `backup_id` the API's name."""

    backup_id: str
    app_id: str
    app_name: str
    time: datetime
    backup_type: str
    hostname: str
    sources: list[SourceRecord]
    parent: str | None = None
    tags: list[str] = field(default_factory=list)
    description: str | None = None
    status: str = "completed"
    warnings: list[dict] = field(default_factory=list)
    duration_s: float = 0.0
    program_version: str = ""
    id: str = ""

    @property
    def totals(self) -> SourceStats:
        total = SourceStats()
        for s in self.sources:
            total.add(s.stats)
        return total

    def to_json(self) -> dict:
        totals = asdict(self.totals)
        totals["duration_s"] = round(self.duration_s, 3)
        return {
            "version": 1,
            "backup_id": self.backup_id,
            "app_id": self.app_id,
            "app_name": self.app_name,
            "time": format_time(self.time),
            "backup_type": self.backup_type,
            "parent": self.parent,
            "hostname": self.hostname,
            "tags": self.tags,
            "description": self.description,
            "status": self.status,
            "sources": [s.to_json() for s in self.sources],
            "totals": totals,
            "warnings": self.warnings,
            "program_version": self.program_version,
        }

    @classmethod
    def from_json(cls, doc: dict, snapshot_id: str) -> SnapshotRecord:
        try:
            return cls(
                backup_id=doc["backup_id"],
                app_id=doc["app_id"],
                app_name=doc.get("app_name", doc["app_id"]),
                time=parse_time(doc["time"]),
                backup_type=doc["backup_type"],
                hostname=doc.get("hostname", ""),
                sources=[SourceRecord.from_json(s) for s in doc["sources"]],
                parent=doc.get("parent"),
                tags=list(doc.get("tags", [])),
                description=doc.get("description"),
                status=doc.get("status", "completed"),
                warnings=list(doc.get("warnings", [])),
                duration_s=float(doc.get("totals", {}).get("duration_s", 0.0)),
                program_version=doc.get("program_version", ""),
                id=snapshot_id,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise IntegrityError(f"damaged snapshot {snapshot_id[:12]}: {exc!r}") from None

    def source(self, name: str) -> SourceRecord | None:
        return next((s for s in self.sources if s.name == name), None)
