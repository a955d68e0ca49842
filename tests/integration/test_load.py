"""Load: 30 labelled compose apps due at the same minute, `serve` with at most 2 backups at
a time, and API clients polling all along. Every app is backed up exactly once, never more
than 2 at once; the API's p99 stays within 200 ms and the daemon's memory under 500 MiB.
Slow (waits for a real cron minute); CI runs it. Prints the figures (docs/reliability.md)."""

from __future__ import annotations

import signal
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from sidecar.api import PREFIX
from tests.conftest import run_cli
from tests.integration.conftest import ComposeProject, service
from tests.serve_helpers import Served

pytestmark = pytest.mark.slow

APPS = 30
LIMIT = 2


def _rss_kib(pid: int, field: str = "VmRSS") -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def _iso(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def test_thirty_apps_due_at_one_minute(docker_client, tmp_path: Path) -> None:
    # the minute they are all due: far enough ahead to bring 30 apps and the daemon up first
    due = (datetime.now(UTC) + timedelta(seconds=150)).replace(second=0, microsecond=0)
    cron = f"{due.minute} {due.hour} * * *"
    tag = f"w9load{int(time.time()) % 100000}"
    projects = []
    for n in range(APPS):
        (tmp_path / f"app{n}").mkdir()
        p = ComposeProject(tmp_path / f"app{n}", f"{tag}x{n:02d}")
        p.write({"web": service(labels={"websoft9.backup.schedule": cron}, volumes=["site:/srv/site"])}, ["site"])
        projects.append(p)
    served: Served | None = None
    try:
        with ThreadPoolExecutor(6) as pool:
            list(pool.map(lambda p: p.up(), projects))
        with ThreadPoolExecutor(6) as pool:
            list(pool.map(lambda p: p.exec("web", f"seq 1 20000 > /srv/site/data-{p.name}.txt"), projects))
        repo = tmp_path / "repo"
        assert run_cli("init", "--repo", repo, env={"BACKUP_DATA_DIR": str(tmp_path / "data")}).code == 0
        env = {
            "TZ": "UTC",
            "BACKUP_MAX_CONCURRENT_BACKUPS": str(LIMIT),
            "BACKUP_PRUNE_SCHEDULE": "off",
            "BACKUP_SCHEDULER_JITTER": "0",
        }
        served = Served(tmp_path, repo, env=env)
        served.wait_ready()
        names = {p.name for p in projects}
        listed = {a["app_id"] for a in served.call(f"{PREFIX}/apps?limit=100")[1]["data"]["items"]}
        assert names <= listed, sorted(names - listed)
        assert datetime.now(UTC) < due - timedelta(seconds=5), "the machine was too slow to be ready before the minute"

        # API clients and a memory sampler, from now until every app is done
        latencies: list[float] = []
        by_path: dict[str, list[float]] = {}
        errors: list[str] = []
        peak = {"daemon": 0, "tree": 0}
        stop = threading.Event()

        def poll() -> None:
            paths = [f"{PREFIX}/apps?limit=100", f"{PREFIX}/snapshots?limit=50", f"{PREFIX}/schedules", "/metrics"]
            n = 0
            while not stop.is_set():
                path = paths[n % len(paths)]
                n += 1
                request = urllib.request.Request(served.base + path, headers={"X-API-Key": served.key or ""})
                t0 = time.monotonic()
                try:
                    with urllib.request.urlopen(request, timeout=30) as response:
                        response.read()
                        if response.status != 200:
                            errors.append(f"{path}: {response.status}")
                except OSError as exc:
                    errors.append(f"{path}: {exc}")
                latencies.append(time.monotonic() - t0)
                by_path.setdefault(path.split("?")[0], []).append(latencies[-1])
                stop.wait(0.05)

        def sample() -> None:
            pid = served.proc.pid
            while not stop.is_set():
                daemon = _rss_kib(pid)
                tree = daemon + sum(_rss_kib(c) for c in _children(pid))
                peak["daemon"] = max(peak["daemon"], daemon)
                peak["tree"] = max(peak["tree"], tree)
                stop.wait(0.2)

        threads = [threading.Thread(target=poll), threading.Thread(target=poll), threading.Thread(target=sample)]
        for t in threads:
            t.start()
        try:
            deadline = due + timedelta(seconds=240)
            jobs: dict[str, dict] = {}
            while len(jobs) < APPS and datetime.now(UTC) < deadline:
                time.sleep(1)
                for item in served.call(f"{PREFIX}/schedules")[1]["data"]["items"]:
                    job_id = item.get("last_job_id")
                    if item["app_id"] in names and job_id and item["app_id"] not in jobs:
                        job = served.call(f"{PREFIX}/jobs/{job_id}")[1]["data"]
                        if job["status"] not in ("queued", "running"):
                            jobs[item["app_id"]] = job
            time.sleep(5)  # would anything run a second time?
            daemon_hwm = _rss_kib(served.proc.pid, "VmHWM")
        finally:
            stop.set()
            for t in threads:
                t.join()

        assert len(jobs) == APPS, f"only {len(jobs)} of {APPS} apps were backed up: {sorted(names - set(jobs))}"
        failed = {a: j["error"] for a, j in jobs.items() if j["status"] != "completed"}
        assert not failed, failed
        counts = {}
        for name in names:
            rows = served.call(f"{PREFIX}/snapshots?app_id={name}&limit=10")[1]["data"]["items"]
            counts[name] = len(rows)
        assert set(counts.values()) == {1}, {a: c for a, c in counts.items() if c != 1}
        # never more than LIMIT at once (and the limit was used)
        events = sorted(
            [(_iso(j["started_at"]), 1) for j in jobs.values()] + [(_iso(j["finished_at"]), -1) for j in jobs.values()]
        )
        running = most = 0
        for _, step in events:
            running += step
            most = max(most, running)
        assert most == LIMIT, most
        first = min(_iso(j["started_at"]) for j in jobs.values())
        last = max(_iso(j["finished_at"]) for j in jobs.values())
        assert first >= due, (first, due)

        latencies.sort()
        p50, p99 = latencies[len(latencies) // 2], latencies[int(len(latencies) * 0.99)]
        print(
            f"\n{APPS} apps due at {due:%H:%M}, limit {LIMIT}: all backed up once within"
            f" {(last - first).total_seconds():.1f} s"
            f" (first start {(first - due).total_seconds():.1f} s after the minute), peak {most} at once;"
            f" API {len(latencies)} requests, median {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms,"
            f" max {latencies[-1] * 1000:.1f} ms, {len(errors)} errors; daemon RSS peak {daemon_hwm / 1024:.0f} MiB"
            f" (sampled {peak['daemon'] / 1024:.0f} MiB), daemon + job processes {peak['tree'] / 1024:.0f} MiB"
        )
        for path, values in sorted(by_path.items()):
            values.sort()
            print(f"  {path}: {len(values)} requests, median {values[len(values) // 2] * 1000:.1f} ms,"
                  f" p99 {values[int(len(values) * 0.99)] * 1000:.1f} ms")  # fmt: skip
        assert not errors, errors[:5]
        assert p99 <= 0.200, f"API p99 {p99 * 1000:.0f} ms during the run"
        assert daemon_hwm < 500 * 1024, f"daemon peak RSS {daemon_hwm / 1024:.0f} MiB"
    finally:
        if served is not None:
            served.stop(signal.SIGTERM)
            served.stop(signal.SIGKILL)
        with ThreadPoolExecutor(6) as pool:
            list(pool.map(lambda p: p.down(), projects))
