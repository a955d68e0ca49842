"""`repair index`: rebuild the index from the packs' own headers, under an exclusive lock.

Every pack carries a sealed header listing its blobs, so a lost or damaged
index file costs nothing that is stored. Repair:
1. reads every index file it can (damaged ones are named and left out);
2. reads the header of every stored pack those do not name (with
   `read_all_packs`, of every pack, trusting headers over index files);
3. writes one new index of every stored pack with a readable header or a
   readable index entry, superseding every old index file (damaged ones too);
4. deletes the old index files.
Index entries of packs that are no longer stored are dropped (and reported);
packs whose header cannot be read are reported and left in place. A crash
before 3 changes nothing; after 3 the old files are ignored, as after prune.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from sidecar.errors import BackupError
from sidecar.repo.index import index_document, iter_index_packs
from sidecar.repo.locks import EXCLUSIVE
from sidecar.repo.pack import PackEntry, read_header
from sidecar.repo.repository import Repository

log = logging.getLogger(__name__)


@dataclass
class RepairReport:
    index_files: int = 0  # index files found
    damaged_index_files: list[str] = field(default_factory=list)
    packs: int = 0  # stored packs
    packs_read: int = 0  # headers read
    packs_added: int = 0  # stored packs no readable index named, now indexed
    damaged_packs: list[str] = field(default_factory=list)  # "pack id: reason"
    missing_packs: list[str] = field(default_factory=list)  # indexed, not stored: entries dropped
    blobs: int = 0  # entries in the new index
    new_index: str | None = None
    dry_run: bool = False

    @property
    def changed(self) -> bool:
        return bool(self.packs_added or self.damaged_index_files or self.missing_packs)

    def to_json(self) -> dict:
        return {**self.__dict__, "changed": self.changed}


def repair_index(
    repo: Repository,
    *,
    read_all_packs: bool = False,
    dry_run: bool = False,
    lock_wait: float = 0.0,
    on_progress: Callable[[str], None] = lambda m: None,
) -> RepairReport:
    report = RepairReport(dry_run=dry_run)
    with repo.lock(EXCLUSIVE, "repair", lock_wait) as lock:
        index_ids = repo.list_ids("index")
        report.index_files = len(index_ids)
        docs: dict[str, dict] = {}
        parsed: dict[str, list[tuple[str, list[PackEntry]]]] = {}  # index id -> its packs, validated
        for index_id in index_ids:
            try:
                docs[index_id] = repo.load_json("index", index_id)
                parsed[index_id] = list(iter_index_packs(docs[index_id]))
            except BackupError as exc:
                docs.pop(index_id, None)
                report.damaged_index_files.append(index_id)
                log.warning("index %s is damaged and will be replaced: %s", index_id, exc)
        superseded = {s for doc in docs.values() for s in doc.get("supersedes", [])}
        named: dict[str, list[PackEntry]] = {}  # what the readable, current index files say
        for index_id, packs_of in parsed.items():
            if index_id not in superseded:
                for pack_id, entries in packs_of:
                    named.setdefault(pack_id, []).extend(entries)
        indexed = {} if read_all_packs else named

        stored = {name.rsplit("/", 1)[1]: size for name, size in repo.backend.list("data/")}
        report.packs = len(stored)
        report.missing_packs = sorted(set(named) - set(stored))
        packs: dict[str, list[PackEntry]] = {p: _unique(e) for p, e in indexed.items() if p in stored}
        to_read = sorted(set(stored) - set(packs))
        on_progress(f"reading {len(to_read)} pack headers")
        for n, pack_id in enumerate(to_read, 1):
            try:
                packs[pack_id] = read_header(repo.backend, pack_id, stored[pack_id], repo.codec)
            except BackupError as exc:
                report.damaged_packs.append(f"{pack_id}: {exc}")
                log.warning("pack %s: header unreadable, left out of the index: %s", pack_id, exc)
                continue
            report.packs_read += 1
            if n % 200 == 0:
                on_progress(f"read {n} of {len(to_read)} pack headers")
                lock.check()
        report.packs_added = len(set(packs) - set(named))
        report.blobs = sum(len(e) for e in packs.values())
        if dry_run or not (report.changed or read_all_packs):
            return report
        lock.check()
        report.new_index = repo.save_json("index", index_document(sorted(packs.items()), supersedes=index_ids))
        for index_id in index_ids:
            repo.backend.delete(f"index/{index_id}")
        repo.index(reload=True)
        log.info("repair: new index %s of %d packs", report.new_index[:12], len(packs))
    return report


def _unique(entries: list[PackEntry]) -> list[PackEntry]:
    """One entry per blob of a pack (two index files may name the same pack)."""
    seen: dict[bytes, PackEntry] = {}
    for e in entries:
        seen.setdefault(e.blob_id, e)
    return list(seen.values())
