"""Backing up a Docker volume: host mountpoint and archive API against `backup --path`.

    python bench/docker_volume.py [--size-mb 2048] [--data DIR] [--work /var/tmp/w9-docker-bench]
                                  [--discovery 200] [--runs 2]

Copies the data set into a Docker volume mounted by a labelled container, then
times full backups of the same data, each into a fresh repository, after the
same page-cache warm-up:

* `backup --path MOUNTPOINT` (the engine on a plain directory: the reference),
* `backup --app APP` reading the volume through its host mountpoint,
* `backup --app APP` with BACKUP_VOLUME_ACCESS=archive (Docker's archive API),

and prints wall time, peak memory and the ratios to the reference. Then it
creates N labelled containers (`--discovery`) and times the registry's start-up
inventory of them. Needs root, a running Docker engine and the test image
(scripts/test-env image).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from bench import dataset  # noqa: E402
from bench.compare_restic import du, run  # noqa: E402

IMAGE = os.environ.get("W9_TEST_IMAGE", "websoft9-backup-test:1")
APP = "w9bench"
PASSWORD = "benchmark passphrase"


def docker(*args: str) -> str:
    return subprocess.run(["docker", *args], check=True, capture_output=True, text=True).stdout.strip()


def warm(path: str) -> None:
    subprocess.run(["tar", "-cf", "/dev/null", "-C", path, "."], check=True)


def backup_runs(mountpoint: str, work: Path, runs: int) -> dict[str, list[dict]]:
    cli = [sys.executable, "-m", "sidecar"]
    results: dict[str, list[dict]] = {"path": [], "host": [], "archive": []}
    for i in range(runs):
        for kind in results:
            repo = work / f"repo-{kind}-{i}"
            env = {**os.environ, "BACKUP_ENCRYPTION_KEY": PASSWORD, "BACKUP_DATA_DIR": str(work / "data-dir")}
            subprocess.run([*cli, "init", "--repo", str(repo)], env=env, check=True, capture_output=True)
            if kind == "path":
                cmd = [*cli, "backup", "--repo", str(repo), "--path", mountpoint, "--type", "full", "--app-id", APP]
            else:
                env["BACKUP_VOLUME_ACCESS"] = kind
                cmd = [*cli, "backup", "--repo", str(repo), "--app", APP, "--type", "full"]
            warm(mountpoint)
            m = run(cmd, env)
            m["repo_mib"] = du(repo) / 2**20
            results[kind].append(m)
            shutil.rmtree(repo)
            print(
                f"  run {i + 1} {kind:8} {m['wall_s']:7.2f} s"
                f"  {m['max_process_mib']:5.0f} / {m['tree_sum_mib']:5.0f} MiB  repo {m['repo_mib']:.1f} MiB",
                flush=True,
            )
    return results


def discovery(count: int) -> tuple[float, float, int]:
    from sidecar.docker.apps import Registry
    from sidecar.docker.client import EventWatcher, connect

    client = connect()
    t0 = time.perf_counter()
    for i in range(count):
        client.api.create_container(
            IMAGE,
            ["sleep", "infinity"],
            name=f"w9disc{i:04d}",
            labels={
                "com.docker.compose.project": f"w9disc{i % (count // 2 or 1):04d}",
                "com.docker.compose.service": f"svc{i}",
                "websoft9.backup.schedule": "0 3 * * *",
                "websoft9.backup.retention": "last=3,daily=7",
                "websoft9.backup.pre": "echo pre",
            },
            host_config=client.api.create_host_config(network_mode="none", init=True),
        )
        client.api.start(f"w9disc{i:04d}")
    print(f"  created and started {count} containers in {time.perf_counter() - t0:.1f} s", flush=True)
    registry = Registry(log_changes=False)
    t0 = time.perf_counter()
    registry.inventory(client)
    inventory_s = time.perf_counter() - t0
    apps = len([a for a in registry.apps() if a.app_id.startswith("w9disc")])
    registry = Registry(log_changes=False)
    watcher = EventWatcher(registry.inventory, registry.handle_event)
    t0 = time.perf_counter()
    watcher.start()
    watcher.wait_connected(120)
    watcher_s = time.perf_counter() - t0
    watcher.stop()
    return inventory_s, watcher_s, apps


def cleanup_discovery(count: int) -> None:
    names = [f"w9disc{i:04d}" for i in range(count)]
    for start in range(0, len(names), 50):
        subprocess.run(["docker", "rm", "-f", *names[start : start + 50]], capture_output=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mb", type=int, default=2048)
    ap.add_argument("--data", help="copy this directory into the volume instead of generating data")
    ap.add_argument("--work", default="/var/tmp/w9-docker-bench")
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--discovery", type=int, default=200, help="labelled containers for the discovery test (0: skip)")
    args = ap.parse_args()

    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    subprocess.run(["docker", "rm", "-f", f"{APP}_web_1"], capture_output=True)
    subprocess.run(["docker", "volume", "rm", "-f", f"{APP}_data"], capture_output=True)
    try:
        docker(
            "volume",
            "create",
            "--label",
            f"com.docker.compose.project={APP}",
            "--label",
            "com.docker.compose.volume=data",
            f"{APP}_data",
        )
        mountpoint = docker("volume", "inspect", "-f", "{{.Mountpoint}}", f"{APP}_data")
        if args.data:
            subprocess.run(["cp", "-a", f"{args.data}/.", mountpoint], check=True)
        else:
            dataset.create(mountpoint, size_mb=args.size_mb, seed=1)
        size = du(Path(mountpoint))
        docker(
            "run",
            "-d",
            "--name",
            f"{APP}_web_1",
            "--init",
            "--network",
            "none",
            "--label",
            f"com.docker.compose.project={APP}",
            "--label",
            "com.docker.compose.service=web",
            "--label",
            "websoft9.backup.type=full",
            "-v",
            f"{APP}_data:/var/www/html",
            IMAGE,
            "sleep",
            "infinity",
        )
        print(f"volume {APP}_data: {size / 2**20:.0f} MiB at {mountpoint}", flush=True)
        results = backup_runs(mountpoint, work, args.runs)
    finally:
        subprocess.run(["docker", "rm", "-f", f"{APP}_web_1"], capture_output=True)
        subprocess.run(["docker", "volume", "rm", "-f", f"{APP}_data"], capture_output=True)

    best = {k: min(v, key=lambda m: m["wall_s"]) for k, v in results.items()}
    ref = best["path"]["wall_s"]
    print(f"\n{'full backup of the volume':32} {'best s':>8} {'ratio':>6} {'target':>7}  peak MiB (process / tree)")
    for kind, label, target in (
        ("path", "backup --path MOUNTPOINT", "-"),
        ("host", "backup --app (host mountpoint)", "<= 1.2"),
        ("archive", "backup --app (archive API)", "<= 2.0"),
    ):
        m = best[kind]
        print(
            f"{label:32} {m['wall_s']:8.2f} {m['wall_s'] / ref:6.2f} {target:>7}"
            f"  {m['max_process_mib']:.0f} / {m['tree_sum_mib']:.0f}"
        )
    if args.discovery:
        try:
            inventory_s, watcher_s, apps = discovery(args.discovery)
            print(
                f"\ndiscovery of {args.discovery} labelled containers ({apps} apps): inventory {inventory_s:.2f} s,"
                f" watcher connected and inventoried {watcher_s:.2f} s (target < 5 s)"
            )
        finally:
            cleanup_discovery(args.discovery)


if __name__ == "__main__":
    main()
