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
import io
import tarfile
from collections.abc import Iterable, Iterator
from decimal import Decimal, InvalidOperation

from sidecar.errors import BackupCreateFailed
from sidecar.repo import tree
from sidecar.repo.pack import DATA
from sidecar.repo.walk import compile_excludes

SMALL_FILE = 4 << 20  # contents up to this size go to a worker in a batch; bigger ones are chunked here
XATTR_PREFIX = "SCHILY.xattr."


class IterStream(io.RawIOBase):
    """A readable binary file over an iterator of byte chunks (an HTTP response body)."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks: Iterator[bytes] = iter(chunks)
        self._left = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[override]
        while not self._left:
            chunk = next(self._chunks, None)
            if chunk is None:
                return 0
            self._left = memoryview(chunk)
        n = min(len(buffer), len(self._left))
        buffer[:n] = self._left[:n]
        self._left = self._left[n:]
        return n


def _raw(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def _mtime_ns(member: tarfile.TarInfo) -> int:
    text = member.pax_headers.get("mtime")
    if text:
        try:
            return int(Decimal(text) * 1_000_000_000)
        except InvalidOperation:
            pass
    return int(member.mtime) * 1_000_000_000


def _relative(name: str, strip: str) -> bytes | None:
    """The path below the source root, b"." for the root itself, None outside it."""
    path = _raw(name).strip(b"/")
    if path.startswith(b"./"):
        path = path[2:]
    root = _raw(strip).strip(b"/")
    if not root or root == b".":
        return path or b"."
    if path == root:
        return b"."
    if path.startswith(root + b"/"):
        return path[len(root) + 1 :]
    return None


def entry_from_member(member: tarfile.TarInfo, rel: bytes) -> dict:
    entry: dict = {}
    tree.put_name(entry, "path", rel)
    if member.isreg():
        entry["type"] = tree.FILE
    elif member.isdir():
        entry["type"] = tree.DIR
    elif member.issym():
        entry["type"] = tree.SYMLINK
        tree.put_name(entry, "target", _raw(member.linkname))
    elif member.isfifo():
        entry["type"] = tree.FIFO
    elif member.ischr() or member.isblk():
        entry["type"] = tree.DEVICE
        entry["device"] = "char" if member.ischr() else "block"
        entry["rdev"] = [member.devmajor, member.devminor]
    else:
        raise BackupCreateFailed(f"{rel.decode('utf-8', 'replace')}: unsupported tar entry type {member.type!r}")
    entry["mode"] = member.mode & 0o7777
    entry["uid"] = member.uid
    entry["gid"] = member.gid
    entry["mtime_ns"] = _mtime_ns(member)
    xattrs = [
        [base64.b64encode(_raw(k[len(XATTR_PREFIX) :])).decode(), base64.b64encode(_raw(v)).decode()]
        for k, v in sorted(member.pax_headers.items())
        if k.startswith(XATTR_PREFIX)
    ]
    if xattrs:
        entry["xattrs"] = xattrs
    return entry


def scan_tar(scan, stream, strip: str, excludes: tuple[str, ...]) -> list[bytes]:
    """Fill `scan` (a backup `_TreeScan` without a walker) from a tar stream; returns the listing's ids."""
    excluded = compile_excludes(excludes)
    skipped_dirs: list[bytes] = []
    last_key: tuple[bytes, ...] | None = None
    writer = scan.writer
    chunker = scan.session.repo.chunker
    pending = scan.pending
    with tarfile.open(fileobj=stream, mode="r|", bufsize=1 << 20) as archive:
        for member in archive:
            rel = _relative(member.name, strip)
            if rel is None:
                continue
            if excluded is not None and rel != b".":
                name = rel.rsplit(b"/", 1)[-1]
                if excluded(rel, name) or any(rel.startswith(d + b"/") for d in skipped_dirs):
                    if member.isdir():
                        skipped_dirs.append(rel)
                    continue
            key = tree.path_key(rel)
            if last_key is not None and key <= last_key:
                raise BackupCreateFailed(
                    f"the tar stream is not in tree order at {rel.decode('utf-8', 'replace')!r}; cannot list it"
                )
            last_key = key
            if member.islnk():
                first = _relative(member.linkname, strip)
                link = {"mode": member.mode & 0o7777, "uid": member.uid, "gid": member.gid}
                link["mtime_ns"] = _mtime_ns(member)
                tree.put_name(link, "path", rel)
                link["type"] = tree.HARDLINK
                tree.put_name(link, "link", first if first is not None else _raw(member.linkname))
                pending.append((link, None, 0))
                scan._emit_ready()
                continue
            entry = entry_from_member(member, rel)
            batch, place = None, 0
            if member.isreg():
                data = archive.extractfile(member)
                assert data is not None
                if member.size <= SMALL_FILE:
                    content = data.read()
                    batch = scan.batch
                    place = len(batch.files)
                    batch.files.append((content, len(content)))
                    batch.nbytes += len(content)
                    if len(batch.files) >= 64 or batch.nbytes >= SMALL_FILE:
                        scan._flush_batch()
                else:
                    blobs, size = [], 0
                    for chunk in chunker.split_stream(data):
                        blobs.append(writer.store(DATA, chunk, scan.key).hex())
                        size += len(chunk)
                    entry["blobs"] = blobs
                    entry["size"] = size
            pending.append((entry, batch, place))
            scan._emit_ready()
            if len(pending) > 4096:
                scan._wait_head()
    scan._flush_batch()
    while pending:
        scan._wait_head()
    return scan.listing.finish()
