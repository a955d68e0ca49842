"""`export`: a snapshot as a portable tar stream (POSIX pax), written as it is read.

Nanosecond mtimes and extended attributes go into pax headers
(`mtime`, `SCHILY.xattr.*`), hard links stay links, owners are numeric.
Sockets cannot be stored in tar and are skipped with a warning.
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Callable
from typing import BinaryIO

from sidecar.repo import tree
from sidecar.repo.fsmeta import decode_xattrs
from sidecar.repo.locks import SHARED
from sidecar.repo.repository import Repository
from sidecar.repo.snapshot import SnapshotRecord


class _BlobReader(io.RawIOBase):
    """Reads a file's content blob by blob (one blob in memory at a time)."""

    def __init__(self, repo: Repository, blob_hexes: list[str]) -> None:
        self._repo = repo
        self._ids = [bytes.fromhex(h) for h in blob_hexes]
        self._buffer = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, b: memoryview) -> int:  # type: ignore[override]
        while not self._buffer and self._ids:
            self._buffer = memoryview(self._repo.load_blob(self._ids.pop(0)))
        n = min(len(b), len(self._buffer))
        b[:n] = self._buffer[:n]
        self._buffer = self._buffer[n:]
        return n


def _tarinfo(name: str, entry: dict) -> tarfile.TarInfo | None:
    info = tarfile.TarInfo(name)
    info.mode = entry["mode"]
    info.uid, info.gid = entry["uid"], entry["gid"]
    mtime = entry["mtime_ns"]
    info.mtime = mtime // 1_000_000_000
    info.pax_headers = {"mtime": f"{mtime // 1_000_000_000}.{mtime % 1_000_000_000:09d}"}
    for xname, value in decode_xattrs(entry):
        info.pax_headers["SCHILY.xattr." + xname] = value.decode("utf-8", "surrogateescape")
    kind = entry["type"]
    if kind == tree.FILE:
        info.type = tarfile.REGTYPE
        info.size = entry.get("size", 0)
    elif kind == tree.DIR:
        info.type = tarfile.DIRTYPE
    elif kind == tree.SYMLINK:
        info.type = tarfile.SYMTYPE
        info.linkname = (tree.get_name(entry, "target") or b"").decode("utf-8", "surrogateescape")
    elif kind == tree.HARDLINK:
        info.type = tarfile.LNKTYPE
        info.linkname = (tree.get_name(entry, "link") or b"").decode("utf-8", "surrogateescape")
    elif kind == tree.FIFO:
        info.type = tarfile.FIFOTYPE
    elif kind == tree.DEVICE:
        info.type = tarfile.CHRTYPE if entry.get("device") == "char" else tarfile.BLKTYPE
        info.devmajor, info.devminor = entry["rdev"]
    else:
        return None
    return info


def export_snapshot(
    repo: Repository,
    snapshot: SnapshotRecord,
    out: BinaryIO,
    *,
    source: str | None = None,
    root_name: str | None = None,
    warn: Callable[[str], None] = lambda m: None,
) -> int:
    """Write the tar stream to `out`; returns the number of entries written. Entries are
    named relative to the source's root, or below `root_name` when given (one source only),
    or below each source's name when there are several."""
    sources = [s for s in snapshot.sources if source is None or s.name == source]
    if not sources:
        from sidecar.errors import InvalidRequest

        raise InvalidRequest(f"snapshot {snapshot.id[:8]} has no source {source!r}")
    count = 0
    with (
        repo.lock(SHARED, "export"),
        tarfile.open(
            fileobj=out, mode="w|", format=tarfile.PAX_FORMAT, encoding="utf-8", errors="surrogateescape"
        ) as tar,
    ):
        for src in sources:
            prefix = root_name.strip("/") if root_name else ("" if len(sources) == 1 else src.name.strip("/"))
            ids = [bytes.fromhex(h) for h in src.tree]
            validator = tree.TreeValidator()
            for entry in tree.read_tree(ids, repo.load_blob):
                rel = validator.check(entry).decode("utf-8", "surrogateescape")
                name = (prefix + "/" + rel if rel != "." else prefix) if prefix else rel
                if entry["type"] == tree.HARDLINK and prefix:
                    entry = dict(
                        entry,
                        link=prefix + "/" + (tree.get_name(entry, "link") or b"").decode("utf-8", "surrogateescape"),
                    )
                    entry.pop("link_b64", None)
                info = _tarinfo(name or ".", entry)
                if info is None:
                    warn(f"{src.name}:{rel}: a {entry['type']} cannot be stored in tar (skipped)")
                    continue
                if info.type == tarfile.REGTYPE:
                    tar.addfile(info, io.BufferedReader(_BlobReader(repo, entry.get("blobs", [])), 1 << 20))
                else:
                    tar.addfile(info)
                count += 1
    return count


def open_stream_file(repo: Repository, snapshot: SnapshotRecord, source: str) -> BinaryIO:
    """The content of the one file of a stream source (a database dump), read blob by blob."""
    src = snapshot.source(source)
    if src is None:
        from sidecar.errors import InvalidRequest

        names = ", ".join(s.name for s in snapshot.sources)
        raise InvalidRequest(f"snapshot {snapshot.id[:8]} has no source {source!r} (it has: {names})")
    files = [e for e in tree.read_tree([bytes.fromhex(h) for h in src.tree], repo.load_blob) if e["type"] == tree.FILE]
    if len(files) != 1:
        from sidecar.errors import InvalidRequest

        raise InvalidRequest(f"source {source!r} of snapshot {snapshot.id[:8]} is not a single stream")
    return StreamFile(_BlobReader(repo, files[0].get("blobs", [])), files[0].get("size", 0))


class StreamFile(io.BufferedReader):
    """A stored stream, readable front to back; `size` is its length as recorded."""

    def __init__(self, raw: io.RawIOBase, size: int) -> None:
        super().__init__(raw, 1 << 20)
        self.size = size
