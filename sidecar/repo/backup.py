"""Back up directory trees and byte streams into one snapshot.

The caller's thread walks the tree in tree order, decides which files changed
since the parent snapshot and writes the listing; changed files go in batches
to store worker processes (see `storeworker`) that read, chunk, hash,
compress, seal and pack them. Every hand-over is bounded, so memory stays
flat whatever the size of the data.
"""

from __future__ import annotations

import collections
import itertools
import logging
import os
import socket
import stat
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from stat import S_ISDIR, S_ISREG
from typing import BinaryIO, NamedTuple, Protocol

from sidecar import __version__
from sidecar.errors import BackupCreateFailed, InvalidRequest, QuotaExceeded
from sidecar.repo import forked, tree
from sidecar.repo.blobwriter import BlobWriter, FileBatch
from sidecar.repo.fsmeta import FILE_HEAD, XattrReader, entry_from_stat, file_line_head
from sidecar.repo.locks import SHARED
from sidecar.repo.memory import bulk_data
from sidecar.repo.pack import DATA, TREE
from sidecar.repo.repository import Repository
from sidecar.repo.snapshot import BACKUP_TYPES, SnapshotRecord, SourceRecord, SourceStats, new_backup_id
from sidecar.repo.walk import Walker

log = logging.getLogger(__name__)

BATCH_FILES = 64
BATCH_BYTES = 4 << 20
MAX_PENDING = 4096  # entries walked but not yet written to the listing
# an incremental backup compares a tree of this many entries (its parent's count) on two cores
SPLIT_MIN_ENTRIES = 50_000
SPLIT_MAX_ENTRIES = 2_000_000  # the parent listing is held in memory meanwhile (~200 bytes a line)
_UNCHANGED, _OTHER, _ERROR = 0, 1, 2  # what the child says of an entry
RUN_FILES = 2048  # lines of unchanged files and directories taken in one go (`_take_unchanged`)
_MORE = ()  # `_take_unchanged` stopped at RUN_FILES: more may follow


class _Run(NamedTuple):
    """Listing lines waiting in `_TreeScan.pending`: unchanged files' and directories'."""

    text: bytes  # the lines joined by newlines
    size: int  # of the files
    files: int
    lines: int


class Progress(Protocol):
    def add(self, files: int, nbytes: int) -> None: ...


@dataclass
class BackupOptions:
    app_id: str
    app_name: str | None = None
    backup_type: str = "incremental"
    tags: list[str] = field(default_factory=list)
    description: str | None = None
    backup_id: str | None = None  # assigned by the caller (the API shows it while the backup runs)
    hostname: str = field(default_factory=socket.gethostname)
    lock_wait: float = 600.0
    # store worker processes; each also runs two encoder threads, so one core is left to
    # the parent (measured on 2 cores: 1 worker 11.2-12.7 s and 190 MiB, 2 workers 12.5-13.9 s and 280 MiB)
    workers: int | None = None
    # limits.max_backup_size_gb (BACKUP_MAX_BACKUP_SIZE_GB): a bigger backup is refused, nothing recorded
    max_bytes: int | None = field(default_factory=lambda: size_limit_from_env())


def size_limit_from_env() -> int | None:
    text = os.environ.get("BACKUP_MAX_BACKUP_SIZE_GB", "").strip()
    if not text:
        return None
    if not text.isdigit() or int(text) < 1:
        raise InvalidRequest(f"BACKUP_MAX_BACKUP_SIZE_GB: must be a whole number of GB from 1, got {text!r}")
    return int(text) * 10**9


class _ParentCursor:
    """Finds walked paths among the parent listing's raw lines, which are in the
    same order; a line's path is read off it only when a walked path does not
    match the line at the cursor outright, and parsed only when it cannot be read off.
    The listing comes in pieces of whole lines (`tree.read_texts`)."""

    def __init__(self, texts: Iterable[bytes]) -> None:
        self.lines = itertools.chain.from_iterable(text.split(b"\n") for text in texts)  # after `line`
        self._plain = False  # the line's path was read off it: JSON holds it as is
        self.found_plain = False  # so was the path of the line `find` returned last
        self._path: bytes | None = None  # of `line`, once read
        self._key = b""
        self.line: bytes | None = next(self.lines, None)

    def take(self) -> None:
        """Move past the line at the cursor (the caller matched it)."""
        self.line = next(self.lines, None)
        self._path = None

    def moved_to(self, line: bytes | None) -> None:
        """The caller took lines from `lines` itself; `line` is the one at the cursor now."""
        if line is not self.line:
            self.line = line
            self._path = None

    def _read_path(self, line: bytes) -> bytes:
        path = tree.line_path(line)
        self._plain = path is not None
        self._path = path = tree.entry_path(tree.parse_line(line)) if path is None else path
        self._key = order_key(path)
        return path

    def find(self, rel: bytes) -> bytes | None:
        """The parent's line of `rel` (the cursor moves past it), or None."""
        key = None
        while (line := self.line) is not None:
            path = self._path if self._path is not None else self._read_path(line)
            if path == rel:
                self.found_plain = self._plain
                self.take()
                return line
            if key is None:
                key = order_key(rel)
            if self._key > key:
                return None
            self.take()
        return None


def _has_head(line: bytes, head: bytes) -> bool:
    """Whether a parent's file line is the entry `head` (a file line up to its last stat
    field) stands for: xattrs and blobs follow in the line, after a comma."""
    return line.startswith(head) and line[len(head) : len(head) + 1] == b","


def split_chunk(sizes: list[int]) -> int:
    """At which chunk a parent listing of chunks of `sizes` bytes is cut in two for a split
    scan: where the bytes before come nearest half of them (the lines of a listing are much
    alike in length, and its chunks are not: 0.5 to 4 MiB), the earlier of two as near.
    0 for one chunk (it is not cut there)."""
    half = sum(sizes) / 2
    best, before, nearest = 0, 0, float("inf")
    for at in range(1, len(sizes)):
        before += sizes[at - 1]
        if abs(before - half) < nearest:
            best, nearest = at, abs(before - half)
    return best


def split_index(count: int) -> int:
    """Where a parent listing of one chunk, `count` lines (count >= 2), is cut in two for a split scan."""
    return count // 2


def _line_path(line: bytes) -> bytes:
    return tree.line_path(line) or tree.entry_path(tree.parse_line(line))


def cut_texts(texts: list[bytes], mid: int) -> tuple[list[bytes], list[bytes]]:
    """Pieces of whole lines (`tree.read_texts`) cut before line `mid` (0 < mid < the lines in
    all): the pieces of the lines before it and of the others, the piece it falls in split."""
    at = 0
    while mid >= (lines := texts[at].count(b"\n") + 1):
        mid -= lines
        at += 1
    head, tail = texts[:at], texts[at + 1 :]
    parts = texts[at].split(b"\n", mid)  # the piece the cut falls in: its first `mid` lines, the rest
    if mid:
        head.append(b"\n".join(parts[:mid]))
    tail.insert(0, parts[mid])
    return head, tail


def order_key(path: bytes) -> bytes:
    """A bytes key in tree order (`tree.path_key`'s order, compared in C): a name holds
    no NUL, so with "/" as NUL a parent sorts before its children and "a/b" before "a-c"."""
    return b"" if path == b"." else path.replace(b"/", b"\0")


class BackupSession:
    """Collects sources into one snapshot: `add_tree`/`add_stream`, then `commit`.
    Used as a context manager, an exception aborts it and nothing is recorded."""

    def __init__(self, repo: Repository, options: BackupOptions, progress: Progress | None = None) -> None:
        if options.backup_type not in BACKUP_TYPES:
            raise InvalidRequest(f"backup type must be one of {', '.join(BACKUP_TYPES)}, got {options.backup_type!r}")
        if not options.app_id:
            raise InvalidRequest("app_id must not be empty")
        self.repo = repo
        self.options = options
        self.progress = progress
        self.started = datetime.now(UTC)
        self._t0 = time.monotonic()
        self.sources: list[SourceRecord] = []
        self.warnings: list[dict] = []
        self._lock = repo.lock(SHARED, "backup", options.lock_wait)
        self._stats: list[SourceStats] = []
        self._planned = 0  # bytes of the files listed so far (for max_bytes)
        self._writer: BlobWriter | None = None
        try:
            self.parent = self._choose_parent()
            self.backup_type = options.backup_type if self.parent or options.backup_type == "full" else "full"
            self._writer = BlobWriter(repo, self._stats, options.workers)
            self._writer.adopt(repo.unindexed_packs())
        except BaseException:
            self.abort()
            raise

    def check_size(self, more: int = 0) -> None:
        """QuotaExceeded when the backup would be over `max_bytes`: the data listed so far (files
        read, reused or about to be read) plus `more` bytes about to be stored. Called before data
        is handed to the writer, so an oversized backup stops before it writes what is too much."""
        limit = self.options.max_bytes
        if limit is None:
            return
        total = max(self._planned, sum(s.bytes for s in self._stats)) + more
        if total > limit:
            raise QuotaExceeded(
                f"backup of {self.options.app_id} is over limits.max_backup_size_gb ({limit / 1e9:g} GB): "
                f"{total / 1e9:.1f} GB so far; nothing was recorded"
            )

    def plan(self, nbytes: int) -> None:
        """Count `nbytes` of file data the backup holds (read or reused) towards `max_bytes`."""
        self._planned += nbytes

    @property
    def writer(self) -> BlobWriter:
        assert self._writer is not None
        return self._writer

    def _choose_parent(self) -> SnapshotRecord | None:
        if self.options.backup_type == "full":
            return None
        snaps = self.repo.list_snapshots(self.options.app_id)
        if self.options.backup_type == "differential":
            snaps = [s for s in snaps if s.backup_type == "full"]
        return snaps[-1] if snaps else None

    def __enter__(self) -> BackupSession:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is not None:
            self.abort()

    # ---- sources ---------------------------------------------------------------------

    def _new_stats(self) -> SourceStats:
        stats = SourceStats()
        self._stats.append(stats)
        return stats

    def _new_source_name(self, name: str) -> None:
        if not name or any(s.name == name for s in self.sources):
            raise InvalidRequest(f"source name {name!r} is empty or used twice in one backup")

    def _parent_source(self, name: str) -> SourceRecord | None:
        """The parent snapshot's source `name`, which an incremental backup compares with."""
        if self.parent is None or self.backup_type == "full":
            return None
        return self.parent.source(name)

    def _listing_texts(self, source: SourceRecord) -> Iterator[bytes]:
        return tree.read_texts([bytes.fromhex(h) for h in source.tree], self.repo.load_blob)

    def _warn(self, source: str, path: bytes, message: str) -> None:
        text = path.decode("utf-8", "backslashreplace")
        log.warning("%s: %s: %s (skipped)", source, text, message)
        self.warnings.append({"source": source, "path": text, "error": message})

    def add_tree(
        self, name: str, root: str | bytes, kind: str = "path", excludes: tuple[str, ...] = ()
    ) -> SourceRecord:
        """Back up the directory `root` as source `name`."""
        self._new_source_name(name)
        root_b = os.fsencode(root)
        try:
            st = os.lstat(root_b)
        except OSError as exc:
            raise BackupCreateFailed(f"cannot read {os.fsdecode(root_b)}: {exc.strerror}") from None
        if not stat.S_ISDIR(st.st_mode):
            raise BackupCreateFailed(f"{os.fsdecode(root_b)} is not a directory")
        stats = self._new_stats()
        tree_ids = _TreeScan(self, name, root_b, stats, excludes).run()
        record = SourceRecord(name, kind, [i.hex() for i in tree_ids], stats, root_path=os.fsdecode(root_b))
        self.sources.append(record)
        return record

    def add_tar(
        self,
        name: str,
        stream: BinaryIO | Iterable[bytes],
        strip: str = "",
        kind: str = "volume",
        excludes: tuple[str, ...] = (),
    ) -> SourceRecord:
        """Back up the directory tree in a tar stream (a binary file, or an iterator of byte
        chunks such as an HTTP body) as source `name`; `strip` is the tar path of the tree's
        root (Docker's archive API names it after the directory)."""
        from sidecar.repo.tarscan import scan_tar

        self._new_source_name(name)
        stats = self._new_stats()
        scan = _TreeScan(self, name, None, stats, excludes)
        if hasattr(stream, "read"):
            file = stream
            stream = iter(lambda: file.read(1 << 20), b"")  # type: ignore[union-attr]
        with bulk_data():
            tree_ids = scan_tar(scan, stream, strip, excludes)
        record = SourceRecord(name, kind, [i.hex() for i in tree_ids], stats)
        self.sources.append(record)
        return record

    def add_stream(
        self,
        name: str,
        stream: BinaryIO,
        filename: str,
        kind: str = "stream",
        engine: str | None = None,
        mode: int = 0o600,
    ) -> SourceRecord:
        """Back up a byte stream (a database dump) as one file `filename` of source `name`."""
        self._new_source_name(name)
        if not filename or "/" in filename or filename in (".", "..") or "\0" in filename:
            raise InvalidRequest(f"stream file name {filename!r} must be a plain file name (no '/', not '.' or '..')")
        stats = self._new_stats()
        key = len(self._stats) - 1
        blobs: list[str] = []
        size = 0
        for chunk in self.repo.chunker.split_stream(stream):
            if self.options.max_bytes is not None:
                self.check_size(len(chunk))  # before the chunk is stored
            self.plan(len(chunk))
            blobs.append(self.writer.store(DATA, chunk, key).hex())
            size += len(chunk)
            stats.bytes = size
            if self.progress:
                self.progress.add(0, len(chunk))
        now_ns = time.time_ns()
        entry = {
            "path": filename,
            "type": tree.FILE,
            "mode": mode,
            "uid": os.getuid(),
            "gid": os.getgid(),
            "mtime_ns": now_ns,
            "size": size,
            "blobs": blobs,
        }
        stats.files, stats.bytes = 1, size
        listing = tree.TreeWriter(self.repo.chunker, lambda data: self.writer.store(TREE, data, key))
        listing.add(entry)
        ids = listing.finish()
        record = SourceRecord(name, kind, [i.hex() for i in ids], stats, engine=engine)
        self.sources.append(record)
        if self.progress:
            self.progress.add(1, 0)
        return record

    def reuse_source(self, source: SourceRecord, snapshot_id: str) -> SourceRecord:
        """Carry `source` of snapshot `snapshot_id` over into this backup unchanged (a database
        whose server shows no write since that dump: see sidecar.jobs.dumps). Refused with
        BackupCreateFailed when any blob it needs is no longer indexed."""
        self._new_source_name(source.name)
        index = self.repo.index()
        ids = [bytes.fromhex(h) for h in source.tree]
        needed = list(ids)
        if index.has_all(ids):
            for line in tree.read_lines(ids, self.repo.load_blob):
                blobs = tree.line_blob_ids(line)
                if blobs is None:
                    blobs = [bytes.fromhex(h) for h in tree.parse_line(line).get("blobs", [])]
                needed += blobs
        if not index.has_all(needed):
            raise BackupCreateFailed(f"source {source.name} of snapshot {snapshot_id[:8]} is no longer complete")
        stats = self._new_stats()
        stats.files, stats.dirs, stats.other, stats.bytes = (
            source.stats.files,
            source.stats.dirs,
            source.stats.other,
            source.stats.bytes,
        )
        stats.reused_files = source.stats.files
        self.plan(stats.bytes)
        self.check_size()
        record = replace(source, tree=list(source.tree), stats=stats, reused_from=snapshot_id)
        self.sources.append(record)
        if self.progress:
            self.progress.add(stats.files, 0)
        return record

    # ---- finishing -------------------------------------------------------------------

    def commit(self) -> SnapshotRecord:
        """Store all data and its index, then the snapshot record."""
        if not self.sources:
            raise InvalidRequest("nothing to back up: no sources were added")
        self.check_size()
        try:
            self.writer.finish()
            self._lock.check()
            record = SnapshotRecord(
                backup_id=self.options.backup_id or new_backup_id(self.started),
                app_id=self.options.app_id,
                app_name=self.options.app_name or self.options.app_id,
                time=self.started,
                backup_type=self.backup_type,
                hostname=self.options.hostname,
                sources=self.sources,
                parent=self.parent.id if self.parent else None,
                tags=list(self.options.tags),
                description=self.options.description,
                warnings=self.warnings,
                duration_s=time.monotonic() - self._t0,
                program_version=__version__,
            )
            record.id = self.repo.save_json("snapshots", record.to_json())
        except BaseException:
            self.abort()
            raise
        self._lock.release()
        return record

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.abort()
        self._lock.release()


class _TreeScan:
    """One directory source: walk, compare with the parent, batch reads, write the listing."""

    def __init__(
        self, session: BackupSession, name: str, root: bytes | None, stats: SourceStats, excludes: tuple[str, ...]
    ) -> None:
        self.session = session
        self.name = name
        self.stats = stats
        self.key = len(session._stats) - 1
        self.writer = session.writer
        self.in_memory = root is None  # a tar stream: the contents come with it, all of them read
        self.walker = None if root is None else Walker(root, excludes, on_error=lambda p, m: session._warn(name, p, m))
        self.index = session.repo.index()
        self.parent_source = None if root is None else session._parent_source(name)
        self.parent: _ParentCursor | None = None  # over the parent source's listing, once `run` starts
        self.listing = tree.TreeWriter(session.repo.chunker, lambda data: self.writer.store(TREE, data, self.key))
        self.xattrs = XattrReader()
        self.links: dict[tuple[int, int], bytes] = {}
        self.skipped: set[bytes] = set()
        # (entry, batch it waits for, its place in the batch)
        self.pending: collections.deque[tuple[dict | _Run, FileBatch | None, int]] = collections.deque()
        self.batch = FileBatch(self.key, self.in_memory)

    def _flush_batch(self) -> None:
        if self.batch.files:
            self.session.check_size(self.batch.nbytes)  # before the batch's files are read and stored
            self.session.plan(self.batch.nbytes)
            self.writer.submit_files(self.batch)
            self.batch = FileBatch(self.key, self.in_memory)

    def _reusable(self, rel: bytes, st: os.stat_result) -> bytes | None:
        """The parent's line for this file when the file is unchanged (every field
        from the stat equal, so the same ctime: the same xattrs too, as setting one
        changes the ctime) and all its data is still in the repository; it is
        reused verbatim, so unchanged listings stay byte-identical."""
        parent = self.parent
        if parent is None:
            return None
        line = parent.line
        # most often the line at the cursor is this very file, unchanged: its line then starts with
        # the head made from the stat. With no quote or backslash in `rel`, that prefix can only
        # be this path's (JSON holds it as is; a control character or non-UTF-8 would be escaped)
        if line is not None and b'"' not in rel and b"\\" not in rel and _has_head(line, file_line_head(rel, st)):
            parent.take()
            return line if self._indexed(line) else None
        line = parent.find(rel)
        if line is None:
            return None
        head = file_line_head(rel, st) if parent.found_plain else tree.encode_entry(entry_from_stat(rel, st))[:-2]
        return line if _has_head(line, head) and self._indexed(line) else None

    def _indexed(self, line: bytes) -> bool:
        """Whether all the data of a parent's file line is still in the repository (if not,
        the file is read again)."""
        blobs = tree.line_blob_ids(line)
        if blobs is None:
            blobs = [bytes.fromhex(h) for h in tree.parse_line(line).get("blobs", [])]
        if len(blobs) == 1:
            return blobs[0] in self.index
        return self.index.has_all(blobs)

    def run(self) -> list[bytes]:
        assert self.walker is not None
        split = self._split_plan()
        if split is None:
            if self.parent_source is not None:
                self.parent = _ParentCursor(self.session._listing_texts(self.parent_source))
            self._walk(iter(self.walker))
        else:
            self._run_split(*split)
        self._flush_batch()
        while self.pending:
            self._wait_head()
        return self.listing.finish()

    # ---- the tree in two halves (an incremental backup of a large tree) -----------------

    def _split_plan(self) -> tuple[Iterable[bytes], list[bytes], bytes] | None:
        """The parent listing cut in two, in pieces of whole lines (`tree.read_texts`): the
        first part (read as the walk goes), the second (read now, for the child) and the path
        of its first line, when the tree is worth comparing on two cores (see sidecar.repo.forked).
        A listing of several chunks is cut where a chunk starts (`split_chunk`: nearest half
        its bytes), so that only the second part is read before the walk begins; one of a
        single chunk (or whose chunk before that one holds no line end) is cut at its middle
        line."""
        source = self.parent_source
        if source is None or not forked.available():
            return None
        entries = source.stats.files + source.stats.dirs + source.stats.other
        if not SPLIT_MIN_ENTRIES <= entries <= SPLIT_MAX_ENTRIES:
            return None
        ids = [bytes.fromhex(h) for h in source.tree]
        load = self.session.repo.load_blob
        places = [self.index.get(blob_id) for blob_id in ids]
        at = split_chunk([p.raw_length if p else 0 for p in places])  # a missing chunk fails its load
        if 0 < at < len(ids):
            before = load(ids[at - 1])
            end = before.rfind(b"\n")
            if end >= 0:  # the chunk's last line goes on in chunk `at`: it is the second part's first
                tail = list(tree.read_texts(ids[at:], load, first=before[end + 1 :]))

                def head_load(blob_id: bytes) -> bytes:
                    return before if blob_id == ids[at - 1] else load(blob_id)

                head: Iterable[bytes] = tree.read_texts(ids[:at], head_load, open_end=True)
                return head, tail, _line_path(tail[0].partition(b"\n")[0])
        texts = list(tree.read_texts(ids, load))
        count = sum(text.count(b"\n") + 1 for text in texts)
        if count < 2:
            return None
        head, tail = cut_texts(texts, split_index(count))
        return head, tail, _line_path(tail[0].partition(b"\n")[0])

    def _run_split(self, head: Iterable[bytes], tail: list[bytes], start: bytes) -> None:
        """The walk before the path `start` (in tree order) is compared with the parent's lines
        `head` here, the rest with `tail` in a forked child at the same time; the child says which
        of its files are unchanged (runs of their lines) and hands everything else back to be
        handled here, in order."""
        assert self.walker is not None

        def second_half() -> Iterator[tuple]:
            self.parent = _ParentCursor(tail)
            return self._compare_half(start)

        child = forked.Forked(second_half)
        try:
            self.parent = _ParentCursor(head)
            self._walk(self.walker.iter_before(start))
            items = child.result()
        finally:
            child.close()
        if items is None:  # the child failed: that half here too
            log.info("%s: the second half of the tree is compared in this process (its helper failed)", self.name)
            self.parent = _ParentCursor(tail)
            self._walk(self.walker.iter_from(start))
            return
        self.parent = None  # the child compared these entries with its half of the parent listing
        for item in items:
            if item[0] == _UNCHANGED:
                self._reused(*item[1:])
            elif item[0] == _OTHER:
                rel, path, line = item[1], item[2], item[3]
                try:
                    st = os.lstat(path)
                except OSError as exc:
                    self.session._warn(self.name, rel, f"cannot stat: {exc.strerror}")
                    continue
                self._entry(rel, path, st, lambda r, s, line=line: self._verified(line, r, s))
            else:
                self.session._warn(self.name, item[1], item[2])

    def _compare_half(self, start: bytes) -> Iterator[tuple]:
        """In the child: walk from `start` and compare with the parent. A run of unchanged files
        with one link each and of directories is (_UNCHANGED, their lines joined by newlines,
        the files' size, how many files, how many lines); any other entry is (_OTHER, rel, path,
        the parent's line if it looked unchanged); a walk error is (_ERROR, rel, message).
        Yielded as they come (`forked` writes each at once)."""
        assert self.walker is not None
        items: list[tuple] = []
        run: list[bytes] = []
        sizes: list[int] = []

        def end_run() -> None:
            if run:
                items.append((_UNCHANGED, b"\n".join(run), sum(sizes), len(sizes), len(run)))
                run.clear()
                sizes.clear()

        def on_error(rel: bytes, message: str) -> None:
            end_run()  # a walk error comes in the middle of a run: keep the order
            items.append((_ERROR, rel, message))

        self.walker.on_error = on_error
        entries = self.walker.iter_from(start)
        while (entry := self._take_unchanged(entries, run, sizes)) is not None:
            end_run()  # also at _MORE: a run left in `run` would end the next call after one file
            if entry is not _MORE:
                rel, path, st = entry
                line = None
                if S_ISREG(st.st_mode):
                    line = self._reusable(rel, st)
                if line is not None and st.st_nlink == 1:
                    items.append((_UNCHANGED, line, st.st_size, 1, 1))
                else:
                    items.append((_OTHER, rel, path, line))
            yield from items
            items.clear()
        end_run()
        yield from items

    def _verified(self, line: bytes | None, rel: bytes, st: os.stat_result) -> bytes | None:
        """A parent line the child found for `rel`, checked again against this process's stat."""
        if line is None:
            return None
        head = tree.encode_entry(entry_from_stat(rel, st))[:-2]
        return line if _has_head(line, head) and self._indexed(line) else None

    # ---- walking -------------------------------------------------------------------------

    def _take_unchanged(
        self, entries: Iterator[tuple[bytes, bytes, os.stat_result]], run: list[bytes], sizes: list[int]
    ) -> tuple | None:
        """The common case of an incremental backup, in one tight loop: take entries while each
        is a regular file with one link whose line in the parent listing is the one at the
        cursor and unchanged (it starts with the head made from the stat: as in `_reusable`,
        only for a path with no quote or backslash, which JSON holds as is) and whose one blob
        is indexed, or a directory (its line made from the stat, as `_entry` makes it). Their
        lines go to `run`, the files' sizes to `sizes`. Returns the first entry that is neither
        (the cursor still at its line), _MORE after RUN_FILES lines, or None at the end of
        `entries`. With no parent listing, every entry is returned (a full backup)."""
        parent = self.parent
        if parent is None:
            return next(entries, None)
        line = parent.line
        lines = parent.lines
        contains = self.index.__contains__
        fromhex = bytes.fromhex
        for entry in entries:
            rel, path, st = entry
            mode = st.st_mode
            if line is None or not S_ISREG(mode) or st.st_nlink != 1:
                if not S_ISDIR(mode):
                    break
                # a directory: its line is made from the stat (never reused), and goes in the run
                if line is not None and line.startswith(b'{"path":"%s",' % rel):
                    line = next(lines, None)  # past its line in the parent listing, to its first child's
                run.append(self._dir_line(rel, path, st))
                if len(run) >= RUN_FILES:
                    parent.moved_to(line)
                    return _MORE
                continue
            head = FILE_HEAD % (rel, mode & 0o7777, st.st_uid, st.st_gid, st.st_mtime_ns, st.st_size, st.st_ino,
                                st.st_ctime_ns)  # fmt: skip
            if not line.startswith(head) or line[len(head) : len(head) + 1] != b"," or b'"' in rel or b"\\" in rel:
                break
            if line[-78:-67] == b',"blobs":["' and line[-3:] == b'"]}':  # one blob (`tree.line_blob_ids`)
                try:
                    indexed = contains(fromhex(line[-67:-3].decode("ascii")))
                except (UnicodeDecodeError, ValueError):
                    indexed = False
            else:
                indexed = self._indexed(line)
            if not indexed:
                break
            run.append(line)
            sizes.append(st.st_size)
            line = next(lines, None)
            if len(run) >= RUN_FILES:
                parent.moved_to(line)
                return _MORE
        else:
            entry = None
        parent.moved_to(line)
        return entry

    def _stat_entry(self, rel: bytes, path: bytes, st: os.stat_result) -> dict:
        """The listing entry of what the stat says, with its xattrs (no content or link target)."""
        entry = entry_from_stat(rel, st)
        xattrs = self.xattrs.read(path, st.st_dev)
        if xattrs:
            entry["xattrs"] = xattrs
        return entry

    def _dir_line(self, rel: bytes, path: bytes, st: os.stat_result) -> bytes:
        """A directory's listing line (without its newline), as `_entry` makes it."""
        return tree.encode_entry(self._stat_entry(rel, path, st))[:-1]

    def _reused(self, text: bytes, size: int, files: int = 1, lines: int = 1) -> None:
        """A run of `lines` listing lines joined by newlines, to go into the listing in order:
        `files` unchanged files (`size` bytes, their parent lines) and directories."""
        self.stats.reused_files += files
        self.session.plan(size)
        pending = self.pending
        if pending:  # behind files still being read: keep the order
            pending.append((_Run(text, size, files, lines), None, 0))
            self._emit_ready()
            if len(pending) > MAX_PENDING:
                self._wait_head()
        else:
            self._add_lines(text, size, files, lines)

    def _walk(self, entries: Iterator[tuple[bytes, bytes, os.stat_result]]) -> None:
        """Every entry into the listing: runs of unchanged files in one go, the others one by one."""
        run: list[bytes] = []
        sizes: list[int] = []
        while True:
            entry = self._take_unchanged(entries, run, sizes)
            if run:
                self._reused(b"\n".join(run), sum(sizes), len(sizes), len(run))
                run.clear()
                sizes.clear()
            if entry is None:
                return
            if entry is not _MORE:
                self._entry(*entry, self._reusable)

    def _entry(
        self, rel: bytes, path: bytes, st: os.stat_result, reusable: Callable[[bytes, os.stat_result], bytes | None]
    ) -> None:
        """One entry into the listing (in order, behind files still being read)."""
        pending = self.pending
        if S_ISREG(st.st_mode):
            if st.st_nlink > 1:
                first = self.links.get((st.st_dev, st.st_ino))
                if first is not None:
                    pending.append((self._hardlink(entry_from_stat(rel, st), rel, first), None, 0))
                    self._emit_ready()
                    return
                self.links[(st.st_dev, st.st_ino)] = rel
            line = reusable(rel, st)
            if line is not None:
                self._reused(line, st.st_size)
                return
        entry = self._stat_entry(rel, path, st)
        kind = entry["type"]
        batch, place = None, 0
        if kind == tree.FILE:
            batch = self.batch
            place = len(batch.files)
            batch.files.append((path, st.st_size))
            batch.nbytes += st.st_size
            if len(batch.files) >= BATCH_FILES or batch.nbytes >= BATCH_BYTES:
                self._flush_batch()
        elif kind == tree.SYMLINK:
            try:
                tree.put_name(entry, "target", os.readlink(path))
            except OSError as exc:
                self.session._warn(self.name, rel, f"cannot read link: {exc.strerror}")
                return
        pending.append((entry, batch, place))
        self._emit_ready()
        if len(pending) > MAX_PENDING:
            self._wait_head()

    @staticmethod
    def _hardlink(entry: dict, rel: bytes, first: bytes) -> dict:
        link = {k: entry[k] for k in ("mode", "uid", "gid", "mtime_ns")}
        tree.put_name(link, "path", rel)
        link["type"] = tree.HARDLINK
        tree.put_name(link, "link", first)
        return link

    def _wait_head(self) -> None:
        batch = self.pending[0][1]
        if batch is not None:
            if batch is self.batch:
                self._flush_batch()
            batch.done.wait()
        self._emit_ready()

    def _add_lines(self, text: bytes, size: int, files: int, lines: int) -> None:
        stats = self.stats
        stats.files += files
        stats.dirs += lines - files
        stats.bytes += size
        if self.session.progress:
            self.session.progress.add(files, size)
        self.listing.add_lines(text, lines)

    def _emit_ready(self) -> None:
        pending = self.pending
        stats = self.stats
        progress = self.session.progress
        while pending:
            entry, batch, place = pending[0]
            if batch is not None:
                if not batch.done.is_set():
                    return
                if batch.error is not None:
                    raise batch.error
                blobs, detail = batch.results[place]
                if blobs is None:
                    entry["_error"] = detail
                else:
                    entry["blobs"] = blobs
                    entry["size"] = detail
            pending.popleft()
            if entry.__class__ is _Run:
                self._add_lines(*entry)
                continue
            kind = entry["type"]
            if "_error" in entry or (kind == tree.HARDLINK and tree.get_name(entry, "link") in self.skipped):
                path = tree.entry_path(entry)
                self.skipped.add(path)
                stats.skipped += 1
                self.session._warn(self.name, path, entry.get("_error", "its hard link target was skipped"))
                continue
            if kind == tree.FILE:
                stats.files += 1
                stats.bytes += entry["size"]
                if progress:
                    progress.add(1, entry["size"])
            elif kind == tree.DIR:
                stats.dirs += 1
            else:
                stats.other += 1
            self.listing.add(entry)
