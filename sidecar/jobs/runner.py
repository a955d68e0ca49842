"""Jobs in the background: at most `max_concurrent` at once (the rest queued in
order), never two on one app, each recorded in the catalog with its progress.

A job function gets a `JobProgress` and returns a JSON-able result; a
`BackupError` it raises becomes the job's error and code, anything else an
INTERNAL_ERROR (logged with its traceback, which names no secret: our errors
carry none)."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from sidecar.catalog.records import Catalog
from sidecar.errors import AppBusy, BackupError
from sidecar.logs import job_context

log = logging.getLogger(__name__)

PROGRESS_EVERY = 0.5  # seconds between progress writes to the catalog


class JobProgress:
    """Progress of one job, written to the catalog at most every PROGRESS_EVERY seconds.
    Serves both the engine's `add(files, nbytes)` and a restore's `(phase, done, total)`."""

    def __init__(self, catalog: Catalog, job_id: str, phase: str = "", total: int = 0) -> None:
        self._catalog = catalog
        self.job_id = job_id
        self.phase = phase
        self.done = 0
        self.total = total
        self._written = 0.0

    def add(self, files: int, nbytes: int) -> None:
        self.done += nbytes
        self._maybe_write()

    def __call__(self, phase: str, done: int, total: int) -> None:
        changed = phase != self.phase
        self.phase, self.done, self.total = phase, done, total
        self._maybe_write(force=changed)

    def set_phase(self, phase: str) -> None:
        self(phase, self.done, self.total)

    def flush(self) -> None:
        self._maybe_write(force=True)

    def _maybe_write(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._written >= PROGRESS_EVERY:
            self._written = now
            self._catalog.job_progress(self.job_id, self.phase, self.done, self.total)


JobFunction = Callable[[JobProgress], dict]
Finished = Callable[[str, dict | None, BackupError | None], None]  # job id, result, error


class JobRunner:
    def __init__(self, catalog: Catalog, max_concurrent: int = 2) -> None:
        self.catalog = catalog
        self._pool = ThreadPoolExecutor(max(1, max_concurrent), thread_name_prefix="job")
        self._lock = threading.Lock()
        self._busy: dict[str, str] = {}  # app id -> job id
        self._futures: dict[str, Future] = {}  # queued or running

    def busy(self, app_id: str) -> str | None:
        with self._lock:
            return self._busy.get(app_id)

    def active(self) -> int:
        """Jobs queued or running."""
        with self._lock:
            return len(self._futures)

    def submit(
        self, job_id: str, app_id: str | None, fn: JobFunction, on_finish: Finished = lambda j, r, e: None
    ) -> Future:
        """Queue `fn`; AppBusy at once when the app already has a job queued or running."""
        with self._lock:
            if app_id is not None:
                running = self._busy.get(app_id)
                if running is not None:
                    raise AppBusy(f"app {app_id} is busy (job {running}); try again when it has finished")
                self._busy[app_id] = job_id
            future = self._pool.submit(self._run, job_id, app_id, fn, on_finish)
            self._futures[job_id] = future
        return future

    def _run(self, job_id: str, app_id: str | None, fn: JobFunction, on_finish: Finished) -> dict | None:
        catalog = self.catalog
        result: dict | None = None
        failure: BackupError | None = None
        try:
            catalog.start_job(job_id)
            with job_context(job_id, app_id):
                progress = JobProgress(catalog, job_id)
                result = fn(progress)
                progress.flush()  # the last figures, not the last ones written before the end
        except BackupError as exc:
            failure = exc
        except Exception as exc:
            log.exception("job %s failed unexpectedly", job_id)
            failure = BackupError(f"internal error ({type(exc).__name__}); see the sidecar's log")
        finally:
            with self._lock:
                if app_id is not None and self._busy.get(app_id) == job_id:
                    del self._busy[app_id]
        try:
            if failure is None:
                catalog.finish_job(job_id, "completed", result=result)
            else:
                catalog.finish_job(job_id, "failed", error=failure.message, error_code=failure.code)
        except Exception:
            log.exception("job %s: recording its outcome failed", job_id)
        with self._lock:
            self._futures.pop(job_id, None)
        try:
            on_finish(job_id, result, failure)
        except Exception:
            log.exception("job %s: its completion callback failed", job_id)
        if failure is not None:
            raise failure
        return result

    def wait(self, job_id: str, timeout: float | None = None) -> None:
        """Until the job has finished (its outcome is in the catalog; a finished job is not waited for)."""
        with self._lock:
            future = self._futures.get(job_id)
        if future is not None:
            with contextlib.suppress(BackupError):  # its error is in the catalog
                future.result(timeout)

    def shutdown(self, wait: bool = True) -> None:
        """Stop taking jobs; queued ones are cancelled (marked interrupted), running ones finish if `wait`."""
        with self._lock:
            queued = [job_id for job_id, f in self._futures.items() if f.cancel()]
        for job_id in queued:
            self.catalog.finish_job(job_id, "interrupted", error="the sidecar stopped before the job started")
        self._pool.shutdown(wait=wait, cancel_futures=True)
