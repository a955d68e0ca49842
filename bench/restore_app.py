"""Restoring a whole app against restic + the DB client, and the cost of a safety snapshot.

    python bench/restore_app.py [--volume-mb 1850] [--dump-mb 200] [--samples 5] [--work /var/tmp/w9-restore-bench]

Builds an app of the test image: a web container with a volume of
`bench/dataset.py` data and a MariaDB container with a table whose dump is
about --dump-mb. Then, after the same page-cache warm-up each time:

1. --samples times: `backup --app --type full` into an empty repository, then at
   once the safety snapshot as a restore takes it of the app unchanged since:
   `restore --app latest --no-database --volumes conf` (a small second volume,
   so that what follows the safety snapshot is short); the database is
   unchanged, so its dump is reused. Each pair is measured a minute apart:
   this VM's speed drifts by tens of per cent within minutes;
2. a second full backup into the last repository (reads everything, stores
   nothing new) and a safety snapshot after it; `backup --app` again
   unchanged from the command line (with and without a fresh dump);
3. our `restore --app latest --no-safety` into the emptied volume;
4. the reference: restic restores the same volume data into an emptied
   directory, and the same dump is loaded with `mariadb` directly.

Each side empties its target the same way first (`rm -rf` of the contents): restic's
is a copy of the volume at the path it restores to (the volume's path under its target),
as creating files right after deleting many costs more on some file systems (ext4
without a journal, as here, skips recently freed inodes, scanning for each new file).
Needs root, Docker, the test image and restic (`apt-get install restic`).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from bench import dataset, db_dump  # noqa: E402
from bench.compare_restic import run  # noqa: E402
from bench.db_dump import START, insert_rows  # noqa: E402

IMAGE = os.environ.get("W9_TEST_IMAGE", "websoft9-backup-test:1")
APP = "w9rbench"
PASSWORD = "benchmark passphrase"
ROOT_PW = "bench-root-pw"
VOLUMES = ("data", "conf", "dbdata")


def sh(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), check=True, capture_output=True, **kw)


def empty(path: str) -> None:
    for name in os.listdir(path):
        p = os.path.join(path, name)
        if os.path.isdir(p) and not os.path.islink(p):
            shutil.rmtree(p)
        else:
            os.unlink(p)


def timed(cmd: list[str], env: dict) -> float:
    return run(cmd, env)["wall_s"]


def settle(still: float = 10.0, limit: float = 600.0) -> float:
    """Wait until InnoDB has finished the background work of the load (purge moves its log
    position for a while after the last insert), as it has in an app that is unchanged since
    its last backup; until then a safety snapshot rightly finds the server changed and dumps
    it again. Returns the seconds waited."""
    t0 = time.monotonic()
    last, since = None, t0
    while time.monotonic() - t0 < limit:
        lsn = db_dump.sql("SHOW GLOBAL STATUS LIKE 'Innodb_lsn_current'")
        if lsn != last:
            last, since = lsn, time.monotonic()
        elif time.monotonic() - since >= still:
            return time.monotonic() - t0
        time.sleep(1)
    raise SystemExit(f"MariaDB's log position still moved after {limit:.0f} s")


def safety_snapshot(cli: list[str], repo: Path, env: dict) -> tuple[float, str]:
    """The seconds of the safety snapshot a restore takes (in the restore's own process) and
    whether it reused the dump: `restore --app latest --no-database --volumes conf`, so that
    only a small volume is restored after it."""
    done = subprocess.run([*cli, "restore", "--repo", str(repo), "--app", APP, "latest", "--no-database",
                           "--volumes", "conf", "--json"], env=env, capture_output=True, text=True)  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"restore --app exited {done.returncode}: {done.stderr}{done.stdout}")
    result = json.loads(done.stdout)
    listed = subprocess.run([*cli, "snapshots", "--repo", str(repo), "--json"], env=env, check=True,
                            capture_output=True, text=True)  # fmt: skip
    (taken,) = [s for s in json.loads(listed.stdout) if s["id"] == result["safety_snapshot_id"]]
    dump = [x for x in taken["sources"] if x["name"].startswith("database:")]
    reused = "dump reused" if dump and dump[0].get("reused_from") else "dumped again"
    return result["phases"]["safety snapshot"], reused


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--volume-mb", type=int, default=1850)
    ap.add_argument("--dump-mb", type=int, default=200)
    ap.add_argument("--samples", type=int, default=5, help="full backups, each with a safety snapshot after it")
    ap.add_argument("--work", default="/var/tmp/w9-restore-bench")
    args = ap.parse_args()
    if shutil.which("restic") is None:  # the reference: checked before the app is built
        sys.exit("restic is not installed: apt-get install -y restic")
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    db = f"{APP}_db_1"
    web = f"{APP}_web_1"
    db_dump.CONTAINER = db
    for c in (db, web):
        subprocess.run(["docker", "rm", "-f", c], capture_output=True)
    for v in VOLUMES:
        subprocess.run(["docker", "volume", "rm", "-f", f"{APP}_{v}"], capture_output=True)
    labels = ["--label", f"com.docker.compose.project={APP}"]
    try:
        sh("docker", "volume", "create", *labels, "--label", "com.docker.compose.volume=data", f"{APP}_data")
        sh("docker", "volume", "create", *labels, "--label", "com.docker.compose.volume=conf", f"{APP}_conf")
        mountpoint = sh("docker", "volume", "inspect", "-f", "{{.Mountpoint}}", f"{APP}_data", text=True).stdout.strip()
        dataset.create(mountpoint, size_mb=args.volume_mb, seed=1)
        sh(
            "docker",
            "run",
            "-d",
            "--name",
            web,
            "--init",
            "--network",
            "none",
            *labels,
            "--label",
            "com.docker.compose.service=web",
            "-v",
            f"{APP}_data:/var/www/html",
            "-v",
            f"{APP}_conf:/etc/app",
            IMAGE,
            "sleep",
            "infinity",
        )
        sh("docker", "run", "-d", "--name", db, "--network", "none", *labels,
           "--label", "com.docker.compose.service=db", "--label", "websoft9.backup.db=mariadb",
           "-e", f"MARIADB_ROOT_PASSWORD={ROOT_PW}", "-v", f"{APP}_dbdata:/var/lib/mysql",
           IMAGE, "sh", "-c", START)  # fmt: skip
        db_dump.wait_ready()
        sh(
            "docker",
            "exec",
            db,
            "sh",
            "-c",
            'MYSQL_PWD="$MARIADB_ROOT_PASSWORD" mariadb -uroot -e "CREATE DATABASE app"',
        )
        db_dump.sql(
            "CREATE TABLE events (id BIGINT PRIMARY KEY, created DATETIME, user_id INT, kind VARCHAR(16), "
            "payload TEXT) ENGINE=InnoDB"
        )
        insert_rows(1, args.dump_mb * 2**20 // db_dump.ROW_BYTES)
        dump_file = work / "dump.sql"
        with open(dump_file, "wb") as f:
            subprocess.run(["docker", "exec", db, "sh", "-c",
                            'MYSQL_PWD="$MARIADB_ROOT_PASSWORD" mariadb-dump -uroot --single-transaction --routines '
                            "--triggers --events --hex-blob --all-databases"], stdout=f, check=True)  # fmt: skip
        print(f"app: volume {args.volume_mb} MiB, dump {dump_file.stat().st_size / 2**20:.0f} MiB", flush=True)
        print(f"MariaDB settled after the load in {settle():.0f} s (its InnoDB log position still for 10 s)",
              flush=True)  # fmt: skip

        cli = [sys.executable, "-m", "sidecar"]
        env = {**os.environ, "BACKUP_ENCRYPTION_KEY": PASSWORD, "BACKUP_DATA_DIR": str(work / "data"),
               "RESTIC_PASSWORD": PASSWORD, "RESTIC_REPOSITORY": str(work / "restic")}  # fmt: skip
        sh("restic", "init", env=env)
        sh("docker", "exec", web, "sh", "-c", "echo 'site: bench' > /etc/app/app.yml")
        dataset_warm = ["tar", "-cf", "/dev/null", "-C", mountpoint, "."]
        ratios = []
        for sample in range(args.samples):
            # a full backup into an empty repository, then at once the safety snapshot a restore takes
            # of the app, unchanged since that backup: the two measured a minute apart, as this VM's
            # speed drifts by tens of per cent within minutes
            repo = work / f"repo{sample}"
            if sample:
                shutil.rmtree(work / f"repo{sample - 1}")
            sh(*cli, "init", "--repo", str(repo), env=env)
            subprocess.run(dataset_warm, check=True)
            full = timed([*cli, "backup", "--repo", str(repo), "--app", APP, "--type", "full"], env)
            safety, reused = safety_snapshot(cli, repo, env)
            ratios.append(safety / full)
            print(f"sample {sample + 1}: full backup into an empty repository {full:.1f} s; then the safety "
                  f"snapshot inside restore --app {safety:.2f} s = {100 * safety / full:.1f} % (target <= 10 %; "
                  f"{reused})", flush=True)  # fmt: skip
        subprocess.run(dataset_warm, check=True)
        refull = timed([*cli, "backup", "--repo", str(repo), "--app", APP, "--type", "full"], env)
        safety, reused = safety_snapshot(cli, repo, env)
        print(f"a second full backup {refull:.1f} s (reads everything again, stores nothing new); the safety snapshot "
              f"after it {safety:.2f} s = {100 * safety / refull:.1f} % of it ({reused})", flush=True)  # fmt: skip
        subprocess.run(dataset_warm, check=True)
        volume_only = timed([*cli, "backup", "--repo", str(repo), "--app", APP, "--no-database"], env)
        again = timed([*cli, "backup", "--repo", str(repo), "--app", APP], env)  # latest: with the dump
        print(f"unchanged app again from the command line {again:.1f} s; without the dump {volume_only:.1f} s "
              "(each with ~0.6 s of start-up: imports, key, index)", flush=True)  # fmt: skip
        print("safety snapshot / full backup: " + " / ".join(f"{100 * r:.1f} %" for r in ratios)
              + f"; median {100 * statistics.median(ratios):.1f} %, worst {100 * max(ratios):.1f} %, "
              f"<= 10 % in {sum(r <= 0.10 for r in ratios)} of {len(ratios)}", flush=True)  # fmt: skip
        sh("restic", "backup", "--quiet", mountpoint, env=env)
        copy = work / "reference"
        subprocess.run(["cp", "-a", mountpoint, str(copy)], check=True)

        # ours: the whole app (volume + database) from the latest snapshot, no safety snapshot
        empty(mountpoint)
        t0 = time.perf_counter()
        done = subprocess.run([*cli, "restore", "--repo", str(repo), "--app", APP, "latest", "--no-safety", "--json"],
                              env=env, capture_output=True, text=True)  # fmt: skip
        ours = time.perf_counter() - t0
        if done.returncode != 0:  # a warning (3) would mean something was left out, e.g. no dump to load
            raise SystemExit(f"restore --app exited {done.returncode}: {done.stderr}{done.stdout}")
        restored = json.loads(done.stdout)
        assert restored["databases"], "the restored snapshot has no database dump"
        print("restore --app phases: " + ", ".join(f"{k} {v:.1f} s" for k, v in restored["phases"].items()),
              flush=True)  # fmt: skip
        same = subprocess.run([sys.executable, str(HERE / "treecompare.py"), str(copy), mountpoint],
                              capture_output=True, text=True)  # fmt: skip
        # reference: restic for the same volume data, then the dump loaded with the client. restic
        # restores the volume's absolute path under its target: that directory first holds a copy
        # of the data and is emptied like ours (see the module docstring)
        target = work / "restic-target"
        dest = Path(str(target) + mountpoint)
        dest.parent.mkdir(parents=True)
        subprocess.run(["cp", "-a", mountpoint, str(dest)], check=True)
        empty(str(dest))
        t0 = time.perf_counter()
        sh("restic", "restore", "latest", "--target", str(target), env=env)
        restic_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        with open(dump_file, "rb") as f:
            load = 'MYSQL_PWD="$MARIADB_ROOT_PASSWORD" mariadb -uroot'
            subprocess.run(["docker", "exec", "-i", db, "sh", "-c", load], stdin=f, check=True)
        load_s = time.perf_counter() - t0
        reference = restic_s + load_s
        print(f"restore --app: {ours:.1f} s (volume identical: {same.stdout.strip().splitlines()[-1]}); "
              f"restic restore {restic_s:.1f} s + mariadb load {load_s:.1f} s = {reference:.1f} s; "
              f"ratio {ours / reference:.2f} (target <= 1.3)", flush=True)  # fmt: skip
    finally:
        for c in (db, web):
            subprocess.run(["docker", "rm", "-f", c], capture_output=True)
        for v in VOLUMES:
            subprocess.run(["docker", "volume", "rm", "-f", f"{APP}_{v}"], capture_output=True)


if __name__ == "__main__":
    main()
