"""Scheduled backups through the real Operations, JobRunner, catalog and repository:
retention after each run, the schedules read from labels and the catalog, prune.

The backup itself (volumes and dumps read through Docker) is replaced by a backup
of a local directory under the app's id: what is under test is what happens
around it. Docker's part is in tests/integration/test_scheduled_docker.py."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from sidecar.catalog.db import close_catalog
from sidecar.catalog.models import Backup, BackupSchedule, Job
from sidecar.catalog.schedules import ScheduleFields, create_schedule
from sidecar.docker.apps import Registry
from sidecar.jobs.backup import AppBackupResult
from sidecar.jobs.scheduler import Scheduler, SchedulerConfig, StateStore
from sidecar.jobs.scheduling import OperationsLauncher, ScheduleSources, config_from_env
from sidecar.metrics import Metrics
from sidecar.operations import Operations
from sidecar.repo.backup import BackupOptions, BackupSession
from sidecar.repo.retention import RetentionPolicy
from tests.api.conftest import make_env
from tests.docker.test_apps import FakeClient, inspect


class DirectoryBackups(Operations):
    """Operations whose backup reads a directory instead of Docker volumes."""

    def _backup_now(self, app, progress, **kwargs):  # type: ignore[no-untyped-def]
        src = self.state_dir.parent / f"data-{app.app_id}"
        src.mkdir(exist_ok=True)
        counter = src / "counter"
        counter.write_text(str(int(counter.read_text()) + 1 if counter.exists() else 1))
        options = BackupOptions(
            app_id=app.app_id,
            app_name=app.app_name,
            backup_type=kwargs.get("backup_type") or "incremental",
            tags=kwargs.get("tags") or [],
            backup_id=kwargs.get("backup_id"),
        )
        with BackupSession(self.open_repo(), options, progress) as session:
            session.add_tree("volume:data", str(src), kind="volume")
            snap = session.commit()
        self.calls.append(kwargs)
        return AppBackupResult(snap)


class FakeClock:
    def __init__(self, now: datetime) -> None:
        self.t = now

    def now(self) -> datetime:
        return self.t


def registry_with(*containers: dict) -> Registry:
    client = FakeClient()
    for attrs in containers:
        client.add(attrs)
    registry = Registry(log_changes=False)
    registry.inventory(client)
    return registry


@pytest.fixture
def setup(tmp_path):
    env = make_env(tmp_path, f"sqlite:///{tmp_path / 'catalog.db'}")
    base = env.ops
    ops = DirectoryBackups(**{f: getattr(base, f) for f in base.__dataclass_fields__})
    ops.calls = []
    ops.metrics = Metrics()
    yield env, ops
    ops.runner.shutdown()
    close_catalog()


def run_due(scheduler: Scheduler, ops: Operations, clock: FakeClock, when: datetime) -> list[str]:
    """Tick at `when`, wait for what started; returns the ids of the jobs that ran."""
    clock.t = when
    before = {j.job_id for j in Job.select()}
    scheduler.tick()
    started = [j.job_id for j in Job.select() if j.job_id not in before]
    for job_id in started:
        ops.runner.wait(job_id, timeout=60)
    return started


def test_retention_after_each_scheduled_backup(setup):
    env, ops = setup
    registry = registry_with(
        inspect(
            "c1",
            "blog_web_1",
            "blog",
            labels={"websoft9.backup.schedule": "0 3 * * *", "websoft9.backup.retention": "last=2"},
        )
    )
    ops.registry = registry
    clock = FakeClock(datetime(2026, 1, 1, 2, 0, tzinfo=UTC))
    config = SchedulerConfig(prune_schedule=None)
    sources = ScheduleSources(registry, config)
    scheduler = Scheduler(config, OperationsLauncher(ops), sources, clock=clock, metrics=ops.metrics)
    ops.scheduler = scheduler
    scheduler.tick()
    results = []
    for day in range(1, 5):
        jobs = run_due(scheduler, ops, clock, datetime(2026, 1, day, 3, 0, tzinfo=UTC))
        assert len(jobs) == 1
        job = ops.catalog.get_job(jobs[0])
        assert job.status == "completed", job.error
        results.append(job)
    import json

    forgotten = [json.loads(j.result)["forgotten"] for j in results]
    assert forgotten[0] == forgotten[1] == []
    assert len(forgotten[2]) == 1 and len(forgotten[3]) == 1  # the oldest each time
    repo = env.repo()
    kept = sorted(s.backup_id for s in repo.list_snapshots("blog"))
    assert len(kept) == 2
    rows = sorted(r.backup_id for r in Backup.select().where(Backup.app_id == "blog"))
    assert rows == kept  # the catalog forgot the same ones
    assert set(forgotten[2] + forgotten[3]).isdisjoint(kept)
    assert json.loads(results[3].result)["retention"] == "last=2"
    assert all(c["tags"] == ["scheduled"] for c in ops.calls)
    metrics = ops.metrics.registry.get_sample_value
    assert metrics("backup_forgotten_total", {"app_id": "blog"}) == 2
    assert metrics("backup_scheduled_runs_total", {"app_id": "blog", "outcome": "completed"}) == 4
    assert metrics("backup_success_total", {"app_id": "blog", "type": "incremental"}) == 4
    status = scheduler.describe("label:blog")
    assert status["last_outcome"] == "completed" and status["next_run"] == "2026-01-05T03:00:00Z"


def test_api_schedules_and_label_schedules_are_both_read(setup):
    _, ops = setup
    registry = registry_with(
        inspect("c1", "blog_web_1", "blog", labels={"websoft9.backup.schedule": "@daily"}),
        inspect("c2", "shop_web_1", "shop"),  # no labels at all: backed up by its API schedule
        inspect("c3", "bad_web_1", "bad", labels={"websoft9.backup.schedule": "@daily", "websoft9.backup.type": "x"}),
    )
    api = create_schedule(
        ScheduleFields(
            app_id="shop", frequency="weekly", time="04:30", day_of_week=1, retention_days=14, include_uploads=True
        )
    )
    gone = create_schedule(ScheduleFields(app_id="nothere", frequency="daily", time="01:00"))
    off = create_schedule(ScheduleFields(app_id="shop", frequency="daily", time="01:00", enabled=False))
    plans, dormant = ScheduleSources(registry, SchedulerConfig())()
    by_key = {p.key: p for p in plans}
    assert set(by_key) == {"label:blog", api.schedule_id}
    shop = by_key[api.schedule_id]
    assert (shop.app_id, shop.source, shop.backup_type, shop.retention) == (
        "shop",
        "api",
        "full",
        RetentionPolicy(days=14),
    )
    assert by_key["label:blog"].retention == RetentionPolicy(days=30)  # the default
    assert dormant[gone.schedule_id].startswith("the app is not on this Docker host")
    assert dormant[off.schedule_id] == "disabled"
    assert "labels have errors" in dormant["label:bad"]

    # through the scheduler and Operations: the API schedule's options reach the backup
    clock = FakeClock(datetime(2026, 1, 4, 12, 0, tzinfo=UTC))  # a Sunday
    config = SchedulerConfig(prune_schedule=None)
    ops.registry = registry
    scheduler = Scheduler(config, OperationsLauncher(ops), ScheduleSources(registry, config), clock=clock)
    ops.scheduler = scheduler
    scheduler.tick()
    apps = {a["app_id"]: a for a in ops.apps()}
    assert apps["shop"]["next_run"] == "2026-01-05T04:30:00Z"
    assert apps["blog"]["next_run"] == "2026-01-05T00:00:00Z"
    assert [s["schedule_id"] for s in apps["shop"]["schedules"]] == [api.schedule_id, off.schedule_id]
    assert apps["bad"]["schedules"][0]["dormant"].startswith("the app's labels have errors")
    run_due(scheduler, ops, clock, datetime(2026, 1, 5, 0, 0, tzinfo=UTC))
    run_due(scheduler, ops, clock, datetime(2026, 1, 5, 4, 30, tzinfo=UTC))
    assert [(c["backup_type"], c["include_volumes"]) for c in ops.calls] == [("incremental", True), ("full", True)]
    assert BackupSchedule.select().count() == 3


def test_scheduled_prune_frees_what_retention_forgot(setup):
    env, ops = setup
    registry = registry_with(
        inspect(
            "c1",
            "blog_web_1",
            "blog",
            labels={"websoft9.backup.schedule": "0 * * * *", "websoft9.backup.retention": "last=1"},
        )
    )
    ops.registry = registry
    clock = FakeClock(datetime(2026, 1, 4, 1, 30, tzinfo=UTC))
    config = SchedulerConfig(prune_schedule="30 3 * * 0")
    scheduler = Scheduler(config, OperationsLauncher(ops), ScheduleSources(registry, config), clock=clock)
    scheduler.tick()
    for hour in (2, 3):
        run_due(scheduler, ops, clock, datetime(2026, 1, 4, hour, 0, tzinfo=UTC))
    jobs = run_due(scheduler, ops, clock, datetime(2026, 1, 4, 3, 30, tzinfo=UTC))
    prune = ops.catalog.get_job(jobs[0])
    assert (prune.kind, prune.status) == ("prune", "completed"), prune.error
    assert StateStore().get("prune").last_outcome == "completed"
    assert len(env.repo().list_snapshots("blog")) == 1


def test_scheduler_settings_from_the_environment():
    config = config_from_env(
        {
            "TZ": "Europe/Berlin",
            "BACKUP_SCHEDULER_JITTER": "5m",
            "BACKUP_SCHEDULER_CATCH_UP": "2h",
            "BACKUP_SCHEDULER_RETRIES": "3",
            "BACKUP_SCHEDULER_RETRY_BACKOFF": "30s",
            "BACKUP_PRUNE_SCHEDULE": "0 5 * * 6",
            "BACKUP_RETENTION": "last=3,daily=7",
            "BACKUP_MAX_CONCURRENT_BACKUPS": "4",
        }
    )
    assert (config.jitter_s, config.catch_up_s, config.retries, config.retry_backoff_s) == (300, 7200, 3, 30)
    assert (config.prune_schedule, config.max_concurrent, str(config.tz)) == ("0 5 * * 6", 4, "Europe/Berlin")
    assert config.default_retention == RetentionPolicy(last=3, daily=7)
    defaults = config_from_env({})
    assert (defaults.prune_schedule, defaults.catch_up_s, defaults.retries, defaults.max_concurrent) == (
        "0 4 * * 0",
        21600,
        2,
        2,
    )
    assert config_from_env({"BACKUP_PRUNE_SCHEDULE": "off"}).prune_schedule is None


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"TZ": "Nowhere/City"}, "TZ: unknown time zone 'Nowhere/City'"),
        ({"BACKUP_SCHEDULER_JITTER": "soon"}, "BACKUP_SCHEDULER_JITTER: not a duration"),
        ({"BACKUP_SCHEDULER_RETRIES": "-1"}, "BACKUP_SCHEDULER_RETRIES: must be a whole number from 0 to 10"),
        ({"BACKUP_PRUNE_SCHEDULE": "weekly"}, "BACKUP_PRUNE_SCHEDULE: schedule 'weekly' is not a valid cron"),
        ({"BACKUP_RETENTION": "keep=5"}, "BACKUP_RETENTION: retention 'keep=5'"),
        ({"BACKUP_MAX_CONCURRENT_BACKUPS": "0"}, "BACKUP_MAX_CONCURRENT_BACKUPS: must be a whole number from 1 to 64"),
    ],
)
def test_a_bad_scheduler_setting_names_the_variable(env, message):
    from sidecar.errors import InvalidRequest

    with pytest.raises(InvalidRequest) as err:
        config_from_env(env)
    assert message in err.value.message
