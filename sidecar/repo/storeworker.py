"""A store worker: a separate process that reads files, chunks and hashes them,
asks the parent which blobs are new, then compresses, seals and packs those.

Python runs one thread at a time per process; compression and sealing are
most of a backup's work, so they run in worker processes (one per core) and
the parent only walks the tree, decides what changed and writes the listing.

Protocol (pickled tuples over a duplex pipe):
    parent -> worker: ("init", config) first, then
        ("files", batch_no, source_key, [(path, size), ...])
        ("blobs", source_key, [(blob_id, type, data), ...])      # already claimed
        ("claimed", [bool, ...])                                  # answer to "claim"
        ("flush",) / ("stop",)
    worker -> parent:
        ("claim", source_key, [(blob_id, raw_length), ...])       # which of these are new?
        ("done", batch_no, [(blob hex ids, size) | (None, error message), ...])
        ("pack", pack_id, [entry tuples], {source_key: stored bytes})
        ("flushed",) / ("error", exception)
"""

from __future__ import annotations

import collections
import contextlib
import gc
import os
import queue
import signal
import stat
import threading
from multiprocessing.connection import Connection
from typing import Any

from sidecar.repo.backends.base import open_backend
from sidecar.repo.chunker import Chunker, ChunkerParams
from sidecar.repo.codec import Codec
from sidecar.repo.crypto import MasterKey
from sidecar.repo.memory import limit_arenas, trim
from sidecar.repo.pack import DATA, GROUP_ALONE, GROUP_TARGET, TREE, PackWriter, pack_object_name
from sidecar.repo.workqueue import ByteBoundedQueue, QueueClosed

WHOLE_FILE_LIMIT = 4 << 20  # files up to this size are read in one piece
STREAM_CLAIM_BYTES = 4 << 20  # big files are claimed and packed in segments of this size
_O_NOATIME = getattr(os, "O_NOATIME", 0) if os.geteuid() == 0 else 0
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | _O_NOATIME

Blob = tuple[bytes, int, Any]  # id, type, plaintext (bytes or memoryview)


class _Packer:
    """Groups small blobs; encoder threads compress and seal groups (zstd and AES
    run without the GIL, so one worker can use several cores on one big file)
    and fill packs; finishing threads fsync and store full packs (one for a local
    repository; a remote back end's `upload_threads`, so uploads overlap)."""

    def __init__(self, codec: Codec, backend: Any, pack_size: int, send: Any, threads: int = 2) -> None:
        self.codec = codec
        self.backend = backend
        self.pack_size = pack_size
        self.send = send
        self.threads = threads
        self.uploaders = max(1, int(getattr(backend, "upload_threads", 1)))
        self.lock = threading.Lock()
        self.packs: dict[int, PackWriter] = {}
        self.groups: dict[int, list[tuple[bytes, Any, Any]]] = {}
        self.group_size: dict[int, int] = collections.defaultdict(int)
        self.stored: dict[int, dict[Any, int]] = {}
        self.error: BaseException | None = None
        self._start()

    def _start(self) -> None:
        self.jobs = ByteBoundedQueue(8 << 20)
        self.finishing: queue.Queue[PackWriter | None] = queue.Queue(maxsize=2 * self.uploaders)
        self.encoders = [
            threading.Thread(target=self._encode_loop, name="encode", daemon=True) for _ in range(self.threads)
        ]
        self.finishers = [
            threading.Thread(target=self._finish_loop, name="pack-store", daemon=True) for _ in range(self.uploaders)
        ]
        for t in [*self.encoders, *self.finishers]:
            t.start()

    def _fail(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc
        self.jobs.close(exc)

    def _job(self, blob_type: int, blobs: list[tuple[bytes, Any, Any]]) -> None:
        try:
            self.jobs.put((blob_type, blobs), sum(len(b[1]) for b in blobs))
        except QueueClosed:
            raise self.error or RuntimeError("packer stopped") from None

    def add(self, blobs: list[Blob], source: Any) -> None:
        for blob_id, blob_type, data in blobs:
            if len(data) >= GROUP_ALONE:
                self._job(blob_type, [(blob_id, data, source)])
                continue
            group = self.groups.setdefault(blob_type, [])
            group.append((blob_id, data, source))
            self.group_size[blob_type] += len(data)
            if self.group_size[blob_type] >= GROUP_TARGET:
                self._job(blob_type, self.groups.pop(blob_type))
                self.group_size[blob_type] = 0

    def _encode_loop(self) -> None:
        try:
            while True:
                try:
                    blob_type, blobs = self.jobs.get()
                except QueueClosed:
                    return
                self._seal(blob_type, blobs)
        except BaseException as exc:
            self._fail(exc)

    def _seal(self, blob_type: int, blobs: list[tuple[bytes, Any, Any]]) -> None:
        plain = blobs[0][1] if len(blobs) == 1 else b"".join(b[1] for b in blobs)
        sealed = self.codec.encode(plain)
        members, inner = [], 0
        for blob_id, data, _source in blobs:
            members.append((blob_id, blob_type, inner, len(data)))
            inner += len(data)
        full = None
        with self.lock:
            pack = self.packs.get(blob_type)
            if pack is None:
                pack = self.packs[blob_type] = PackWriter(self.codec, self.backend.staging_dir)
                self.stored[id(pack)] = collections.defaultdict(int)
            pack.add_group(sealed, members)
            stored = self.stored[id(pack)]
            for _blob_id, data, source in blobs:
                stored[source] += len(sealed) * len(data) // max(inner, 1)
            if pack.size >= self.pack_size:
                full = self.packs.pop(blob_type)
        if full is not None:
            self.finishing.put(full)

    def _finish_loop(self) -> None:
        while True:
            pack = self.finishing.get()
            if pack is None:
                return
            try:
                if self.error is not None:
                    pack.abort()
                    continue
                info = pack.finish()
                # a listing is read by the next backup: a remote repository's cache keeps it from now
                trees = sorted({(e.offset, e.length) for e in info.entries if e.type == TREE})
                self.backend.put(pack_object_name(info.name), info.path, cache_ranges=trees)
                entries = [(e.blob_id, e.type, e.offset, e.length, e.inner, e.raw_length) for e in info.entries]
                with self.lock:
                    stored = dict(self.stored.pop(id(pack), {}))
                self.send(("pack", info.name, entries, stored))
                trim()
            except BaseException as exc:
                pack.abort()
                self._fail(exc)

    def flush(self) -> None:
        """Seal partial groups, store partial packs, wait until all are stored."""
        for blob_type in list(self.groups):
            self._job(blob_type, self.groups.pop(blob_type))
            self.group_size[blob_type] = 0
        self.jobs.close()
        for t in self.encoders:
            t.join()
        if self.error is None:
            for blob_type in list(self.packs):
                self.finishing.put(self.packs.pop(blob_type))
        self._stop_finishers()
        if self.error is not None:
            raise self.error
        self._start()

    def _stop_finishers(self) -> None:
        for _ in self.finishers:
            self.finishing.put(None)
        for t in self.finishers:
            t.join()

    def abort(self) -> None:
        self._fail(self.error or RuntimeError("aborted"))
        for t in self.encoders:
            t.join()
        with self.lock:
            for pack in self.packs.values():
                pack.abort()
            self.packs.clear()
        self._stop_finishers()


class _Worker:
    def __init__(self, conn: Connection, config: dict) -> None:
        self.conn = conn
        self.send_lock = threading.Lock()
        self.backlog: collections.deque[tuple] = collections.deque()
        self.key = MasterKey.from_export(config["key"])
        self.codec = Codec(self.key, config["level"])
        self.chunker = Chunker(ChunkerParams.from_json(config["chunker"]), self.key.chunker_seed())
        self.read_buffer = self.chunker.stream_buffer()  # one for every big file this worker reads
        backend = open_backend(config["repository"])
        self.packer = _Packer(self.codec, backend, config["pack_size"], self.send)

    def send(self, msg: tuple) -> None:
        with self.send_lock:
            self.conn.send(msg)

    def next_command(self) -> tuple:
        return self.backlog.popleft() if self.backlog else self.conn.recv()

    def claim(self, candidates: list[tuple[bytes, Any]], source: Any) -> list[bool]:
        """Ask the parent which blob ids are new; commands arriving meanwhile wait."""
        self.send(("claim", source, [(blob_id, len(data)) for blob_id, data in candidates]))
        while True:
            msg = self.conn.recv()
            if msg[0] == "claimed":
                return msg[1]
            self.backlog.append(msg)

    def store_claimed(self, candidates: list[tuple[bytes, Any]], source: Any) -> None:
        if not candidates:
            return
        answers = self.claim(candidates, source)
        self.packer.add([(i, DATA, d) for (i, d), new in zip(candidates, answers, strict=True) if new], source)

    def files(self, batch_no: int, source: Any, files: list[tuple[bytes, int]]) -> None:
        results: list[tuple] = []
        pending: list[tuple[bytes, Any]] = []
        for path, size in files:
            try:
                ids, total = self._read(path, size, pending, source)
                results.append(([i.hex() for i in ids], total))
            except OSError as exc:
                results.append((None, exc.strerror or str(exc)))
        self.store_claimed(pending, source)
        self.send(("done", batch_no, results))

    def data(self, batch_no: int, source: Any, files: list[tuple[bytes, int]]) -> None:
        """Contents read by the parent (a tar stream): chunk, hash and store them like files."""
        results: list[tuple] = []
        pending: list[tuple[bytes, Any]] = []
        key = self.key
        for content, _size in files:
            ids = []
            for piece in self.chunker.split_buffer(content):
                blob_id = key.blob_id(piece)
                pending.append((blob_id, piece))
                ids.append(blob_id)
            results.append(([i.hex() for i in ids], len(content)))
        self.store_claimed(pending, source)
        self.send(("done", batch_no, results))

    def _read(self, path: bytes, size: int, pending: list[tuple[bytes, Any]], source: Any) -> tuple[list[bytes], int]:
        key = self.key
        ids: list[bytes] = []
        fd = os.open(path, _OPEN_FLAGS)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise OSError(0, "is no longer a regular file")
            if size <= WHOLE_FILE_LIMIT:
                data = os.read(fd, size + 1)
                if len(data) > size:  # grew while we looked: read the rest
                    parts = [data]
                    while part := os.read(fd, 1 << 20):
                        parts.append(part)
                    data = b"".join(parts)
                for piece in self.chunker.split_buffer(data):
                    blob_id = key.blob_id(piece)
                    pending.append((blob_id, piece))
                    ids.append(blob_id)
                return ids, len(data)
            total = 0
            segment: list[tuple[bytes, Any]] = []
            segment_bytes = 0
            with os.fdopen(fd, "rb", buffering=0, closefd=False) as f:
                for view in self.chunker.split_stream(f, self.read_buffer):
                    piece = bytes(view)  # a copy: the view's buffer is refilled for the next chunk
                    blob_id = key.blob_id(piece)
                    segment.append((blob_id, piece))
                    segment_bytes += len(piece)
                    ids.append(blob_id)
                    total += len(piece)
                    if segment_bytes >= STREAM_CLAIM_BYTES:
                        self.store_claimed(segment, source)
                        segment, segment_bytes = [], 0
            self.store_claimed(segment, source)
            return ids, total
        finally:
            os.close(fd)

    def run(self) -> None:
        while True:
            msg = self.next_command()
            kind = msg[0]
            if kind == "files":
                self.files(msg[1], msg[2], msg[3])
            elif kind == "data":
                self.data(msg[1], msg[2], msg[3])
            elif kind == "blobs":
                self.packer.add(msg[2], msg[1])
            elif kind == "flush":
                self.packer.flush()
                self.send(("flushed",))
            elif kind == "stop":
                return
            else:
                raise ValueError(f"unknown command {kind!r}")


def worker_main(conn: Connection) -> None:
    """Entry point of the worker process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    nice = os.environ.get("BACKUP_WORKER_NICE", "")
    if nice.isdigit() and 0 < int(nice) <= 19:  # `serve` runs its workers below the API's priority
        os.nice(int(nice))
    limit_arenas()
    gc.disable()  # nothing here makes reference cycles; the collector only costs time
    worker = None
    try:
        msg = conn.recv()
        worker = _Worker(conn, msg[1])
        worker.run()
    except EOFError:
        pass  # the parent went away
    except BaseException as exc:
        with contextlib.suppress(OSError, EOFError):
            conn.send(("error", exc))
    finally:
        if worker is not None:
            worker.packer.abort()


if __name__ == "__main__":
    import sys

    worker_main(Connection(int(sys.argv[1])))
