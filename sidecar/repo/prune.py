"""`prune`: free the space of data no snapshot uses, under an exclusive lock.

Order, so that a crash at any point leaves a repository that checks clean:
1. find the blobs every snapshot uses (refuse if any listing cannot be read);
2. copy the used groups of mostly-unused packs into new packs (stored, fsynced);
3. write one new index of everything kept, superseding all old index files;
4. delete the old index files, then the packs nothing references any more.
A crash before 3 leaves extra packs; after 3 the old indexes are ignored.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from sidecar.errors import BackupCorrupted, BackupError
from sidecar.repo import tree
from sidecar.repo.index import index_document, iter_index_packs
from sidecar.repo.locks import EXCLUSIVE
from sidecar.repo.pack import PackEntry, PackWriter, group_spans, pack_object_name
from sidecar.repo.repository import Repository

log = logging.getLogger(__name__)


@dataclass
class PruneReport:
    used_blobs: int = 0
    packs_kept: int = 0
    packs_deleted: int = 0
    packs_repacked: int = 0
    packs_written: int = 0
    bytes_freed: int = 0
    staged_removed: int = 0
    dry_run: bool = False
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return dict(self.__dict__)


def used_blobs(repo: Repository) -> set[bytes]:
    """Every blob (listing and data) some snapshot needs. Raises if one cannot be read."""
    used: set[bytes] = set()
    for snap in repo.list_snapshots():
        for source in snap.sources:
            ids = [bytes.fromhex(h) for h in source.tree]
            used.update(ids)
            try:
                for entry in tree.read_tree(ids, repo.load_blob):
                    for h in entry.get("blobs", ()):
                        used.add(bytes.fromhex(h))
            except BackupError as exc:
                raise BackupCorrupted(
                    f"prune refused: the listing of snapshot {snap.id[:8]} source {source.name}"
                    f" cannot be read ({exc}); run `check` first"
                ) from None
    return used


def prune_repository(
    repo: Repository,
    *,
    max_unused_percent: float = 50.0,
    dry_run: bool = False,
    lock_wait: float = 0.0,
    on_progress: Callable[[str], None] = lambda m: None,
) -> PruneReport:
    report = PruneReport(dry_run=dry_run)
    with repo.lock(EXCLUSIVE, "prune", lock_wait) as lock:
        index_ids = repo.list_ids("index")
        docs = {i: repo.load_json("index", i) for i in index_ids}
        superseded = {s for d in docs.values() for s in d.get("supersedes", [])}
        by_pack: dict[str, list[PackEntry]] = {}
        for index_id, doc in docs.items():
            if index_id not in superseded:
                for pack_id, entries in iter_index_packs(doc):
                    by_pack.setdefault(pack_id, []).extend(entries)
        on_progress("finding used data")
        used = used_blobs(repo)
        report.used_blobs = len(used)
        stored = {name.rsplit("/", 1)[1]: size for name, size in repo.backend.list("data/")}
        missing = used - {e.blob_id for entries in by_pack.values() for e in entries}
        if missing:
            raise BackupCorrupted(
                f"prune refused: {len(missing)} blobs that snapshots need are not indexed; run `check`"
            )

        kept: dict[str, list[PackEntry]] = {}
        repack: dict[str, list[list[PackEntry]]] = {}
        delete: list[str] = [p for p in stored if p not in by_pack]  # never indexed: interrupted backups
        have: set[bytes] = set()  # blobs already kept in some pack (drop duplicate copies)
        for pack_id, entries in sorted(by_pack.items()):
            if pack_id not in stored:
                report.notes.append(f"indexed pack {pack_id[:12]} is missing; its entries are dropped")
                continue
            groups = group_spans(entries)
            keep_groups = [m for m in groups.values() if any(e.blob_id in used and e.blob_id not in have for e in m)]
            for members in keep_groups:
                have.update(e.blob_id for e in members)
            kept_bytes = sum(m[0].length for m in keep_groups)
            total = sum(m[0].length for m in groups.values())
            if not keep_groups:
                delete.append(pack_id)
            elif kept_bytes < total * (1 - max_unused_percent / 100):
                repack[pack_id] = keep_groups
            else:
                kept[pack_id] = entries
        report.packs_deleted = len(delete)
        report.packs_repacked = len(repack)
        report.packs_kept = len(kept)
        report.bytes_freed = sum(stored[p] for p in delete) + sum(
            stored[p] - sum(m[0].length for m in groups) for p, groups in repack.items()
        )
        if dry_run:
            return report

        on_progress(f"repacking {len(repack)} packs")
        for pack_id, entries in _repack(repo, repack):
            kept[pack_id] = entries
            report.packs_written += 1
        lock.check()
        new_index = repo.save_json("index", index_document(sorted(kept.items()), supersedes=index_ids))
        for index_id in index_ids:
            repo.backend.delete(f"index/{index_id}")
        for pack_id in [*delete, *repack]:
            repo.backend.delete(pack_object_name(pack_id))
        for name, _size in repo.backend.list("tmp/"):
            repo.backend.delete(name)  # staged files of crashed writers (we hold the exclusive lock)
            report.staged_removed += 1
        repo.index(reload=True)
        log.info("prune: new index %s", new_index[:12])
    return report


def _repack(repo: Repository, repack: dict[str, list[list[PackEntry]]]):
    """Copy kept groups (checked by decrypting) into new packs; yields (pack id, entries)."""
    writer: PackWriter | None = None
    for pack_id, groups in sorted(repack.items()):
        for members in groups:
            first = members[0]
            sealed = repo.backend.get(pack_object_name(pack_id), first.offset, first.length)
            repo.codec.decode(sealed)  # authenticates: never copy damaged data silently
            if writer is None:
                writer = PackWriter(repo.codec, repo.backend.staging_dir)
            writer.add_group(sealed, [(e.blob_id, e.type, e.inner, e.raw_length) for e in members])
            if writer.size >= repo.pack_size:
                yield _store(repo, writer)
                writer = None
    if writer is not None:
        yield _store(repo, writer)


def _store(repo: Repository, writer: PackWriter) -> tuple[str, list[PackEntry]]:
    info = writer.finish()
    repo.backend.put(pack_object_name(info.name), info.path)
    return info.name, list(info.entries)
