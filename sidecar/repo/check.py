"""`check`: is every snapshot restorable? Structure always; data on request.

Structure: every index file opens, every pack an index names exists and its
header matches the index, every snapshot opens and every blob its listings
name is indexed. `read_data` (a share of the packs, or all): each pack's bytes
match its name (SHA-256), every group decrypts and every blob matches its id.
Damaged blobs are traced to the snapshots and files that need them.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from sidecar.errors import BackupError
from sidecar.repo import tree
from sidecar.repo.index import iter_index_packs
from sidecar.repo.pack import PackEntry, extract_blob, group_spans, pack_object_name, parse_header, read_header
from sidecar.repo.repository import Repository
from sidecar.repo.snapshot import SnapshotRecord


@dataclass
class CheckReport:
    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    damaged_blobs: set[bytes] = field(default_factory=set)
    affected: dict[str, list[dict]] = field(default_factory=dict)  # snapshot id -> [{source, path, reason}]
    snapshots: int = 0
    packs: int = 0
    blobs: int = 0
    packs_read: int = 0

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_json(self) -> dict:
        return {
            "ok": self.ok,
            "errors": self.errors,
            "notes": self.notes,
            "snapshots": self.snapshots,
            "packs": self.packs,
            "blobs": self.blobs,
            "packs_read": self.packs_read,
            "damaged_blobs": len(self.damaged_blobs),
            "affected": [{"snapshot": sid, "entries": entries} for sid, entries in sorted(self.affected.items())],
        }


def _read_pack(repo: Repository, pack_id: str, expected: list[PackEntry]) -> tuple[list[str], set[bytes]]:
    """Read a whole pack: (problems, damaged blob ids)."""
    problems: list[str] = []
    try:
        data = repo.backend.get(pack_object_name(pack_id))
    except BackupError as exc:
        return [f"pack {pack_id}: {exc}"], {e.blob_id for e in expected}
    if hashlib.sha256(data).hexdigest() != pack_id:
        problems.append(f"pack {pack_id}: content does not match its name (damaged in storage)")
    damaged: set[bytes] = set()
    for (offset, length), members in group_spans(expected).items():
        try:
            group = repo.codec.decode(memoryview(data)[offset : offset + length])
        except BackupError as exc:
            problems.append(f"pack {pack_id}: group at {offset}: {exc}")
            damaged.update(e.blob_id for e in members)
            continue
        for e in members:
            try:
                extract_blob(repo.key, e.blob_id, group, e.inner, e.raw_length)
            except BackupError as exc:
                problems.append(f"pack {pack_id}: {exc}")
                damaged.add(e.blob_id)
    try:
        size = len(data)
        trailer = int.from_bytes(data[-4:], "little")
        parse_header(repo.codec, data[size - 4 - trailer : size - 4])
    except (BackupError, ValueError) as exc:
        problems.append(f"pack {pack_id}: header: {exc}")
    return problems, damaged


def check_repository(
    repo: Repository, read_data_percent: float | None = None, on_progress: Callable[[str], None] = lambda msg: None
) -> CheckReport:
    report = CheckReport()
    # index files, one by one, so a damaged one is named
    by_pack: dict[str, list[PackEntry]] = {}
    superseded: set[str] = set()
    docs = []
    for index_id in repo.list_ids("index"):
        try:
            doc = repo.load_json("index", index_id)
            docs.append((index_id, doc))
            superseded.update(doc.get("supersedes", []))
        except BackupError as exc:
            report.errors.append(f"index {index_id}: {exc}")
    for index_id, doc in docs:
        if index_id in superseded:
            continue
        try:
            for pack_id, entries in iter_index_packs(doc):
                by_pack.setdefault(pack_id, []).extend(entries)
        except BackupError as exc:
            report.errors.append(f"index {index_id}: {exc}")
    index = repo.index(reload=True)
    report.blobs = len(index)
    stored = {name.rsplit("/", 1)[1]: size for name, size in repo.backend.list("data/")}
    report.packs = len(stored)
    damaged = report.damaged_blobs
    on_progress(f"checking {len(by_pack)} packs")
    for pack_id, entries in by_pack.items():
        if pack_id not in stored:
            report.errors.append(f"pack {pack_id} is missing ({len(entries)} blobs)")
            damaged.update(e.blob_id for e in entries)
            continue
        try:
            header = read_header(repo.backend, pack_id, stored[pack_id], repo.codec)
        except BackupError as exc:
            report.errors.append(f"pack {pack_id}: {exc}")
            damaged.update(e.blob_id for e in entries)
            continue
        listed = {(e.blob_id, e.offset, e.length, e.inner, e.raw_length) for e in header}
        for e in entries:
            if (e.blob_id, e.offset, e.length, e.inner, e.raw_length) not in listed:
                report.errors.append(
                    f"pack {pack_id}: index entry for blob {e.blob_id.hex()[:16]} does not match the pack header"
                )
                damaged.add(e.blob_id)
    unreferenced = set(stored) - set(by_pack)
    if unreferenced:
        report.notes.append(
            f"{len(unreferenced)} pack(s) not in any index (left by an interrupted backup; `prune` removes them)"
        )
    if read_data_percent is not None:
        chosen = sorted(p for p in by_pack if p in stored)
        if read_data_percent < 100:
            count = max(1, round(len(chosen) * read_data_percent / 100)) if chosen else 0
            chosen = sorted(random.sample(chosen, count))
        on_progress(f"reading {len(chosen)} packs")
        with ThreadPoolExecutor(2) as pool:
            for problems, bad in pool.map(lambda p: _read_pack(repo, p, by_pack[p]), chosen):
                report.errors.extend(problems)
                damaged.update(bad)
        report.packs_read = len(chosen)
    _check_snapshots(repo, report)
    return report


def _check_snapshots(repo: Repository, report: CheckReport) -> None:
    index = repo.index()
    damaged = report.damaged_blobs
    for snapshot_id in repo.list_ids("snapshots"):
        try:
            snap = repo.load_snapshot(snapshot_id)
        except BackupError as exc:
            report.errors.append(f"snapshot {snapshot_id}: {exc}")
            continue
        report.snapshots += 1
        for problem in _check_snapshot(repo, snap, index, damaged):
            report.affected.setdefault(snapshot_id, []).append(problem)
        if snapshot_id in report.affected:
            entries = report.affected[snapshot_id]
            report.errors.append(
                f"snapshot {snapshot_id[:8]} ({snap.backup_id}): {len(entries)} entries damaged,"
                f" e.g. {entries[0]['source']}:{entries[0]['path']}"
            )


def _check_snapshot(repo: Repository, snap: SnapshotRecord, index: object, damaged: set[bytes]) -> list[dict]:
    problems = []
    for source in snap.sources:
        tree_ids = [bytes.fromhex(h) for h in source.tree]
        bad_tree = [i for i in tree_ids if i not in index or i in damaged]  # type: ignore[operator]
        if bad_tree:
            problems.append(
                {
                    "source": source.name,
                    "path": "(listing)",
                    "reason": f"listing blob {bad_tree[0].hex()[:16]} is missing or damaged",
                }
            )
            continue
        try:
            for entry in tree.read_tree(tree_ids, repo.load_blob):
                blobs = entry.get("blobs")
                if not blobs:
                    continue
                for h in blobs:
                    blob_id = bytes.fromhex(h)
                    if blob_id in damaged or blob_id not in index:  # type: ignore[operator]
                        path = tree.entry_path(entry).decode("utf-8", "backslashreplace")
                        problems.append(
                            {"source": source.name, "path": path, "reason": f"data blob {h[:16]} is missing or damaged"}
                        )
                        break
        except BackupError as exc:
            problems.append({"source": source.name, "path": "(listing)", "reason": str(exc)})
    return problems


def summary(report: dict, limit: int = 50) -> dict:
    """A check report for a job's result: the first `limit` affected snapshots, and how many."""
    return {**report, "affected": report["affected"][:limit], "affected_snapshots": len(report["affected"])}
