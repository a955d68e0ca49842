"""A directory tree that arrives as a tar stream (Docker's archive API) as a snapshot source.

The listing it writes is the one a walk of the same directory writes (paths,
types, modes, owners, mtimes, link targets, hard links, xattrs), without the
inode and ctime a walk records: every file of a tar stream is read, and
deduplication keeps unchanged data from being stored twice. Docker's archive
API lists a directory depth first with siblings sorted by name, which is the
listing's order; an entry out of that order is an error, not a silent mix-up.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable

from sidecar.errors import BackupCreateFailed
from sidecar.repo import tree
from sidecar.repo.pack import DATA
from sidecar.repo.tarread import ChunkReader, Member, TarError, members
from sidecar.repo.walk import compile_excludes

SMALL_FILE = 4 << 20  # contents up to this size go to a worker in a batch; bigger ones are chunked here
BATCH_FILES = 64
MAX_PENDING = 4096

_TYPES = {b"0": tree.FILE, b"5": tree.DIR, b"2": tree.SYMLINK, b"6": tree.FIFO, b"3": tree.DEVICE, b"4": tree.DEVICE}


def _relative(name: bytes, strip: bytes) -> bytes | None:
    """The path below the source root, b"." for the root itself, None outside it."""
    path = name.strip(b"/")
    while path.startswith(b"./"):
        path = path[2:]
    root = strip.strip(b"/")
    if not root or root == b".":
        return path if path and path != b"." else b"."
    if path == root:
        return b"."
    if path.startswith(root + b"/"):
        return path[len(root) + 1 :]
    return None


def entry_from_member(member: Member, rel: bytes) -> dict:
    entry: dict = {}
    tree.put_name(entry, "path", rel)
    kind = _TYPES.get(member.type)
    if kind is None:
        raise BackupCreateFailed(f"{rel.decode('utf-8', 'replace')}: unsupported tar entry type {member.type!r}")
    entry["type"] = kind
    if kind == tree.SYMLINK:
        tree.put_name(entry, "target", member.linkname)
    elif kind == tree.DEVICE:
        entry["device"] = "char" if member.type == b"3" else "block"
        entry["rdev"] = [member.devmajor, member.devminor]
    entry["mode"] = member.mode
    entry["uid"] = member.uid
    entry["gid"] = member.gid
    entry["mtime_ns"] = member.mtime_ns
    if member.xattrs:
        entry["xattrs"] = [[base64.b64encode(k).decode(), base64.b64encode(v).decode()] for k, v in member.xattrs]
    return entry


def _hardlink(member: Member, rel: bytes, strip: bytes) -> dict:
    first = _relative(member.linkname, strip)
    link = {"mode": member.mode, "uid": member.uid, "gid": member.gid, "mtime_ns": member.mtime_ns}
    tree.put_name(link, "path", rel)
    link["type"] = tree.HARDLINK
    tree.put_name(link, "link", first if first is not None else member.linkname)
    return link


def scan_tar(scan, chunks: Iterable[bytes], strip: str, excludes: tuple[str, ...]) -> list[bytes]:
    """Fill `scan` (a backup `_TreeScan` without a walker) from a tar stream given as an
    iterator of byte chunks; returns the listing's ids."""
    strip_b = strip.encode("utf-8", "surrogateescape")
    excluded = compile_excludes(excludes)
    skipped_dirs: list[bytes] = []
    last_key: tuple[bytes, ...] | None = None
    writer = scan.writer
    chunker = scan.session.repo.chunker
    pending = scan.pending
    try:
        for member in members(ChunkReader(chunks)):
            rel = _relative(member.name, strip_b)
            if rel is None:
                continue
            if rel != b"." and (excluded is not None or skipped_dirs):
                name = rel.rsplit(b"/", 1)[-1]
                if any(rel.startswith(d + b"/") for d in skipped_dirs) or (
                    excluded is not None and excluded(rel, name)
                ):
                    if member.type == b"5":
                        skipped_dirs.append(rel)
                    continue
            key = tree.path_key(rel)
            if last_key is not None and key <= last_key:
                raise BackupCreateFailed(
                    f"the tar stream is not in tree order at {rel.decode('utf-8', 'replace')!r}; cannot list it"
                )
            last_key = key
            if member.type == b"1":
                pending.append((_hardlink(member, rel, strip_b), None, 0))
                scan._emit_ready()
                continue
            entry = entry_from_member(member, rel)
            batch, place = None, 0
            content = member.content
            if content is not None:
                if member.size <= SMALL_FILE:
                    data = content.read_all()
                    batch = scan.batch
                    place = len(batch.files)
                    batch.files.append((data, len(data)))
                    batch.nbytes += len(data)
                    if len(batch.files) >= BATCH_FILES or batch.nbytes >= SMALL_FILE:
                        scan._flush_batch()
                else:
                    blobs, size = [], 0
                    scan.session.check_size(member.size)  # max_bytes: before this file is stored
                    scan.session.plan(member.size)
                    for chunk in chunker.split_stream(content):
                        blobs.append(writer.store(DATA, chunk, scan.key).hex())
                        size += len(chunk)
                    entry["blobs"] = blobs
                    entry["size"] = size
            pending.append((entry, batch, place))
            scan._emit_ready()
            if len(pending) > MAX_PENDING:
                scan._wait_head()
    except TarError as exc:
        raise BackupCreateFailed(f"{scan.name}: the tar stream is damaged or ended early: {exc}") from None
    scan._flush_batch()
    while pending:
        scan._wait_head()
    return scan.listing.finish()
