"""Restore a snapshot (or one source of it) into a directory, exactly.

The listing is streamed in tree order: directories, links and special files are
made as they come; regular files are gathered into windows, planned by pack and
written by restore worker processes (`restoreworker`), each reading its packs
once, front to back, while the next window is planned. Each file is written to
a temporary name and renamed into place once complete. With `delete` (the
default) anything in the target that the snapshot does not have is removed.
Paths are checked: nothing is ever written outside the target.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import logging
import os
import queue
import shutil
import stat
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

from sidecar.errors import InvalidRequest, RestoreFailed
from sidecar.repo import tree
from sidecar.repo.backup import Progress
from sidecar.repo.fsmeta import MetadataWriter
from sidecar.repo.locks import SHARED
from sidecar.repo.repository import Repository
from sidecar.repo.snapshot import SnapshotRecord, SourceRecord
from sidecar.repo.workerproc import WorkerProcess, worker_count

log = logging.getLogger(__name__)

WINDOW_BYTES = 256 << 20
WINDOW_FILES = 8192
WINDOWS_IN_FLIGHT = 2  # per worker: one being written, one queued
_counter = itertools.count()
_PID = os.getpid()
_FILE_META = ("type", "mode", "uid", "gid", "mtime_ns", "size", "xattrs")  # what a restore worker needs of an entry


@dataclass
class RestoreResult:
    files: int = 0
    bytes: int = 0
    errors: list[dict] = field(default_factory=list)  # data that could not be restored
    warnings: list[dict] = field(default_factory=list)  # metadata that could not be set


def source_target(snapshot: SnapshotRecord, source: SourceRecord, target: bytes, only_one: bool) -> bytes:
    if only_one:
        return target
    rel = source.name.strip("/").encode()
    tree.check_relative(rel)
    return os.path.join(target, rel)


def restore_snapshot(
    repo: Repository,
    snapshot: SnapshotRecord,
    target: str | bytes,
    *,
    source: str | None = None,
    delete: bool = True,
    workers: int | None = None,
    progress: Progress | None = None,
    lock_wait: float = 600.0,
) -> RestoreResult:
    """Restore `snapshot` into `target`: one source straight into it, several
    sources each into `target/<source name>`."""
    sources = snapshot.sources
    if source is not None:
        found = snapshot.source(source)
        if found is None:
            names = ", ".join(s.name for s in sources)
            raise InvalidRequest(f"snapshot {snapshot.id[:8]} has no source {source!r} (it has: {names})")
        sources = [found]
    result = RestoreResult()
    target_b = os.fsencode(os.path.abspath(target))
    with repo.lock(SHARED, "restore", lock_wait), _Writers(repo, worker_count(workers)) as writers:
        for src in sources:
            dest = source_target(snapshot, src, target_b, len(sources) == 1)
            _TreeRestore(repo, src, dest, delete, writers, progress, result).run()
    return result


def _remove(path: bytes) -> None:
    """Remove whatever is at `path` (file, link, or whole directory)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(path)
    else:
        os.unlink(path)


class _Writers:
    """The restore worker processes, the windows each has in hand, and a thread
    per worker that always reads its answers (so neither side blocks the other)."""

    def __init__(self, repo: Repository, count: int) -> None:
        config = {"key": repo.key.export(), "repository": repo.backend.location}
        self.procs = [WorkerProcess("sidecar.repo.restoreworker") for _ in range(count)]
        self.pending: list[collections.deque] = [collections.deque() for _ in self.procs]
        self.answers: list[queue.Queue] = [queue.Queue() for _ in self.procs]
        for proc, answers in zip(self.procs, self.answers, strict=True):
            proc.send(("init", config))
            threading.Thread(target=self._read, args=(proc, answers), name="restore-listen", daemon=True).start()

    @staticmethod
    def _read(proc: WorkerProcess, answers: queue.Queue) -> None:
        try:
            while True:
                answers.put(proc.recv())
        except (EOFError, OSError) as exc:
            answers.put(("gone", exc))

    def __enter__(self) -> _Writers:
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        for proc in self.procs:
            with contextlib.suppress(OSError):
                if exc_type is None:
                    proc.send(("stop",))
                else:
                    proc.hang_up()
        for proc in self.procs:
            proc.wait()

    def send(self, worker: int, window: object, files: list, blobs: list) -> None:
        self.procs[worker].send(("window", len(self.pending[worker]), files, blobs))
        self.pending[worker].append(window)

    def receive(self, worker: int) -> tuple[object, list, list]:
        """The oldest window of `worker`, once written: (window, results, warnings)."""
        msg = self.answers[worker].get()
        if msg[0] == "gone":
            raise RestoreFailed(f"a restore worker stopped unexpectedly ({msg[1].__class__.__name__})")
        if msg[0] == "error":
            raise msg[1]
        return self.pending[worker].popleft(), msg[2], msg[3]


class _File:
    __slots__ = ("entry", "final", "tmp")

    def __init__(self, entry: dict, final: bytes) -> None:
        self.entry = entry
        self.final = final
        self.tmp = final.rpartition(b"/")[0] + b"/.w9r-%d-%d.tmp" % (_PID, next(_counter))


class _TreeRestore:
    def __init__(
        self,
        repo: Repository,
        source: SourceRecord,
        dest: bytes,
        delete: bool,
        writers: _Writers,
        progress: Progress | None,
        result: RestoreResult,
    ) -> None:
        self.repo = repo
        self.source = source
        self.dest = dest
        self.writers = writers
        self.progress = progress
        self.result = result
        self.meta = MetadataWriter(self._warn)
        self.index = repo.index()
        self.dir_meta: list[tuple[bytes, dict]] = []
        self.hardlinks: list[tuple[bytes, bytes]] = []
        self.failed_paths: set[bytes] = set()
        self.window: list[_File] = []
        self.window_bytes = 0
        try:
            os.makedirs(dest, exist_ok=True)
        except OSError as exc:
            raise InvalidRequest(f"cannot use {os.fsdecode(dest)} as the restore target: {exc.strerror}") from None
        self.existing = delete and bool(os.listdir(dest))
        self.wanted: set[bytes] | None = set() if self.existing else None
        self._lock = threading.Lock()

    def _warn(self, path: bytes, message: str) -> None:
        with self._lock:
            self.result.warnings.append({"source": self.source.name, "path": self._show(path), "error": message})

    def _error(self, path: bytes, message: str) -> None:
        with self._lock:
            self.result.errors.append({"source": self.source.name, "path": self._show(path), "error": message})

    def _show(self, path: bytes) -> str:
        rel = os.path.relpath(path, self.dest) if path.startswith(self.dest) else path
        return os.fsdecode(rel).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")

    def _entries(self) -> Iterator[dict]:
        ids = [bytes.fromhex(h) for h in self.source.tree]
        return tree.read_tree(ids, self.repo.load_blob)

    def run(self) -> None:
        root_entry = None
        validator = tree.TreeValidator()
        for entry in self._entries():
            rel = validator.check(entry)
            if rel == b".":
                root_entry = entry
                continue
            if self.wanted is not None:
                self.wanted.add(rel)
            path = os.path.join(self.dest, rel)
            kind = entry["type"]
            if kind == tree.FILE:
                self._add_file(entry, path)
            elif kind == tree.DIR:
                self._make_dir(path)
                self.dir_meta.append((path, entry))
            elif kind == tree.HARDLINK:
                link = tree.get_name(entry, "link") or b""
                self.hardlinks.append((path, os.path.join(self.dest, link)))
            else:
                self._make_special(path, entry)
        self._send_window()
        for worker in range(len(self.writers.procs)):
            while self.writers.pending[worker]:
                self._collect(worker)
        for path, first in self.hardlinks:
            if first in self.failed_paths:
                self._error(path, "not restored: the file it links to could not be restored")
                continue
            try:
                if not stat.S_ISREG(os.lstat(first).st_mode):
                    raise OSError(0, "its target is not a regular file")
                _remove(path)
                os.link(first, path, follow_symlinks=False)
            except OSError as exc:
                self._error(path, f"cannot create hard link: {exc.strerror}")
        if self.wanted is not None:
            self._delete_extras()
        for path, entry in reversed(self.dir_meta):
            self.meta.apply_path(path, entry)
        if root_entry is not None:
            self.meta.apply_path(self.dest, root_entry)

    # ---- directories, links, special files --------------------------------------------

    def _make_dir(self, path: bytes) -> None:
        try:
            st = os.lstat(path)
            if stat.S_ISDIR(st.st_mode):
                return
            os.unlink(path)
        except FileNotFoundError:
            pass
        os.mkdir(path, 0o700)

    def _make_special(self, path: bytes, entry: dict) -> None:
        kind = entry["type"]
        try:
            _remove(path)
            if kind == tree.SYMLINK:
                os.symlink(tree.get_name(entry, "target") or b"", path)
            elif kind == tree.FIFO:
                os.mkfifo(path, 0o600)
            elif kind == tree.SOCKET:
                os.mknod(path, 0o600 | stat.S_IFSOCK)
            elif kind == tree.DEVICE:
                dev_type = stat.S_IFCHR if entry.get("device") == "char" else stat.S_IFBLK
                os.mknod(path, 0o600 | dev_type, os.makedev(*entry["rdev"]))
        except OSError as exc:
            self._error(path, f"cannot create {kind}: {exc.strerror}")
            return
        self.meta.apply_path(path, entry)

    # ---- regular files ---------------------------------------------------------------

    def _add_file(self, entry: dict, path: bytes) -> None:
        self.window.append(_File(entry, path))
        self.window_bytes += entry.get("size", 0)
        if self.window_bytes >= WINDOW_BYTES or len(self.window) >= WINDOW_FILES:
            self._send_window()

    def _send_window(self) -> None:
        """Plan the gathered files and hand them to the workers: a file goes to the
        worker of its first blob's pack, with every group its content needs."""
        window, self.window = self.window, []
        self.window_bytes = 0
        if not window:
            return
        count = len(self.writers.procs)
        files: list[list] = [[] for _ in range(count)]
        blobs: list[dict[bytes, tuple]] = [{} for _ in range(count)]
        placed: list[list[tuple[bytes, int]]] = [[] for _ in range(count)]
        index = self.index
        for item in window:
            hexes = item.entry.get("blobs", ())
            locations = []
            for blob_hex in hexes:
                blob_id = bytes.fromhex(blob_hex)
                loc = index.get(blob_id)
                if loc is None:
                    self._failed(item.final, f"blob {blob_hex[:16]} is missing from the repository")
                    break
                locations.append((blob_id, loc))
            else:
                worker = hash(locations[0][1].pack_id) % count if locations else next(_counter) % count
                file_no = len(files[worker])
                entry = item.entry
                meta = {key: entry[key] for key in _FILE_META if key in entry}  # not the blob list: that is in `blobs`
                files[worker].append((item.tmp, item.final, meta))
                placed[worker].append((item.final, entry.get("size", 0)))
                offset = 0
                for blob_id, loc in locations:
                    known = blobs[worker].get(blob_id)
                    if known is None:
                        known = blobs[worker][blob_id] = (
                            loc.pack_id,
                            loc.offset,
                            loc.length,
                            loc.inner,
                            loc.raw_length,
                            blob_id,
                            [],
                        )
                    known[6].append((file_no, offset))
                    offset += loc.raw_length
        for worker in range(count):
            if not files[worker]:
                continue
            while len(self.writers.pending[worker]) >= WINDOWS_IN_FLIGHT:
                self._collect(worker)
            self.writers.send(worker, placed[worker], files[worker], list(blobs[worker].values()))

    def _collect(self, worker: int) -> None:
        placed, results, warnings = self.writers.receive(worker)
        for path, message in warnings:
            self._warn(path, message)
        for file_no, error in results:
            final, size = placed[file_no]
            if error is not None:
                self._failed(final, error)
                continue
            self.result.files += 1
            self.result.bytes += size
            if self.progress:
                self.progress.add(1, size)

    def _failed(self, final: bytes, message: str) -> None:
        self.failed_paths.add(final)
        self._error(final, f"not restored: {message}")

    # ---- making the target exact ---------------------------------------------------------

    def _delete_extras(self) -> None:
        wanted = self.wanted
        assert wanted is not None
        for dirpath, dirnames, filenames in os.walk(self.dest):
            rel_dir = os.path.relpath(dirpath, self.dest)
            keep_dirs = []
            for name in dirnames + filenames:
                rel = name if rel_dir == b"." else os.path.join(rel_dir, name)
                path = os.path.join(dirpath, name)
                if rel in wanted:
                    if name in dirnames and not os.path.islink(path):
                        keep_dirs.append(name)
                    continue
                try:
                    _remove(path)
                except OSError as exc:
                    self._warn(path, f"cannot remove extra entry: {exc.strerror}")
            dirnames[:] = keep_dirs
