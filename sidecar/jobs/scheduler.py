"""Scheduled backups: label and API schedules run on time, keep what the retention
says, and never pile up.

Each `tick` (the scheduler's thread calls it at the next due time, when woken
by a registry or schedule change, and at least every `poll_s`):

1. reads the schedules: the `websoft9.backup.schedule` label of every app
   whose labels are valid, and the enabled API schedules (BackupSchedule) of
   apps that exist now — an app that is gone stops being scheduled, its
   backups stay;
2. for each, finds the latest due time since the one it last handled
   (ScheduleState, in the catalog, so this spans restarts): within `catch_up`
   of now it is queued once, older it is logged and skipped — missed runs are
   never replayed one by one. A schedule seen for the first time, or whose
   timing changed, starts counting from now;
3. starts queued runs in due order while fewer than `max_concurrent` jobs run,
   never two on one app (a run due while its app is busy waits, queued once:
   a second due time meanwhile is folded into it);
4. once `prune_schedule` is due, starts no more backups until the running
   jobs have finished, runs `prune` (exclusive lock), then goes on.

A failed run is retried after `retry_backoff_s`, doubling, up to `retries`
times; only then does it count as failed. Outcomes go to the catalog (the job,
the backup record, ScheduleState) and to metrics. The clock is injected: tests
drive `tick` with a fake one and no sleeping.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any, Protocol

from peewee import PeeweeException

from sidecar.errors import AppNotFound, AppPolicyInvalid, BackupError, InvalidRequest
from sidecar.jobs.timing import CronTiming, Timing, iso_z, last_run, next_run, runs_between
from sidecar.repo.retention import RetentionPolicy

log = logging.getLogger(__name__)

PRUNE_KEY = "prune"
NOT_RETRIED = (AppNotFound, AppPolicyInvalid, InvalidRequest)  # retrying cannot help these


@dataclass(frozen=True)
class SchedulerConfig:
    tz: tzinfo = UTC
    max_concurrent: int = 2
    jitter_s: float = 0.0  # each schedule runs up to this much after its due time (fixed per schedule)
    catch_up_s: float = 6 * 3600.0
    retries: int = 2
    retry_backoff_s: float = 60.0  # first retry after this, then doubled
    prune_schedule: str | None = "0 4 * * 0"  # weekly, Sunday 04:00; None: never
    default_retention: RetentionPolicy = field(default_factory=lambda: RetentionPolicy(days=30))
    poll_s: float = 60.0  # schedules are read again at least this often


@dataclass(frozen=True)
class Planned:
    """One schedule of one app, as the scheduler runs it."""

    key: str  # label:<app_id> or the API schedule's id
    app_id: str
    source: str  # label | api
    timing: Timing
    retention: RetentionPolicy
    backup_type: str | None = None  # None: the app's label
    include_database: bool = True
    include_volumes: bool = True
    baseline: datetime | None = None  # an API schedule counts its due times from its last change


@dataclass
class Run:
    plan: Planned
    due: datetime
    not_before: datetime
    attempt: int = 0  # retries made so far
    job_id: str | None = None
    coalesced: int = 0  # due times folded into this run while it waited


@dataclass
class Outcome:
    ok: bool
    result: dict | None = None
    error: BackupError | None = None


Done = Callable[[Outcome], None]


class Launcher(Protocol):
    """How the scheduler starts work (production: `OperationsLauncher`)."""

    def active_jobs(self) -> int: ...

    def app_busy(self, app_id: str) -> bool: ...

    def start_backup(self, run: Run, final_attempt: bool, done: Done) -> str: ...

    def start_prune(self, done: Done) -> str: ...


class Clock(Protocol):
    def now(self) -> datetime: ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


@dataclass
class _State:
    timing: str
    last_due: datetime
    app_id: str | None = None
    last_job_id: str | None = None
    last_outcome: str | None = None
    last_error: str | None = None


class StateStore:
    """ScheduleState rows, cached; written through on every change."""

    def __init__(self) -> None:
        from sidecar.catalog.models import ScheduleState

        self._model = ScheduleState
        self._cache: dict[str, _State] | None = None

    def _load(self) -> dict[str, _State]:
        if self._cache is None:
            self._cache = {
                row.schedule_key: _State(
                    row.timing,
                    row.last_due_at.replace(tzinfo=UTC),
                    row.app_id,
                    row.last_job_id,
                    row.last_outcome,
                    row.last_error,
                )
                for row in self._model.select()
            }
        return self._cache

    def get(self, key: str) -> _State | None:
        return self._load().get(key)

    def put(self, key: str, state: _State) -> None:
        from sidecar.catalog.models import utcnow

        cache = self._load()
        values = {
            "app_id": state.app_id,
            "timing": state.timing[:255],
            "last_due_at": state.last_due.astimezone(UTC).replace(tzinfo=None),
            "last_job_id": state.last_job_id,
            "last_outcome": state.last_outcome,
            "last_error": (state.last_error or "")[:2000] or None,
            "updated_at": utcnow(),
        }
        model = self._model
        if model.update(**values).where(model.schedule_key == key).execute() == 0:
            model.create(schedule_key=key, **values)
        cache[key] = state


def jitter_of(key: str, jitter_s: float) -> timedelta:
    """A fixed delay in [0, jitter_s) for one schedule, so runs due together spread out the same way each time."""
    if jitter_s <= 0:
        return timedelta(0)
    fraction = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=4).digest()) / 2**32
    return timedelta(seconds=round(fraction * jitter_s, 3))


class Scheduler:
    def __init__(
        self,
        config: SchedulerConfig,
        launcher: Launcher,
        sources: Callable[[], tuple[list[Planned], Mapping[str, str]]],
        clock: Clock | None = None,
        states: StateStore | None = None,
        metrics: Any = None,
    ) -> None:
        self.config = config
        self.launcher = launcher
        self.sources = sources  # -> (schedules to run, {key: why dormant} for those that cannot run now)
        self.clock = clock or SystemClock()
        self.states = states or StateStore()
        self.metrics = metrics
        self._lock = threading.RLock()
        self._plans: dict[str, Planned] = {}
        self._dormant: dict[str, str] = {}
        self._pending: dict[str, Run] = {}  # key -> queued run (at most one per schedule)
        self._running: dict[str, Run] = {}
        self._prune_timing = CronTiming(config.prune_schedule) if config.prune_schedule else None
        self._prune_due: datetime | None = None
        self._prune_job: str | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ---- the loop ------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="scheduler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def wake(self, *_: object) -> None:
        """Tick soon (schedules or the registry changed, a job finished)."""
        self._wake.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            try:
                wake_at = self.tick()
            except (BackupError, PeeweeException) as exc:  # the catalog may be away for a while: keep going
                text = exc.message if isinstance(exc, BackupError) else str(exc).strip().splitlines()[0]
                log.error("scheduler: %s; trying again in %.0f s", text, self.config.poll_s)
                wake_at = None
            except Exception:
                log.exception("scheduler: tick failed; trying again in %.0f s", self.config.poll_s)
                wake_at = None
            now = self.clock.now()
            wait = self.config.poll_s if wake_at is None else (wake_at - now).total_seconds() + 0.05
            self._wake.wait(min(max(wait, 0.05), self.config.poll_s))

    # ---- one tick ------------------------------------------------------------------------------

    def tick(self) -> datetime | None:
        """Queue what is due, start what can start; returns when to tick next."""
        now = self.clock.now()
        plans, dormant = self.sources()
        with self._lock:
            self._plans = {p.key: p for p in plans}
            self._dormant = dict(dormant)
            for key in [k for k in self._pending if k not in self._plans]:
                run = self._pending.pop(key)
                log.info("app %s: schedule %s is gone; its queued run is dropped", run.plan.app_id, key)
            for plan in self._plans.values():
                self._reckon(plan, now)
            self._reckon_prune(now)
            self._dispatch(now)
            return self._next_wake(now)

    def _reckon(self, plan: Planned, now: datetime) -> None:
        state = self.states.get(plan.key)
        if state is None or state.timing != plan.timing.text:
            baseline = now
            if plan.baseline is not None and state is None:
                baseline = min(now, plan.baseline)
            state = _State(plan.timing.text, baseline, plan.app_id)
            self.states.put(plan.key, state)
        due = last_run(plan.timing, now, self.config.tz)
        if due is None or due <= state.last_due:
            return
        missed = runs_between(plan.timing, state.last_due, due, self.config.tz, limit=1000) - 1
        if (now - due).total_seconds() > self.config.catch_up_s:
            log.warning(
                "app %s: schedule %s missed its run at %s (the sidecar was not running), more than the "
                "%.0f-minute catch-up window ago: skipped%s",
                plan.app_id,
                plan.key,
                iso_z(due),
                self.config.catch_up_s / 60,
                f", with {missed} earlier missed run(s)" if missed > 0 else "",
            )
            state = replace(state, last_due=due, last_outcome="skipped", last_error="missed while the sidecar was down")
            self.states.put(plan.key, state)
            self._count(plan.app_id, "skipped")
            return
        if missed > 0:
            log.warning(
                "app %s: schedule %s missed %d run(s) before %s while the sidecar was down: "
                "running once for all of them",
                plan.app_id,
                plan.key,
                missed,
                iso_z(due),
            )
        elif (now - due).total_seconds() > max(self.config.poll_s, 60) * 2:
            log.info("app %s: catching up on the run due at %s (missed while the sidecar was down)", plan.app_id, due)
        self.states.put(plan.key, replace(state, last_due=due))
        self._queue(plan, due)

    def _queue(self, plan: Planned, due: datetime) -> None:
        queued = self._pending.get(plan.key)
        if queued is not None:
            queued.coalesced += 1
            log.warning(
                "app %s: schedule %s is due again (%s) while its run due at %s still waits: not queued twice",
                plan.app_id,
                plan.key,
                iso_z(due),
                iso_z(queued.due),
            )
            self._count(plan.app_id, "coalesced")
            return
        self._pending[plan.key] = Run(plan, due, due + jitter_of(plan.key, self.config.jitter_s))

    def _reckon_prune(self, now: datetime) -> None:
        timing = self._prune_timing
        if timing is None or self._prune_due is not None:
            return
        state = self.states.get(PRUNE_KEY)
        if state is None or state.timing != timing.text:
            state = _State(timing.text, now)
            self.states.put(PRUNE_KEY, state)
        due = last_run(timing, now, self.config.tz)
        if due is not None and due > state.last_due:
            self.states.put(PRUNE_KEY, replace(state, last_due=due))
            self._prune_due = due  # a prune late by days still runs once: it only frees space
            log.info("prune is due (%s): no new scheduled backups until it has run", iso_z(due))

    def _dispatch(self, now: datetime) -> None:
        if self._prune_job is not None:
            return
        if self._prune_due is not None:
            if self.launcher.active_jobs() == 0:
                self._start_prune()
            return
        started: set[str] = set()
        for run in sorted(self._pending.values(), key=lambda r: (r.not_before, r.due, r.plan.key)):
            if run.not_before > now:
                continue
            if self.launcher.active_jobs() >= self.config.max_concurrent:
                break
            app_id = run.plan.app_id
            if app_id in started or any(r.plan.app_id == app_id for r in self._running.values()):
                continue
            if self.launcher.app_busy(app_id):
                continue  # an API job on the app: this run waits for it
            final = run.attempt >= self.config.retries
            try:
                run.job_id = self.launcher.start_backup(run, final, self._done_callback(run))
            except BackupError as exc:
                if exc.code == "OPERATION_IN_PROGRESS":
                    continue
                del self._pending[run.plan.key]  # refused (the app went, its labels broke, the catalog is away)
                self._finished(run, Outcome(False, error=exc), final=final)
                continue
            del self._pending[run.plan.key]
            self._running[run.plan.key] = run
            started.add(app_id)
            log.info(
                "app %s: scheduled backup started (job %s, due %s%s)",
                app_id,
                run.job_id,
                iso_z(run.due),
                f", retry {run.attempt}" if run.attempt else "",
            )

    def _start_prune(self) -> None:
        def done(outcome: Outcome) -> None:
            with self._lock:
                self._prune_job = None
                self._prune_due = None
                state = self.states.get(PRUNE_KEY)
                if state is not None:
                    self.states.put(
                        PRUNE_KEY,
                        replace(
                            state,
                            last_outcome="completed" if outcome.ok else "failed",
                            last_error=None if outcome.error is None else outcome.error.message,
                        ),
                    )
            if not outcome.ok:
                log.error("scheduled prune failed: %s", outcome.error.message if outcome.error else "?")
            self.wake()

        try:
            self._prune_job = self.launcher.start_prune(done)
        except BackupError as exc:
            log.error("scheduled prune could not start: %s", exc.message)
            self._prune_due = None
            return
        log.info("scheduled prune started (job %s)", self._prune_job)

    def _done_callback(self, run: Run) -> Done:
        def done(outcome: Outcome) -> None:
            with self._lock:
                self._running.pop(run.plan.key, None)
                self._finished(run, outcome, final=run.attempt >= self.config.retries)
            self.wake()

        return done

    def _finished(self, run: Run, outcome: Outcome, final: bool) -> None:
        plan = run.plan
        state = self.states.get(plan.key) or _State(plan.timing.text, run.due, plan.app_id)
        error = outcome.error
        retry = not outcome.ok and not final and not isinstance(error, NOT_RETRIED)
        if outcome.ok:
            label = "completed"
        elif retry:
            label = "retrying"
        else:
            label = "failed"
        self.states.put(
            plan.key,
            replace(
                state,
                last_job_id=run.job_id,
                last_outcome=label,
                last_error=None if error is None else error.message,
            ),
        )
        self._count(plan.app_id, label)
        if retry:
            delay = self.config.retry_backoff_s * (2**run.attempt)
            again = Run(plan, run.due, self.clock.now() + timedelta(seconds=delay), run.attempt + 1)
            if plan.key in self._pending:  # a newer due time is already queued: that run is the retry
                return
            self._pending[plan.key] = again
            log.warning(
                "app %s: scheduled backup failed (%s); retry %d of %d in %.0f s",
                plan.app_id,
                error.message if error else "?",
                again.attempt,
                self.config.retries,
                delay,
            )
        elif not outcome.ok:
            log.error(
                "app %s: scheduled backup failed%s: %s",
                plan.app_id,
                f" after {run.attempt} retries" if run.attempt else "",
                error.message if error else "?",
            )

    def _count(self, app_id: str, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.scheduled_run(app_id, outcome)

    def _next_wake(self, now: datetime) -> datetime | None:
        times = [r.not_before for r in self._pending.values() if r.not_before > now]
        for plan in self._plans.values():
            when = next_run(plan.timing, now, self.config.tz)
            if when is not None:
                times.append(when)
        if self._prune_timing is not None and self._prune_due is None:
            when = next_run(self._prune_timing, now, self.config.tz)
            if when is not None:
                times.append(when)
        return min(times) if times else None

    # ---- what the API shows ----------------------------------------------------------------------

    def describe(self, key: str) -> dict:
        """Next run, queue state and last outcome of one schedule."""
        now = self.clock.now()
        with self._lock:
            plan = self._plans.get(key)
            doc: dict[str, Any] = {"next_run": None, "queued": False, "running_job_id": None}
            if plan is not None:
                when = next_run(plan.timing, now, self.config.tz)
                doc["next_run"] = iso_z(None if when is None else when + jitter_of(key, self.config.jitter_s))
            elif key in self._dormant:
                doc["dormant"] = self._dormant[key]
            if key in self._pending:
                doc["queued"] = True
                doc["queued_since"] = iso_z(self._pending[key].due)
            if key in self._running:
                doc["running_job_id"] = self._running[key].job_id
        state = self.states.get(key)
        if state is not None:
            doc["last_due"] = iso_z(state.last_due)
            doc["last_outcome"] = state.last_outcome
            doc["last_job_id"] = state.last_job_id
            doc["last_error"] = state.last_error
        return doc

    def queue(self) -> list[dict]:
        with self._lock:
            runs = sorted(self._pending.values(), key=lambda r: (r.not_before, r.due, r.plan.key))
            return [
                {
                    "schedule_id": r.plan.key,
                    "app_id": r.plan.app_id,
                    "due": iso_z(r.due),
                    "not_before": iso_z(r.not_before),
                    "attempt": r.attempt,
                }
                for r in runs
            ]
