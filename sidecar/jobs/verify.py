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
    by_number: dict[int, set[bytes]] = {}
    for source in snapshot.sources:
        try:
            ids = [bytes.fromhex(h) for h in source.tree]
            for line in tree.read_lines(ids, repo.load_blob):
                blobs = tree.line_blob_ids(line)  # a file's line, read without parsing it (it is authenticated)
                if blobs is None:
                    blobs = [bytes.fromhex(h) for h in tree.parse_line(line).get("blobs") or ()]
                if not blobs:
                    continue
                for blob_id in index.add_pack_numbers(blobs, by_number):
                    path = tree.entry_path(tree.parse_line(line)).decode("utf-8", "replace")
                    problems.append(f"{source.name}:{path}: blob {blob_id.hex()[:16]} is not in the index")
        except BackupError as exc:
            problems.append(f"{source.name}: listing: {exc}")
        if len(problems) > 20:
            break
    packs = {index.pack_id(number): blob_ids for number, blob_ids in by_number.items()}
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
