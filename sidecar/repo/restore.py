"""Restore a snapshot (or one source of it) into a directory, exactly.

The listing is streamed in tree order: directories, links and special files are
made as they come; regular files are gathered into windows and written by a
thread pool that reads each pack once, front to back. Each file is written to a
temporary name and renamed into place once complete. With `delete` (the
default) anything in the target that the snapshot does not have is removed.
Paths are checked: nothing is ever written outside the target.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import shutil
import stat
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from sidecar.errors import BackupCorrupted, BackupError, IntegrityError, InvalidRequest
from sidecar.repo import tree
from sidecar.repo.backup import Progress
from sidecar.repo.fsmeta import MetadataWriter
from sidecar.repo.index import BlobLocation
from sidecar.repo.locks import SHARED
from sidecar.repo.pack import pack_object_name
from sidecar.repo.repository import Repository
from sidecar.repo.snapshot import SnapshotRecord, SourceRecord

log = logging.getLogger(__name__)

WINDOW_BYTES = 512 << 20
WINDOW_FILES = 16384
WINDOW_OPEN_FILES = 128  # multi-blob files held open at once
MAX_RUN = 32 << 20
MAX_GAP = 256 << 10
_counter = itertools.count()


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
    threads: int = 2,
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
    with repo.lock(SHARED, "restore", lock_wait):
        for src in sources:
            dest = source_target(snapshot, src, target_b, len(sources) == 1)
            _TreeRestore(repo, src, dest, delete, threads, progress, result).run()
    return result


class _FileState:
    __slots__ = ("entry", "failed", "fd", "final", "finished", "lock", "remaining", "tmp")

    def __init__(self, entry: dict, final: bytes, remaining: int) -> None:
        self.entry = entry
        self.final = final
        self.tmp = os.path.join(os.path.dirname(final), f".w9r-{os.getpid()}-{next(_counter)}.tmp".encode())
        self.fd = -1
        self.remaining = remaining
        self.lock = threading.Lock()
        self.failed: str | None = None
        self.finished = False


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


class _TreeRestore:
    def __init__(
        self,
        repo: Repository,
        source: SourceRecord,
        dest: bytes,
        delete: bool,
        threads: int,
        progress: Progress | None,
        result: RestoreResult,
    ) -> None:
        self.repo = repo
        self.source = source
        self.dest = dest
        self.threads = threads
        self.progress = progress
        self.result = result
        self.meta = MetadataWriter(self._warn)
        self.index = repo.index()
        self.dir_meta: list[tuple[bytes, dict]] = []
        self.hardlinks: list[tuple[bytes, bytes]] = []
        self.failed_paths: set[bytes] = set()
        self.window: list[_FileState] = []
        self.window_bytes = 0
        self.window_open = 0
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
        self._run_window()
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
        blobs = entry.get("blobs", [])
        state = _FileState(entry, path, len(blobs))
        if not blobs:
            self._finish_file(state)
            return
        self.window.append(state)
        self.window_bytes += entry.get("size", 0)
        if len(blobs) > 1:
            self.window_open += 1
        if (
            self.window_bytes >= WINDOW_BYTES
            or len(self.window) >= WINDOW_FILES
            or self.window_open >= WINDOW_OPEN_FILES
        ):
            self._run_window()

    def _run_window(self) -> None:
        window, self.window = self.window, []
        self.window_bytes = self.window_open = 0
        if not window:
            return
        by_pack: dict[str, list[tuple[bytes, BlobLocation, list[tuple[_FileState, int]]]]] = {}
        seen: dict[bytes, list[tuple[_FileState, int]]] = {}
        for state in window:
            offset = 0
            for blob_hex in state.entry["blobs"]:
                blob_id = bytes.fromhex(blob_hex)
                targets = seen.get(blob_id)
                if targets is None:
                    loc = self.index.get(blob_id)
                    if loc is None:
                        self._fail_file(state, f"blob {blob_hex[:16]} is missing from the repository")
                        break
                    targets = seen[blob_id] = []
                    by_pack.setdefault(loc.pack_id, []).append((blob_id, loc, targets))
                targets.append((state, offset))
                offset += self._raw_length(blob_id)
        runs = []
        for pack_id, blobs in by_pack.items():
            blobs.sort(key=lambda b: (b[1].offset, b[1].inner))
            run = [blobs[0]]
            for item in blobs[1:]:
                last = run[-1][1]
                start = run[0][1].offset
                if (
                    item[1].offset - (last.offset + last.length) <= MAX_GAP
                    and item[1].offset + item[1].length - start <= MAX_RUN
                ):
                    run.append(item)
                else:
                    runs.append((pack_id, run))
                    run = [item]
            runs.append((pack_id, run))
        with ThreadPoolExecutor(self.threads) as pool:
            for future in [pool.submit(self._restore_run, p, r) for p, r in runs]:
                future.result()
        for state in window:  # files with a missing blob never reached zero
            if not state.finished:
                self._fail_file(state, state.failed or "incomplete")
                self._finish_file(state)

    def _raw_length(self, blob_id: bytes) -> int:
        loc = self.index.get(blob_id)
        return loc.raw_length if loc else 0

    def _restore_run(self, pack_id: str, run: list[tuple[bytes, BlobLocation, list[tuple[_FileState, int]]]]) -> None:
        start = run[0][1].offset
        end = max(loc.offset + loc.length for _, loc, _ in run)
        try:
            data = memoryview(self.repo.backend.get(pack_object_name(pack_id), start, end - start))
        except BackupError as exc:
            for _blob_id, _loc, targets in run:
                for state, _ in targets:
                    self._blob_done(state, None, 0, f"pack {pack_id[:12]} unreadable: {exc}")
            return
        group_at, group = -1, b""
        group_problem: str | None = None
        for blob_id, loc, targets in run:
            if loc.offset != group_at:
                group_at = loc.offset
                try:
                    group, group_problem = (
                        self.repo.codec.decode(data[loc.offset - start : loc.offset - start + loc.length]),
                        None,
                    )
                except IntegrityError as exc:
                    group, group_problem = b"", f"damaged data in pack {pack_id[:12]}: {exc}"
            problem = group_problem
            plain: bytes | None = None
            if problem is None:
                try:
                    plain = self.repo.blob_from_group(blob_id, loc, group)
                except IntegrityError as exc:
                    problem = f"damaged data in pack {pack_id[:12]}: {exc}"
            for state, offset in targets:
                self._blob_done(state, plain, offset, problem)

    def _blob_done(self, state: _FileState, data: bytes | None, offset: int, problem: str | None) -> None:
        with state.lock:
            try:
                if problem is not None:
                    state.failed = state.failed or problem
                elif state.failed is None:
                    if state.fd < 0:
                        state.fd = os.open(state.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
                    os.pwrite(state.fd, data, offset)
            except OSError as exc:
                state.failed = f"cannot write: {exc.strerror}"
            state.remaining -= 1
            if state.remaining == 0:
                self._finish_file(state)

    def _fail_file(self, state: _FileState, message: str) -> None:
        state.failed = state.failed or message

    def _finish_file(self, state: _FileState) -> None:
        state.finished = True
        entry = state.entry
        try:
            if state.failed is None:
                if state.fd < 0:
                    state.fd = os.open(state.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
                size = entry.get("size", 0)
                if os.fstat(state.fd).st_size != size:
                    os.ftruncate(state.fd, size)
                self.meta.apply_fd(state.fd, state.final, entry)
                os.close(state.fd)
                state.fd = -1
                if os.path.isdir(state.final) and not os.path.islink(state.final):
                    shutil.rmtree(state.final)
                os.rename(state.tmp, state.final)
                with self._lock:
                    self.result.files += 1
                    self.result.bytes += size
                if self.progress:
                    self.progress.add(1, size)
                return
        except OSError as exc:
            state.failed = f"cannot write: {exc.strerror}"
        if state.fd >= 0:
            os.close(state.fd)
            state.fd = -1
        with contextlib.suppress(FileNotFoundError):
            os.unlink(state.tmp)
        with self._lock:
            self.failed_paths.add(state.final)
        self._error(state.final, f"not restored: {state.failed}")

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


def check_restore_result(result: RestoreResult) -> None:
    if result.errors:
        raise BackupCorrupted(
            f"{len(result.errors)} entries could not be restored; first: "
            f"{result.errors[0]['path']}: {result.errors[0]['error']}"
        )
