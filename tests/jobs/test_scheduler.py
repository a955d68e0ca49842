"""The scheduler's own logic, driven by a fake clock (no sleeping): due runs, the queue
and its limits, per-app exclusion, catch-up after downtime, retries, prune, jitter,
following the schedules as they change. Its state lives in a real catalog (SQLite).

What starts the work is faked here (ManualLauncher) except in the queue test, which
runs the real JobRunner; tests/jobs/test_scheduled_retention.py runs real backups
through Operations, tests/integration/test_scheduled_docker.py a real Docker app."""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest

from sidecar.catalog import Catalog, open_catalog
from sidecar.catalog.db import close_catalog
from sidecar.catalog.models import Job, ScheduleState
from sidecar.errors import AppPolicyInvalid, BackupCreateFailed
from sidecar.jobs.runner import JobRunner
from sidecar.jobs.scheduler import Outcome, Planned, Scheduler, SchedulerConfig, StateStore, jitter_of
from sidecar.jobs.timing import CronTiming, timing_of_label
from sidecar.repo.retention import RetentionPolicy


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)


class FakeClock:
    def __init__(self, now: datetime) -> None:
        self.t = now

    def now(self) -> datetime:
        return self.t

    def set(self, *parts: int) -> None:
        self.t = utc(*parts)


class FakeMetrics:
    def __init__(self) -> None:
        self.counts: dict[tuple[str, str], int] = {}

    def scheduled_run(self, app_id: str, outcome: str) -> None:
        self.counts[(app_id, outcome)] = self.counts.get((app_id, outcome), 0) + 1


class ManualLauncher:
    """Records what the scheduler starts; the test ends each run when it wants."""

    def __init__(self) -> None:
        self.started: list[dict] = []
        self.running: dict[str, tuple] = {}  # job id -> (run, done)
        self.busy_apps: set[str] = set()
        self.refuse: Exception | None = None
        self.prunes: list = []

    def active_jobs(self) -> int:
        return len(self.running)

    def app_busy(self, app_id: str) -> bool:
        return app_id in self.busy_apps

    def start_backup(self, run, final_attempt, done) -> str:
        if self.refuse is not None:
            raise self.refuse
        job_id = f"job{len(self.started) + len(self.prunes)}"
        plan = run.plan
        self.started.append(
            {"key": plan.key, "app": plan.app_id, "due": run.due, "attempt": run.attempt, "final": final_attempt}
        )
        self.running[job_id] = (run, done)
        return job_id

    def start_prune(self, done) -> str:
        job_id = f"prune{len(self.prunes)}"
        self.prunes.append(job_id)
        self.running[job_id] = (None, done)
        return job_id

    def finish(self, job_id: str | None = None, ok: bool = True, error=None) -> None:
        job_id = job_id or next(iter(self.running))
        _, done = self.running.pop(job_id)
        done(Outcome(ok, {} if ok else None, error))

    def keys(self) -> list[str]:
        return [s["key"] for s in self.started]


def plan(app_id: str, cron: str = "0 3 * * *", key: str | None = None, **kw) -> Planned:
    return Planned(
        key=key or f"label:{app_id}",
        app_id=app_id,
        source="label",
        timing=timing_of_label(cron),
        retention=RetentionPolicy(days=30),
        **kw,
    )


@pytest.fixture
def catalog(tmp_path):
    open_catalog(f"sqlite:///{tmp_path / 'catalog.db'}")
    yield Catalog()
    close_catalog()


class Env:
    def __init__(self, plans: list[Planned], start: datetime, **config) -> None:
        self.plans = plans
        self.dormant: dict[str, str] = {}
        self.clock = FakeClock(start)
        self.launcher = ManualLauncher()
        self.metrics = FakeMetrics()
        config.setdefault("prune_schedule", None)
        self.config = SchedulerConfig(**config)
        self.scheduler = self.new_scheduler()

    def new_scheduler(self) -> Scheduler:
        """A scheduler as a fresh process would make it (state read back from the catalog)."""
        return Scheduler(
            self.config,
            self.launcher,
            lambda: (list(self.plans), dict(self.dormant)),
            clock=self.clock,
            states=StateStore(),
            metrics=self.metrics,
        )

    def tick_at(self, *parts: int) -> datetime | None:
        self.clock.set(*parts)
        return self.scheduler.tick()


def test_a_schedule_runs_once_at_its_due_time(catalog):
    env = Env([plan("blog")], utc(2026, 1, 5, 2, 0))
    assert env.scheduler.tick() == utc(2026, 1, 5, 3, 0)  # sleeps until then
    assert env.launcher.started == []
    env.tick_at(2026, 1, 5, 2, 59, 59)
    assert env.launcher.started == []
    env.tick_at(2026, 1, 5, 3, 0)
    assert env.launcher.keys() == ["label:blog"]
    assert env.launcher.started[0]["due"] == utc(2026, 1, 5, 3)
    env.tick_at(2026, 1, 5, 3, 0, 30)  # woken again in the same minute: not started twice
    env.launcher.finish()
    assert env.tick_at(2026, 1, 5, 3, 1) == utc(2026, 1, 6, 3)
    assert env.launcher.keys() == ["label:blog"]
    env.tick_at(2026, 1, 6, 3, 0, 1)
    assert env.launcher.keys() == ["label:blog", "label:blog"]
    assert env.scheduler.describe("label:blog")["last_outcome"] == "completed"  # the first one
    env.launcher.finish()
    assert env.metrics.counts[("blog", "completed")] == 2


def test_a_new_schedule_does_not_run_for_due_times_before_it_was_seen(catalog):
    env = Env([plan("blog")], utc(2026, 1, 5, 10, 0))  # 03:00 today is past, but the schedule is new
    env.scheduler.tick()
    assert env.launcher.started == []
    assert env.scheduler.describe("label:blog")["next_run"] == "2026-01-06T03:00:00Z"


def test_catch_up_runs_a_recent_miss_once(catalog):
    env = Env([plan("blog"), plan("shop", "0 * * * *")], utc(2026, 1, 5, 2, 59))
    env.scheduler.tick()  # seen; then the sidecar is down from 02:59 to 05:30
    env.clock.set(2026, 1, 5, 5, 30)
    env.scheduler = env.new_scheduler()
    env.scheduler.tick()
    started = {(s["key"], s["due"]) for s in env.launcher.started}
    # blog: 03:00 missed, 2.5 h ago (within 6 h): once. shop: 03:00, 04:00, 05:00 missed: once, for 05:00
    assert started == {("label:blog", utc(2026, 1, 5, 3)), ("label:shop", utc(2026, 1, 5, 5))}
    for _ in range(2):
        env.launcher.finish()
    env.tick_at(2026, 1, 5, 5, 45)
    assert len(env.launcher.started) == 2  # not replayed
    env.tick_at(2026, 1, 5, 6, 0)
    assert env.launcher.keys()[-1] == "label:shop"


def test_a_miss_older_than_the_catch_up_window_is_logged_and_skipped(catalog, caplog):
    env = Env([plan("blog")], utc(2026, 1, 5, 2, 59), catch_up_s=6 * 3600)
    env.scheduler.tick()
    env.clock.set(2026, 1, 7, 12, 0)  # down two and a half days: 03:00 on the 5th, 6th and 7th missed
    env.scheduler = env.new_scheduler()
    env.scheduler.tick()
    assert env.launcher.started == []
    assert "missed its run at 2026-01-07T03:00:00Z" in caplog.text
    assert "with 2 earlier missed run(s)" in caplog.text
    assert env.metrics.counts[("blog", "skipped")] == 1
    row = ScheduleState.get_by_id("label:blog")
    assert row.last_outcome == "skipped" and row.last_due_at == datetime(2026, 1, 7, 3)
    env.tick_at(2026, 1, 8, 3, 0)  # and the schedule goes on
    assert env.launcher.keys() == ["label:blog"]


def test_a_run_due_while_the_app_is_busy_is_queued_once_not_stacked(catalog):
    env = Env([plan("blog", "* * * * *")], utc(2026, 1, 5, 9, 59, 30))
    env.scheduler.tick()
    env.tick_at(2026, 1, 5, 10, 0)
    assert len(env.launcher.started) == 1  # runs long
    env.tick_at(2026, 1, 5, 10, 1)
    env.tick_at(2026, 1, 5, 10, 2)
    env.tick_at(2026, 1, 5, 10, 3)
    assert len(env.launcher.started) == 1
    assert len(env.scheduler.queue()) == 1  # 10:01 queued; 10:02 and 10:03 folded into it
    assert env.metrics.counts[("blog", "coalesced")] == 2
    env.launcher.finish()
    env.tick_at(2026, 1, 5, 10, 3, 10)
    assert [s["due"] for s in env.launcher.started] == [utc(2026, 1, 5, 10, 0), utc(2026, 1, 5, 10, 1)]
    assert env.scheduler.queue() == []


def test_never_two_operations_on_one_app(catalog):
    api_schedule = plan("blog", "0 3 * * *", key="sch_api")
    env = Env([plan("blog"), api_schedule, plan("shop")], utc(2026, 1, 5, 2, 59))
    env.launcher.busy_apps.add("shop")  # a restore through the API, say
    env.scheduler.tick()
    env.tick_at(2026, 1, 5, 3, 0)
    assert [s["app"] for s in env.launcher.started] == ["blog"]  # one of blog's two; shop waits
    env.tick_at(2026, 1, 5, 3, 5)
    assert len(env.launcher.started) == 1
    env.launcher.busy_apps.clear()
    env.tick_at(2026, 1, 5, 3, 6)
    assert [s["app"] for s in env.launcher.started] == ["blog", "shop"]
    env.launcher.finish("job0")
    env.tick_at(2026, 1, 5, 3, 7)
    assert [s["app"] for s in env.launcher.started] == ["blog", "shop", "blog"]
    assert {s["key"] for s in env.launcher.started if s["app"] == "blog"} == {"label:blog", "sch_api"}


def test_twenty_apps_due_together_run_two_at_a_time_all_once(catalog):
    """The real JobRunner: its pool and the scheduler's limit together."""
    runner = JobRunner(catalog, 2)
    lock = threading.Lock()
    running: set[str] = set()
    peak = [0]
    ran: list[str] = []
    release = {f"app{i:02d}": threading.Event() for i in range(20)}
    finished = threading.Semaphore(0)

    class RunnerLauncher:
        def active_jobs(self) -> int:
            return runner.active()

        def app_busy(self, app_id: str) -> bool:
            return runner.busy(app_id) is not None

        def start_backup(self, run, final_attempt, done) -> str:
            app_id = run.plan.app_id
            job = catalog.create_job("backup", app_id)

            def fn(progress):
                with lock:
                    running.add(app_id)
                    peak[0] = max(peak[0], len(running))
                    ran.append(app_id)
                assert release[app_id].wait(30)
                with lock:
                    running.discard(app_id)
                return {}

            def on_finish(job_id, result, error):
                done(Outcome(error is None, result, error))
                finished.release()

            runner.submit(job.job_id, app_id, fn, on_finish)
            return job.job_id

        def start_prune(self, done) -> str:
            raise AssertionError("no prune here")

    clock = FakeClock(utc(2026, 1, 5, 2, 59))
    scheduler = Scheduler(
        SchedulerConfig(max_concurrent=2, prune_schedule=None),
        RunnerLauncher(),
        lambda: ([plan(app) for app in release], {}),
        clock=clock,
    )
    scheduler.tick()
    clock.set(2026, 1, 5, 3, 0)
    scheduler.tick()
    assert runner.active() == 2 and len(scheduler.queue()) == 18
    deadline = time.monotonic() + 30  # both jobs inside their work before any is let go: on a loaded
    while len(running) < 2 and time.monotonic() < deadline:  # machine a job's thread can start late
        time.sleep(0.01)
    for app_id in sorted(release):  # due together: started in key order, two at a time
        release[app_id].set()
        assert finished.acquire(timeout=30)
        scheduler.tick()
        assert runner.active() <= 2
    runner.shutdown()
    assert peak[0] == 2
    assert sorted(ran) == sorted(release) and len(ran) == 20  # all, none twice
    assert scheduler.queue() == []
    assert {scheduler.describe(f"label:{a}")["last_outcome"] for a in release} == {"completed"}
    assert [j.status for j in Job.select()] == ["completed"] * 20


def test_a_failed_run_is_retried_with_back_off_then_counts_as_failed(catalog, caplog):
    env = Env([plan("blog")], utc(2026, 1, 5, 2, 59), retries=2, retry_backoff_s=60)
    env.scheduler.tick()
    boom = BackupCreateFailed("app blog: dump failed")
    env.tick_at(2026, 1, 5, 3, 0)
    assert env.launcher.started[-1]["final"] is False
    env.launcher.finish(ok=False, error=boom)
    assert env.scheduler.describe("label:blog")["last_outcome"] == "retrying"
    env.tick_at(2026, 1, 5, 3, 0, 59)
    assert len(env.launcher.started) == 1  # back-off: 60 s
    env.tick_at(2026, 1, 5, 3, 1, 0)
    assert env.launcher.started[-1]["attempt"] == 1 and env.launcher.started[-1]["final"] is False
    env.launcher.finish(ok=False, error=boom)
    env.tick_at(2026, 1, 5, 3, 2, 59)
    assert len(env.launcher.started) == 2  # then 120 s
    env.tick_at(2026, 1, 5, 3, 3, 0)
    assert env.launcher.started[-1]["attempt"] == 2 and env.launcher.started[-1]["final"] is True
    env.launcher.finish(ok=False, error=boom)
    env.tick_at(2026, 1, 5, 4, 0)
    assert len(env.launcher.started) == 3  # given up until the next due time
    assert env.metrics.counts[("blog", "retrying")] == 2 and env.metrics.counts[("blog", "failed")] == 1
    status = env.scheduler.describe("label:blog")
    assert status["last_outcome"] == "failed" and status["last_error"] == "app blog: dump failed"
    assert "scheduled backup failed after 2 retries: app blog: dump failed" in caplog.text


def test_a_retry_that_succeeds_counts_as_completed(catalog):
    env = Env([plan("blog")], utc(2026, 1, 5, 2, 59), retries=2, retry_backoff_s=30)
    env.scheduler.tick()
    env.tick_at(2026, 1, 5, 3, 0)
    env.launcher.finish(ok=False, error=BackupCreateFailed("transient"))
    env.tick_at(2026, 1, 5, 3, 0, 30)
    env.launcher.finish(ok=True)
    assert env.metrics.counts == {("blog", "retrying"): 1, ("blog", "completed"): 1}


def test_label_errors_are_not_retried(catalog):
    env = Env([plan("blog")], utc(2026, 1, 5, 2, 59), retries=2)
    env.scheduler.tick()
    env.launcher.refuse = AppPolicyInvalid("app blog is not backed up until its labels are fixed: ...")
    env.tick_at(2026, 1, 5, 3, 0)
    env.tick_at(2026, 1, 5, 3, 10)
    assert env.launcher.started == [] and env.scheduler.queue() == []
    assert env.metrics.counts[("blog", "failed")] == 1


def test_schedules_follow_the_registry(catalog, caplog):
    caplog.set_level(logging.INFO)
    env = Env([plan("blog"), plan("shop")], utc(2026, 1, 5, 2, 59))
    env.launcher.busy_apps.add("shop")
    env.scheduler.tick()
    env.tick_at(2026, 1, 5, 3, 0)
    assert [r["app_id"] for r in env.scheduler.queue()] == ["shop"]  # waits for its busy app
    # shop removed (compose down): its queued run goes, its schedule stops
    env.plans = [plan("blog", "30 4 * * *")]  # and blog's label changed
    env.dormant = {"label:shop": "the app is not on this Docker host"}
    env.launcher.busy_apps.clear()
    env.tick_at(2026, 1, 5, 3, 1)
    assert env.scheduler.queue() == []
    assert "schedule label:shop is gone; its queued run is dropped" in caplog.text
    assert env.scheduler.describe("label:shop")["dormant"] == "the app is not on this Docker host"
    assert env.scheduler.describe("label:blog")["next_run"] == "2026-01-05T04:30:00Z"
    env.launcher.finish()
    env.tick_at(2026, 1, 5, 4, 30)
    assert env.launcher.keys() == ["label:blog", "label:blog"]
    assert "shop" not in {s["app"] for s in env.launcher.started}


def test_a_changed_timing_counts_from_the_change_not_from_the_old_due_time(catalog):
    env = Env([plan("blog", "0 3 * * *")], utc(2026, 1, 5, 3, 30))
    env.scheduler.tick()
    env.plans = [plan("blog", "0 9 * * *")]
    env.tick_at(2026, 1, 5, 10, 0)  # 09:00 passed before the change was seen at 10:00: not a miss
    assert env.launcher.started == []


def test_jitter_delays_each_schedule_by_its_own_fixed_amount(catalog):
    env = Env([plan("blog"), plan("shop")], utc(2026, 1, 5, 2, 59), jitter_s=600)
    delays = {k: jitter_of(k, 600) for k in ("label:blog", "label:shop")}
    assert all(timedelta(0) <= d < timedelta(seconds=600) for d in delays.values())
    assert delays["label:blog"] != delays["label:shop"] and jitter_of("label:blog", 600) == delays["label:blog"]
    env.scheduler.tick()
    first = min(delays, key=delays.get)
    env.clock.t = utc(2026, 1, 5, 3) + delays[first] - timedelta(seconds=1)
    env.scheduler.tick()
    assert env.launcher.started == []
    env.clock.t = utc(2026, 1, 5, 3) + delays[first]
    env.scheduler.tick()
    assert env.launcher.keys() == [first]
    assert env.launcher.started[0]["due"] == utc(2026, 1, 5, 3)


def test_prune_waits_for_running_backups_and_holds_new_ones_back(catalog):
    env = Env(
        [plan("blog", "0 * * * *"), plan("shop", "30 4 * * *")],
        utc(2026, 1, 4, 3, 59),
        prune_schedule="15 4 * * 0",  # Sundays 04:15; 2026-01-04 is a Sunday
    )
    env.scheduler.tick()
    env.tick_at(2026, 1, 4, 4, 0)
    assert env.launcher.keys() == ["label:blog"]  # still running at 04:15
    env.tick_at(2026, 1, 4, 4, 15)
    assert env.launcher.prunes == []  # waits for blog
    env.tick_at(2026, 1, 4, 4, 30)
    assert env.launcher.keys() == ["label:blog"]  # shop is due, but prune comes first
    env.launcher.finish("job0")
    env.tick_at(2026, 1, 4, 4, 31)
    assert env.launcher.prunes == ["prune0"] and env.launcher.keys() == ["label:blog"]
    env.launcher.finish("prune0")
    env.tick_at(2026, 1, 4, 4, 32)
    assert env.launcher.keys() == ["label:blog", "label:shop"]
    assert ScheduleState.get_by_id("prune").last_outcome == "completed"
    env.launcher.finish()
    env.tick_at(2026, 1, 5, 4, 15)  # Monday: no prune
    assert env.launcher.prunes == ["prune0"]


def test_the_next_wake_is_the_earliest_due_time(catalog):
    plans = [plan("blog", "0 3 * * *"), plan("shop", "45 2 * * *")]
    env = Env(plans, utc(2026, 1, 5, 1, 0), prune_schedule="0 2 * * *")
    assert env.scheduler.tick() == utc(2026, 1, 5, 2, 0)
    assert env.tick_at(2026, 1, 5, 2, 1) == utc(2026, 1, 5, 2, 45)


def test_state_is_kept_in_the_catalog(catalog):
    env = Env([plan("blog")], utc(2026, 1, 5, 2, 59))
    env.scheduler.tick()
    env.tick_at(2026, 1, 5, 3, 0)
    env.launcher.finish()
    row = ScheduleState.get_by_id("label:blog")
    assert (row.timing, row.last_due_at, row.last_outcome, row.last_job_id) == (
        "0 3 * * *",
        datetime(2026, 1, 5, 3),
        "completed",
        "job0",
    )
    assert CronTiming("0 3 * * *").text == row.timing
