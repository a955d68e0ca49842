"""Is a snapshot restorable? Checked before a restore touches anything.

Every listing blob is read (decrypted and authenticated), every data blob it
names is in the index, and every pack holding them exists with a header that
decrypts and lists them. With `read_data`, every such pack is also read
whole: its SHA-256 must match its name and each blob must decrypt.
"""

from __future__ import annotations

from sidecar.errors import BackupCorrupted, BackupError
from sidecar.repo import tree
from sidecar.repo.check import _read_pack
from sidecar.repo.pack import PackEntry, read_header
from sidecar.repo.repository import Repository
from sidecar.repo.snapshot import SnapshotRecord


def verify_snapshot(repo: Repository, snapshot: SnapshotRecord, read_data: bool = False) -> None:
    index = repo.index()
    problems: list[str] = []
    packs: dict[str, set[bytes]] = {}
    for source in snapshot.sources:
        try:
            ids = [bytes.fromhex(h) for h in source.tree]
            for entry in tree.read_tree(ids, repo.load_blob):
                for h in entry.get("blobs") or ():
                    blob_id = bytes.fromhex(h)
                    where = index.get(blob_id)
                    if where is None:
                        problems.append(
                            f"{source.name}:{tree.entry_path(entry).decode('utf-8', 'replace')}: "
                            f"blob {h[:16]} is not in the index"
                        )
                    else:
                        packs.setdefault(where.pack_id, set()).add(blob_id)
        except BackupError as exc:
            problems.append(f"{source.name}: listing: {exc}")
        if len(problems) > 20:
            break
    stored = {name.rsplit("/", 1)[1]: size for name, size in repo.backend.list("data/")}
    for pack_id, blob_ids in sorted(packs.items()):
        if pack_id not in stored:
            problems.append(f"pack {pack_id[:16]} is missing ({len(blob_ids)} blobs of this snapshot)")
            continue
        try:
            header: list[PackEntry] = read_header(repo.backend, pack_id, stored[pack_id], repo.codec)
        except BackupError as exc:
            problems.append(f"pack {pack_id[:16]}: {exc}")
            continue
        listed = {e.blob_id for e in header}
        if not blob_ids <= listed:
            problems.append(f"pack {pack_id[:16]} does not hold blobs the index places there")
            continue
        if read_data:
            found, _damaged = _read_pack(repo, pack_id, header)
            problems.extend(found)
        if len(problems) > 20:
            break
    if problems:
        shown = "; ".join(problems[:5]) + (f" (and {len(problems) - 5} more)" if len(problems) > 5 else "")
        raise BackupCorrupted(f"snapshot {snapshot.id[:8]} cannot be restored, nothing was touched: {shown}")
