"""How fast the API answers: listing with 10,000 backups in the catalog, a metrics
scrape with 200 apps, and latency at a steady request rate while two backups run
in the same process (as they do in `serve`: job threads + store worker processes).

    python bench/api.py [--backups 10000] [--apps 200] [--rate 50] [--seconds 30]
                        [--data DIR] [--catalog-url URL] [--in-process]

The two backups run as `serve` runs jobs: each in a process of its own at nice
10, its store workers 10 lower still. --in-process runs them as threads of the
API's process instead (how jobs ran before they had their own processes).

--data is the tree the two backups read (default: /data/ds2g if present, else
400 MiB of bench/dataset.py data made in the work directory). Targets (issue 6):
list median <= 20 ms; p99 <= 200 ms at 50 requests/s during two backups; scrape
<= 50 ms with 200 apps.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from bench import dataset  # noqa: E402
from sidecar.api import PREFIX, create_app  # noqa: E402
from sidecar.catalog import Catalog, RepositoryInfo, open_catalog  # noqa: E402
from sidecar.catalog.models import Backup, database  # noqa: E402
from sidecar.jobs.runner import JobRunner  # noqa: E402
from sidecar.metrics import Metrics  # noqa: E402
from sidecar.operations import Operations  # noqa: E402
from sidecar.repo.backends.local import LocalBackend  # noqa: E402
from sidecar.repo.backup import BackupOptions, BackupSession  # noqa: E402
from sidecar.repo.repository import Repository  # noqa: E402

KEY = "bench-api-key"
PASSPHRASE = b"bench passphrase"


def fill_catalog(count: int, apps: int, repo: str) -> None:
    rng = random.Random(1)
    start = datetime(2026, 1, 1)
    rows = []
    for n in range(count):
        app = f"app-{n % apps:03d}"
        created = start + timedelta(hours=n)
        rows.append(
            {
                "backup_id": f"backup_{created:%Y%m%d_%H%M%S}_{n:06x}",
                "app_id": app,
                "app_name": app.upper(),
                "backup_type": "incremental",
                "size_bytes": rng.randrange(1 << 20, 1 << 32),
                "storage_location": "local",
                "file_path": f"{repo}/snapshots/{n:064x}",
                "checksum": f"sha256:{n:064x}",
                "status": "completed" if n % 50 else "failed",
                "created_at": created,
                "completed_at": created + timedelta(seconds=rng.randrange(5, 600)),
                "snapshot_id": f"{n:064x}" if n % 50 else None,
                "repository": repo,
                "tags": "[]",
            }
        )
    with database.atomic():
        for i in range(0, len(rows), 500):
            Backup.insert_many(rows[i : i + 500]).execute()


def timed_get(url: str) -> float:
    request = urllib.request.Request(url, headers={"X-API-Key": KEY})
    t0 = time.perf_counter()
    with urllib.request.urlopen(request, timeout=30) as response:
        response.read()
        assert response.status == 200
    return (time.perf_counter() - t0) * 1000


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def report(name: str, values: list[float]) -> None:
    print(
        f"{name}: n={len(values)} median {statistics.median(values):.1f} ms, p95 {pct(values, 95):.1f} ms, "
        f"p99 {pct(values, 99):.1f} ms, max {max(values):.1f} ms",
        flush=True,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backups", type=int, default=10_000)
    ap.add_argument("--apps", type=int, default=200)
    ap.add_argument("--rate", type=float, default=50.0)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--data")
    ap.add_argument("--catalog-url")
    ap.add_argument("--in-process", action="store_true", help="the two backups as threads of the API's process")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="w9-api-bench-", dir="/var/tmp"))
    try:
        data = args.data or ("/data/ds2g" if os.path.isdir("/data/ds2g") else None)
        if data is None:
            data = str(work / "data")
            dataset.create(data, size_mb=400, seed=3)
        repo_path = work / "repo"
        Repository.init(LocalBackend(repo_path), PASSPHRASE)
        open_catalog(args.catalog_url or f"sqlite:///{work / 'catalog.db'}")
        t0 = time.perf_counter()
        fill_catalog(args.backups, args.apps, str(repo_path))
        print(f"catalog: {args.backups} backups of {args.apps} apps in {time.perf_counter() - t0:.1f} s", flush=True)
        catalog = Catalog()
        ops = Operations(
            catalog=catalog,
            runner=JobRunner(catalog, 2),
            open_repo=lambda: Repository.open(LocalBackend(repo_path), PASSPHRASE),
            repo_info=RepositoryInfo(str(repo_path)),
            state_dir=work / "state",
            metrics=Metrics(repository_size=lambda: sum(s for _, s in LocalBackend(repo_path).list(""))),
        )
        from waitress.server import create_server

        server = create_server(create_app(ops, KEY), host="127.0.0.1", port=0, threads=8)
        threading.Thread(target=server.run, daemon=True).start()
        base = f"http://127.0.0.1:{server.effective_port}"
        rng = random.Random(2)

        def list_url() -> str:
            return f"{base}{PREFIX}/snapshots?app_id=app-{rng.randrange(args.apps):03d}&limit=50"

        for _ in range(20):  # warm-up
            timed_get(list_url())
        report("idle: GET /snapshots?app_id=..&limit=50", [timed_get(list_url()) for _ in range(300)])
        report(f"idle: GET /metrics ({args.apps} apps)", [timed_get(f"{base}/metrics") for _ in range(100)])

        # two backups running in this process, as `serve` runs them
        stop = threading.Event()
        done_backups: list[float] = []

        def back_up_again(n: int) -> None:
            if not args.in_process:  # a process of its own at nice 10 (workers +10), as serve runs a job
                env = {**os.environ, "BACKUP_ENCRYPTION_KEY": PASSPHRASE.decode(), "BACKUP_WORKER_NICE": "10"}
                cmd = ["nice", "-n", "10", sys.executable, "-m", "sidecar", "backup", "--repo", str(repo_path),
                       "--path", data, "--app-id", f"load-{n}", "--type", "full"]  # fmt: skip
                while not stop.is_set():
                    t = time.perf_counter()
                    subprocess.run(cmd, env=env, check=True, capture_output=True, cwd=HERE.parent)
                    done_backups.append(time.perf_counter() - t)
                return
            repo = Repository.open(LocalBackend(repo_path), PASSPHRASE)
            while not stop.is_set():
                t = time.perf_counter()
                with BackupSession(repo, BackupOptions(app_id=f"load-{n}", backup_type="full")) as session:
                    session.add_tree("data", data)
                    session.commit()
                done_backups.append(time.perf_counter() - t)

        loaders = [threading.Thread(target=back_up_again, args=(n,), daemon=True) for n in range(2)]
        for t in loaders:
            t.start()
        time.sleep(3)  # both well under way
        latencies: list[float] = []
        scrapes: list[float] = []
        lock = threading.Lock()

        def one(i: int) -> None:
            url = f"{base}/metrics" if i % 10 == 9 else list_url()
            ms = timed_get(url)
            with lock:
                (scrapes if url.endswith("/metrics") else latencies).append(ms)

        total = int(args.rate * args.seconds)
        start = time.perf_counter()
        with ThreadPoolExecutor(32) as pool:
            for i in range(total):  # open loop: requests go out on schedule, whatever the answers do
                delay = start + i / args.rate - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                pool.submit(one, i)
        stop.set()
        how = "threads of the API's process" if args.in_process else "processes at nice 10"
        print(f"two full backups of {data} running as {how}", flush=True)
        report(f"during 2 backups, {args.rate:.0f} req/s for {args.seconds:.0f} s: GET /snapshots", latencies)
        report("during 2 backups: GET /metrics", scrapes)
        both = latencies + scrapes
        print(f"during 2 backups: all requests p99 {pct(both, 99):.1f} ms (target <= 200 ms); "
              f"{len(done_backups)} backups finished meanwhile", flush=True)  # fmt: skip
        for t in loaders:
            t.join()
        server.close()
        ops.runner.shutdown()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
