"""The parent's side of the store workers: it owns the dedup decisions (which
blob ids are new) and the index, hands out batches of files and finished
blobs, and writes index files as packs are stored.

Packs are stored before any index names them, and index files are written as
packs accumulate, so a crash loses at most the last few packs and the next
backup reuses everything an index already lists.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from sidecar.errors import BackupCreateFailed
from sidecar.repo.index import index_document
from sidecar.repo.memory import trim
from sidecar.repo.pack import PackEntry
from sidecar.repo.repository import Repository
from sidecar.repo.snapshot import SourceStats
from sidecar.repo.workerproc import WorkerProcess, worker_count

log = logging.getLogger(__name__)

INDEX_EVERY_PACKS = 8
INDEX_EVERY_SECONDS = 30.0
MAX_BATCHES_PER_WORKER = 3
FileResult = tuple[list[str] | None, Any]  # (blob hex ids, size) or (None, error message)


class FileBatch:
    """Files for one worker; `results` is filled in when `done` is set. `files` holds
    (path, size) pairs for the worker to read, or, when `in_memory`, (content, size)."""

    __slots__ = ("done", "error", "files", "in_memory", "nbytes", "results", "source")

    def __init__(self, source: int, in_memory: bool = False) -> None:
        self.source = source
        self.in_memory = in_memory
        self.files: list[tuple[bytes, int]] = []
        self.nbytes = 0
        self.results: list[FileResult] = []
        self.done = threading.Event()
        self.error: BaseException | None = None


class _WorkerHandle(WorkerProcess):
    """A store worker and what the parent tracks about it."""

    def __init__(self) -> None:
        super().__init__("sidecar.repo.storeworker")
        self.inflight: dict[int, FileBatch] = {}
        self.flushed = threading.Event()
        self.thread: threading.Thread | None = None


class BlobWriter:
    def __init__(self, repo: Repository, sources: list[SourceStats], workers: int | None = None) -> None:
        self._repo = repo
        self._sources = sources  # stats by source key (index in this list)
        self._index = repo.index()
        self._lock = threading.Lock()
        self._index_lock = threading.Lock()
        self._slots = threading.Condition(self._lock)
        self._claimed: set[bytes] = set()
        self._unindexed: list[tuple[str, list[PackEntry]]] = []
        self._indexed_at = time.monotonic()
        self._batch_no = 0
        self.index_ids: list[str] = []
        self.error: BaseException | None = None
        self._worker_count = worker_count(workers, spare=1)
        self._workers: list[_WorkerHandle] = []  # started with the first new data: none for an unchanged backup
        self._next = 0

    def _started(self) -> list[_WorkerHandle]:
        """The store workers, started on first use."""
        if not self._workers:
            config = {
                "key": self._repo.key.export(),
                "level": self._repo.codec.level,
                "chunker": self._repo.chunker.params.to_json(),
                "repository": self._repo.backend.location,
                "pack_size": self._repo.pack_size,
            }
            workers = []
            for _ in range(self._worker_count):
                w = _WorkerHandle()
                workers.append(w)
                w.send(("init", config))
                w.thread = threading.Thread(target=self._listen, args=(w,), name="store-listen", daemon=True)
                w.thread.start()
            with self._slots:
                self._workers = workers
        return self._workers

    # ---- dedup -----------------------------------------------------------------------

    def _claim_many(self, candidates: list[tuple[bytes, int]], source: int) -> list[bool]:
        stats = self._sources[source] if source >= 0 else None
        out = []
        with self._lock:
            claimed, index = self._claimed, self._index
            for blob_id, length in candidates:
                new = blob_id not in claimed and blob_id not in index
                if new:
                    claimed.add(blob_id)
                    if stats is not None:
                        stats.new_blobs += 1
                        stats.added_bytes += length
                out.append(new)
        return out

    # ---- handing out work ------------------------------------------------------------

    def _check(self) -> None:
        if self.error is not None:
            raise self.error

    def _pick_worker(self) -> _WorkerHandle:
        """The worker with the fewest batches in flight; waits while all are busy."""
        with self._slots:
            while True:
                self._check()
                best = min(self._workers, key=lambda w: len(w.inflight))
                if len(best.inflight) < MAX_BATCHES_PER_WORKER:
                    return best
                self._slots.wait(0.5)

    def submit_files(self, batch: FileBatch) -> None:
        self._started()
        worker = self._pick_worker()
        with self._lock:
            self._batch_no += 1
            number = self._batch_no
            worker.inflight[number] = batch
        worker.send(("data" if batch.in_memory else "files", number, batch.source, batch.files))

    def store(self, blob_type: int, data: bytes | memoryview, source: int) -> bytes:
        """Store one blob made here (listings, streams); returns its id."""
        blob_id = self._repo.key.blob_id(data)
        if self._claim_many([(blob_id, len(data))], source)[0]:
            self._check()
            workers = self._started()
            worker = workers[self._next % len(workers)]
            self._next += 1
            worker.send(("blobs", source, [(blob_id, blob_type, bytes(data))]))
        return blob_id

    # ---- what the workers say ----------------------------------------------------------

    def _listen(self, worker: _WorkerHandle) -> None:
        try:
            while True:
                msg = worker.recv()
                kind = msg[0]
                if kind == "claim":
                    worker.send(("claimed", self._claim_many(msg[2], msg[1])))
                elif kind == "done":
                    with self._slots:
                        batch = worker.inflight.pop(msg[1])
                        self._slots.notify_all()
                    batch.results = msg[2]
                    batch.done.set()
                elif kind == "pack":
                    self._pack_stored(msg[1], msg[2], msg[3])
                elif kind == "flushed":
                    worker.flushed.set()
                elif kind == "error":
                    self._fail(msg[1])
                    return
        except (EOFError, OSError) as exc:
            if self.error is None and not worker.flushed.is_set():
                self._fail(BackupCreateFailed(f"a store worker stopped unexpectedly ({exc.__class__.__name__})"))
        except BaseException as exc:
            self._fail(exc)

    def _pack_stored(self, pack_id: str, entries: list[tuple], stored: dict[int, int]) -> None:
        pack_entries = [PackEntry(*e) for e in entries]
        with self._index_lock:  # not the claim lock: a merge of the index must not stall claims
            for e in pack_entries:
                self._index.add(e.blob_id, pack_id, e)
        with self._lock:
            claimed = self._claimed
            for e in pack_entries:
                claimed.discard(e.blob_id)  # the index knows it now (added first): keep the claim set small
            for source, nbytes in stored.items():
                if source >= 0:
                    self._sources[source].stored_bytes += nbytes
            self._unindexed.append((pack_id, pack_entries))
            full = (
                len(self._unindexed) >= INDEX_EVERY_PACKS or time.monotonic() - self._indexed_at >= INDEX_EVERY_SECONDS
            )
        if full:
            self._write_index()
        trim()

    def adopt(self, packs: list[tuple[str, list[PackEntry]]]) -> None:
        """Reuse packs an interrupted backup stored but never indexed: their blobs
        count as present, and this backup's index names them."""
        with self._index_lock:
            for pack_id, entries in packs:
                for e in entries:
                    self._index.add(e.blob_id, pack_id, e)
        with self._lock:
            self._unindexed.extend(packs)

    def _write_index(self) -> None:
        with self._lock:
            packs, self._unindexed = self._unindexed, []
            self._indexed_at = time.monotonic()
        if packs:
            self.index_ids.append(self._repo.save_json("index", index_document(packs)))

    def _fail(self, exc: BaseException) -> None:
        with self._slots:
            if self.error is None:
                self.error = exc
            batches = [b for w in self._workers for b in w.inflight.values()]
            self._slots.notify_all()
        for batch in batches:
            batch.error = exc
            batch.done.set()
        for w in self._workers:
            w.flushed.set()

    # ---- finishing -----------------------------------------------------------------------

    def finish(self) -> None:
        """Store everything handed out, then index it. Raises the first worker error."""
        self._check()
        for w in self._workers:
            w.flushed.clear()
            w.send(("flush",))
        for w in self._workers:
            w.flushed.wait()
        self._check()
        self._write_index()
        self._stop(lambda w: w.send(("stop",)))

    def abort(self) -> None:
        """Stop the workers; what they staged but did not store is removed by them."""
        self._fail(self.error or RuntimeError("aborted"))
        self._stop(lambda w: w.hang_up())

    def _stop(self, how: Callable[[_WorkerHandle], None]) -> None:
        for w in self._workers:
            with contextlib.suppress(OSError):
                how(w)
        for w in self._workers:
            w.wait()
            if w.thread is not None:
                w.thread.join(timeout=5)
