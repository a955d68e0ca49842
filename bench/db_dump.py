"""A MariaDB dump streamed into the repository, and the next day's backup.

    python bench/db_dump.py [--size-mb 1024] [--work /var/tmp/w9-db-bench]

Starts MariaDB in a container of the test image (no network), fills one table
with about --size-mb of dump output, then:

1. times `mariadb-dump` alone (its output into /dev/null inside the container),
2. backs the app up with `backup --app` (full): dump bytes per second of wall
   time, peak memory,
3. "a day of use": appends 1 % new rows and updates 0.5 % of the rows, all
   among the newest 10 %, then backs up again and prints what the second
   backup added to the repository against the first one's stored size.

Needs root, a running Docker engine and the test image (scripts/test-env image).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from bench.compare_restic import du, run  # noqa: E402

IMAGE = os.environ.get("W9_TEST_IMAGE", "websoft9-backup-test:1")
APP = "w9dbbench"
CONTAINER = f"{APP}_db_1"
PASSWORD = "benchmark passphrase"
ROOT_PW = "bench-root-pw"
ROW_BYTES = 780  # about what one row adds to the dump (measured)

START = r"""
mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld /var/lib/mysql
[ -d /var/lib/mysql/mysql ] ||
  mariadb-install-db --user=mysql --datadir=/var/lib/mysql --auth-root-authentication-method=normal >/dev/null
printf "ALTER USER 'root'@'localhost' IDENTIFIED BY '%s';\n" "$MARIADB_ROOT_PASSWORD" > /run/mysqld/init.sql
exec mariadbd --user=mysql --datadir=/var/lib/mysql --init-file=/run/mysqld/init.sql --innodb-buffer-pool-size=512M
"""


def sql(statement: str) -> str:
    out = subprocess.run(
        ["docker", "exec", "-i", CONTAINER, "sh", "-c", 'MYSQL_PWD="$MARIADB_ROOT_PASSWORD" mariadb -uroot -N app'],
        input=statement,
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode:
        sys.exit(f"SQL failed: {out.stderr}")
    return out.stdout.strip()


def wait_ready() -> None:
    for _ in range(240):
        probe = subprocess.run(
            [
                "docker",
                "exec",
                CONTAINER,
                "sh",
                "-c",
                'MYSQL_PWD="$MARIADB_ROOT_PASSWORD" mariadb -uroot -e "SELECT 1"',
            ],
            capture_output=True,
        )
        if probe.returncode == 0:
            return
        time.sleep(0.5)
    sys.exit("MariaDB did not start")


def insert_rows(first: int, count: int) -> None:
    """Rows of an app's event log: ids, dates, numbers, and text that compresses like text."""
    step = 100_000
    for start in range(first, first + count, step):
        n = min(step, first + count - start)
        sql(
            "INSERT INTO events (id, created, user_id, kind, payload) "
            f"SELECT {start - 1} + seq, NOW() - INTERVAL seq SECOND, seq MOD 5000, ELT(1 + seq MOD 4, 'view', "
            "'login', 'order', 'comment'), CONCAT_WS(' ', 'user agent Mozilla/5.0 (X11; Linux x86_64)', "
            "MD5(RAND()), SHA2(RAND(), 256), REPEAT(CONCAT('lorem ipsum dolor sit amet ', seq MOD 977, ' '), 12), "
            f"MD5(RAND()), SHA2(RAND(), 512)) FROM seq_1_to_{n}"
        )


def backup(repo: Path, env: dict) -> tuple[dict, dict]:
    cmd = [sys.executable, "-m", "sidecar", "backup", "--repo", str(repo), "--app", APP, "--json"]
    out_file = repo.parent / "last.json"
    with open(out_file, "w") as f:
        measured = run_json(cmd, env, f)
    return measured, json.loads(out_file.read_text())


def run_json(cmd: list[str], env: dict, out) -> dict:
    # compare_restic.run sends stdout to /dev/null; here the JSON summary is wanted
    wrapper = ["sh", "-c", 'exec "$@" > "$W9_OUT"', "sh", *cmd]
    return run(wrapper, {**env, "W9_OUT": out.name})


def replay_rate(repo: Path, env: dict) -> tuple[int, float]:
    """Bytes and seconds to stream a finished dump (a file in the container) into a fresh
    repository through the same path as a backup: ExecStream -> BackupSession.add_stream."""
    from sidecar.docker.client import connect
    from sidecar.docker.execs import ExecStream
    from sidecar.repo.backends.local import LocalBackend
    from sidecar.repo.backup import BackupOptions, BackupSession
    from sidecar.repo.repository import Repository

    subprocess.run(
        ["docker", "exec", CONTAINER, "sh", "-c",
         'MYSQL_PWD="$MARIADB_ROOT_PASSWORD" mariadb-dump -uroot --single-transaction --all-databases > /tmp/d.sql'],
        check=True,
    )  # fmt: skip
    fresh = Repository.init(LocalBackend(repo.parent / "replay-repo"), PASSWORD.encode())
    client = connect()
    t0 = time.perf_counter()
    with BackupSession(fresh, BackupOptions(app_id="replay")) as session:
        stream = ExecStream(client, CONTAINER, ["cat", "/tmp/d.sql"], {})
        session.add_stream("database:db", stream, "mariadb.sql", kind="database", engine="mariadb")
        assert stream.finish() == 0
        session.commit()
    return stream.size, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mb", type=int, default=1024)
    ap.add_argument("--work", default="/var/tmp/w9-db-bench")
    args = ap.parse_args()
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    subprocess.run(["docker", "rm", "-f", CONTAINER], capture_output=True)
    subprocess.run(["docker", "volume", "rm", "-f", f"{APP}_dbdata"], capture_output=True)
    try:
        subprocess.run(
            ["docker", "run", "-d", "--name", CONTAINER, "--network", "none",
             "--label", f"com.docker.compose.project={APP}", "--label", "com.docker.compose.service=db",
             "--label", "websoft9.backup.db=mariadb", "-e", f"MARIADB_ROOT_PASSWORD={ROOT_PW}",
             "-v", f"{APP}_dbdata:/var/lib/mysql", IMAGE, "sh", "-c", START],
            check=True, capture_output=True,
        )  # fmt: skip
        wait_ready()
        sql_root = "CREATE DATABASE IF NOT EXISTS app"
        subprocess.run(
            [
                "docker",
                "exec",
                CONTAINER,
                "sh",
                "-c",
                f'MYSQL_PWD="$MARIADB_ROOT_PASSWORD" mariadb -uroot -e "{sql_root}"',
            ],
            check=True,
        )
        sql(
            "CREATE TABLE events (id BIGINT PRIMARY KEY, created DATETIME, user_id INT, kind VARCHAR(16), "
            "payload TEXT) ENGINE=InnoDB"
        )
        rows = args.size_mb * 2**20 // ROW_BYTES
        t0 = time.perf_counter()
        insert_rows(1, rows)
        print(f"filled {rows} rows in {time.perf_counter() - t0:.0f} s", flush=True)

        t0 = time.perf_counter()
        alone = subprocess.run(
            ["docker", "exec", CONTAINER, "sh", "-c",
             'MYSQL_PWD="$MARIADB_ROOT_PASSWORD" mariadb-dump -uroot --single-transaction --routines --triggers '
             '--events --hex-blob --all-databases | wc -c'],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        alone_s = time.perf_counter() - t0
        dump_bytes = int(alone.stdout.strip())
        print(f"mariadb-dump alone: {dump_bytes / 2**20:.0f} MiB in {alone_s:.1f} s "
              f"({dump_bytes / 2**20 / alone_s:.0f} MiB/s)", flush=True)  # fmt: skip

        repo = work / "repo"
        env = {**os.environ, "BACKUP_ENCRYPTION_KEY": PASSWORD, "BACKUP_DATA_DIR": str(work / "data")}
        subprocess.run([sys.executable, "-m", "sidecar", "init", "--repo", str(repo)], env=env, check=True,
                       capture_output=True)  # fmt: skip
        first, doc1 = backup(repo, env)
        size1 = du(repo)
        dumped = doc1["bytes"]
        print(
            f"full backup: dump {dumped / 2**20:.0f} MiB in {first['wall_s']:.1f} s = "
            f"{dumped / 2**20 / first['wall_s']:.0f} MiB/s of dump output (target >= 100 MB/s = 95 MiB/s); "
            f"stored {doc1['stored_bytes'] / 2**20:.1f} MiB, repository {size1 / 2**20:.1f} MiB; "
            f"peak memory {first['max_process_mib']:.0f} MiB largest process, {first['tree_sum_mib']:.0f} MiB tree",
            flush=True,
        )

        replay = replay_rate(repo, env)
        print(
            f"the same dump replayed from a file in the container (exec stream -> repository, without "
            f"mariadb-dump's own speed): {replay[0] / 2**20:.0f} MiB in {replay[1]:.1f} s = "
            f"{replay[0] / 2**20 / replay[1]:.0f} MiB/s",
            flush=True,
        )

        new_rows = rows // 100
        newest_from = rows - rows // 10
        insert_rows(rows + 1, new_rows)
        updates = rows // 200
        sql(
            f"UPDATE events SET payload = CONCAT('edited ', MD5(RAND()), ' ', payload), kind = 'edited' "
            f"WHERE id > {newest_from} AND (id * 7919) MOD {max(1, (rows - newest_from) // updates)} = 0 "
            f"LIMIT {updates}"
        )
        changed = sql("SELECT COUNT(*) FROM events WHERE kind = 'edited'")
        print(f"a day of use: {new_rows} rows appended, {changed} rows updated among the newest 10 %", flush=True)
        second, doc2 = backup(repo, env)
        size2 = du(repo)
        added = size2 - size1
        print(
            f"next backup: dump {doc2['bytes'] / 2**20:.0f} MiB in {second['wall_s']:.1f} s, stored "
            f"{doc2['stored_bytes'] / 2**20:.1f} MiB; repository grew {added / 2**20:.1f} MiB = "
            f"{100 * added / size1:.1f} % of the first backup's (target <= 15 %); "
            f"peak memory {second['max_process_mib']:.0f} / {second['tree_sum_mib']:.0f} MiB",
            flush=True,
        )
    finally:
        subprocess.run(["docker", "rm", "-f", CONTAINER], capture_output=True)
        subprocess.run(["docker", "volume", "rm", "-f", f"{APP}_dbdata"], capture_output=True)


if __name__ == "__main__":
    main()
