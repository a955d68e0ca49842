"""A restore worker: a separate process that writes the regular files of a restore.

The parent reads the listing, makes directories and links and plans which
groups of which packs each file needs; files go to workers by the pack of
their first blob, so each worker reads its packs once, front to back.

Protocol (pickled tuples over a duplex socket):
    parent -> worker: ("init", config), then
        ("window", number, files, blobs)
            files: [(tmp path, final path, entry), ...]  (entry: the listing line)
            blobs: [(pack id, offset, length, inner, raw length, blob id, [(file no, file offset), ...]), ...]
        ("stop",)
    worker -> parent:
        ("done", number, [(file no, error or None), ...], [(path, warning), ...])
        ("error", exception)
"""

from __future__ import annotations

import contextlib
import gc
import os
import shutil
import signal
from multiprocessing.connection import Connection
from typing import Any

from sidecar.errors import BackupError, IntegrityError
from sidecar.repo.backends.base import open_backend
from sidecar.repo.codec import Codec
from sidecar.repo.crypto import MasterKey
from sidecar.repo.fsmeta import MetadataWriter
from sidecar.repo.memory import limit_arenas
from sidecar.repo.pack import extract_blob, pack_object_name

MAX_RUN = 8 << 20  # one read covers nearby groups up to this size
MAX_GAP = 256 << 10  # and skips at most this much between them
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC


class _Writer:
    def __init__(self, config: dict) -> None:
        self.key = MasterKey.from_export(config["key"])
        self.codec = Codec(self.key)
        self.backend = open_backend(config["repository"])
        self.warnings: list[tuple[bytes, str]] = []
        self.meta = MetadataWriter(lambda path, message: self.warnings.append((path, message)))

    def window(self, files: list[tuple[bytes, bytes, dict]], blobs: list[tuple]) -> list[tuple[int, str | None]]:
        count = len(files)
        remaining = [0] * count
        fds = [-1] * count
        ends = [0] * count
        failed: list[str | None] = [None] * count
        for *_, targets in blobs:
            for file_no, _offset in targets:
                remaining[file_no] += 1
        by_pack: dict[str, list[tuple]] = {}
        for blob in blobs:
            by_pack.setdefault(blob[0], []).append(blob)
            raw = blob[4]
            for file_no, offset in blob[6]:
                ends[file_no] = max(ends[file_no], offset + raw)
        results: list[tuple[int, str | None]] = []

        def finish(file_no: int) -> None:
            tmp, final, entry = files[file_no]
            error = failed[file_no]
            try:
                if error is None:
                    fd = fds[file_no] if fds[file_no] >= 0 else os.open(tmp, _CREATE, 0o600)
                    fds[file_no] = fd
                    size = entry.get("size", 0)
                    if ends[file_no] != size:
                        os.ftruncate(fd, size)
                    self.meta.apply_fd(fd, final, entry)
                    os.close(fd)
                    fds[file_no] = -1
                    _rename(tmp, final)
            except OSError as exc:
                error = f"cannot write: {exc.strerror}"
            if error is not None:
                if fds[file_no] >= 0:
                    os.close(fds[file_no])
                    fds[file_no] = -1
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
            results.append((file_no, error))

        for file_no in range(count):  # empty files and files whose blobs are all missing
            if remaining[file_no] == 0:
                finish(file_no)
        for pack_id, pack_blobs in by_pack.items():
            pack_blobs.sort(key=lambda b: (b[1], b[3]))
            for run in _runs(pack_blobs):
                for blob, data, problem in self._read_run(pack_id, run):
                    for file_no, offset in blob[6]:
                        if problem is not None:
                            failed[file_no] = failed[file_no] or problem
                        elif failed[file_no] is None and data:
                            try:
                                if fds[file_no] < 0:
                                    fds[file_no] = os.open(files[file_no][0], _CREATE, 0o600)
                                os.pwrite(fds[file_no], data, offset)
                            except OSError as exc:
                                failed[file_no] = f"cannot write: {exc.strerror}"
                        remaining[file_no] -= 1
                        if remaining[file_no] == 0:
                            finish(file_no)
        return results

    def _read_run(self, pack_id: str, run: list[tuple]):
        start = run[0][1]
        end = max(b[1] + b[2] for b in run)
        try:
            data = memoryview(self.backend.get(pack_object_name(pack_id), start, end - start))
        except BackupError as exc:
            for blob in run:
                yield blob, None, f"pack {pack_id[:12]} unreadable: {exc}"
            return
        group_at, group, group_problem = -1, b"", None
        for blob in run:
            offset, length, inner, raw, blob_id = blob[1], blob[2], blob[3], blob[4], blob[5]
            if offset != group_at:
                group_at = offset
                try:
                    group, group_problem = self.codec.decode(data[offset - start : offset - start + length]), None
                except IntegrityError as exc:
                    group, group_problem = b"", f"damaged data in pack {pack_id[:12]}: {exc}"
            if group_problem is not None:
                yield blob, None, group_problem
                continue
            try:
                yield blob, extract_blob(self.key, blob_id, group, inner, raw), None
            except IntegrityError as exc:
                yield blob, None, f"damaged data in pack {pack_id[:12]}: {exc}"


def _runs(blobs: list[tuple]) -> list[list[tuple]]:
    """Blobs (sorted by offset) in runs of nearby groups, one read each."""
    runs, run = [], [blobs[0]]
    for blob in blobs[1:]:
        last = run[-1]
        if blob[1] - (last[1] + last[2]) <= MAX_GAP and blob[1] + blob[2] - run[0][1] <= MAX_RUN:
            run.append(blob)
        else:
            runs.append(run)
            run = [blob]
    runs.append(run)
    return runs


def _rename(tmp: bytes, final: bytes) -> None:
    try:
        os.rename(tmp, final)
    except OSError:
        if not os.path.isdir(final) or os.path.islink(final):
            raise
        shutil.rmtree(final)  # a directory where the snapshot has a file
        os.rename(tmp, final)


def worker_main(conn: Connection) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    limit_arenas()
    gc.disable()  # nothing here makes reference cycles; the collector cost 5 % of a restore
    try:
        writer: Any = None
        while True:
            msg = conn.recv()
            if msg[0] == "init":
                writer = _Writer(msg[1])
            elif msg[0] == "window":
                writer.warnings = []
                results = writer.window(msg[2], msg[3])
                conn.send(("done", msg[1], results, writer.warnings))
            elif msg[0] == "stop":
                return
    except EOFError:
        pass  # the parent went away
    except BaseException as exc:
        with contextlib.suppress(OSError, EOFError):
            conn.send(("error", exc))


if __name__ == "__main__":
    import sys

    worker_main(Connection(int(sys.argv[1])))
