"""Backup to S3 against backup to a local repository, and what an unchanged backup asks S3.

    python bench/s3_backup.py [--data DIR | --size-mb 2048] [--work /var/tmp/w9-s3bench] [--runs 2]

Starts moto's S3 server on 127.0.0.1 (PyPI moto[server]; in memory) and, for
each run: a full backup of the data into a fresh local repository and into a
fresh S3 repository (ours, then restic 0.14 on the same two kinds of storage,
side by side), then a second backup into the S3 repository with nothing
changed, through a proxy that counts its requests by kind. Prints wall times,
the S3/local ratios and the request counts. The page cache is warmed before
each timed step.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from tests.s3 import FaultyProxy  # noqa: E402  (with rate 0: a counting proxy)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_moto(work: Path) -> tuple[subprocess.Popen, str]:
    exe = Path(sys.executable).parent / "moto_server"
    command = [str(exe)] if exe.exists() else [shutil.which("moto_server") or sys.exit("moto_server not installed")]
    port = free_port()
    log = open(work / "moto.log", "wb")  # noqa: SIM115  (open for the server's lifetime)
    proc = subprocess.Popen([*command, "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            urllib.request.urlopen(f"{url}/moto-api/", timeout=2).read()
            return proc, url
        except OSError:
            time.sleep(0.1)
    sys.exit("moto_server did not start")


def timed(cmd: list[str], env: dict) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True)
    wall = time.perf_counter() - start
    if proc.returncode not in (0, 3):
        sys.exit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr.decode(errors='replace')[-2000:]}")
    return wall


def classify(line: str) -> str:
    method, target = line.split(" ", 1)
    path, _, query = target.partition("?")
    if "list-type" in query or (method == "GET" and path.rstrip("/").count("/") <= 1 and "prefix" in query):
        prefix = query.split("prefix=", 1)[1].split("&", 1)[0] if "prefix=" in query else ""
        kind = prefix.rsplit("%2F", 2)[-2] if "%2F" in prefix else prefix
        return f"LIST {kind or '(all)'}"
    parts = path.strip("/").split("/")
    kind = parts[2] if len(parts) > 2 else parts[-1]
    return f"{method} {kind}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", help="back up this directory (default: generate --size-mb of app-shaped data)")
    ap.add_argument("--size-mb", type=int, default=2048)
    ap.add_argument("--work", default="/var/tmp/w9-s3bench")
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--no-restic", action="store_true")
    a = ap.parse_args()
    work = Path(a.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    data = Path(a.data) if a.data else work / "data"
    if not data.exists():
        subprocess.run([sys.executable, str(HERE / "dataset.py"), str(data), "--size-mb", str(a.size_mb)], check=True)
    moto, endpoint = start_moto(work)
    proxy = FaultyProxy(endpoint, rate=0.0)
    base = {k: v for k, v in os.environ.items() if not k.startswith(("BACKUP_", "AWS_"))}
    base.update(
        BACKUP_ENCRYPTION_KEY="bench-pass",
        RESTIC_PASSWORD="bench-pass",
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench-secret",
        AWS_DEFAULT_REGION="us-east-1",
        PYTHONPATH=str(HERE.parent),
    )
    ours = [sys.executable, "-m", "sidecar"]
    restic = shutil.which("restic") if not a.no_restic else None

    def warm() -> None:
        subprocess.run(f"tar -cf - -C '{data}' . | cat > /dev/null", shell=True, check=True)

    rows: list[dict] = []
    try:
        for run in range(1, a.runs + 1):
            row: dict = {}
            local = work / f"local-{run}"
            host = work / f"host-{run}"
            env_local = {**base, "BACKUP_DATA_DIR": str(host)}
            env_s3 = {**env_local, "AWS_ENDPOINT_URL_S3": endpoint}
            s3_url = f"s3://bench-{run}-{os.getpid()}/repo"
            subprocess.run([*ours, "init", "--repo", str(local)], env=env_local, check=True, capture_output=True)
            subprocess.run([*ours, "init", "--repo", s3_url], env=env_s3, check=True, capture_output=True)
            backup = ["backup", "--path", str(data), "--app-id", "bench"]
            warm()
            row["ours local"] = timed([*ours, *backup, "--repo", str(local)], env_local)
            warm()
            row["ours s3"] = timed([*ours, *backup, "--repo", s3_url], env_s3)
            # the unchanged backup, counted
            proxy.reset_counts()
            warm()
            env_counted = {**env_local, "AWS_ENDPOINT_URL_S3": proxy.url}
            row["ours s3 unchanged"] = timed([*ours, *backup, "--repo", s3_url], env_counted)
            row["requests"] = Counter(classify(line) for line in proxy.log)
            if restic:
                r_local, r_s3 = work / f"restic-local-{run}", f"s3:{endpoint}/bench-restic-{run}-{os.getpid()}/repo"
                import boto3

                s3 = boto3.client(
                    "s3", endpoint_url=endpoint, region_name="us-east-1",
                    aws_access_key_id="bench", aws_secret_access_key="bench-secret",
                )  # fmt: skip
                s3.create_bucket(Bucket=r_s3.rsplit("/", 2)[1])
                for repo in (str(r_local), r_s3):
                    subprocess.run(["restic", "-q", "init", "-r", repo], env=base, check=True, capture_output=True)
                warm()
                row["restic local"] = timed(["restic", "-q", "backup", "-r", str(r_local), str(data)], base)
                warm()
                row["restic s3"] = timed(["restic", "-q", "backup", "-r", r_s3, str(data)], base)
            rows.append(row)
            print(f"run {run}: " + ", ".join(f"{k} {v:.2f} s" for k, v in row.items() if isinstance(v, float)))
            shutil.rmtree(local, ignore_errors=True)
    finally:
        proxy.close()
        moto.terminate()

    print(f"\nData: {data}")
    print(f"{'step':<22}" + "".join(f"{'run ' + str(i + 1):>10}" for i in range(len(rows))))
    for key in [k for k in rows[0] if isinstance(rows[0][k], float)]:
        print(f"{key:<22}" + "".join(f"{r[key]:>9.2f}s" for r in rows))
    ratios = [r["ours s3"] / r["ours local"] for r in rows]
    print(f"{'ours s3 / local':<22}" + "".join(f"{x:>10.2f}" for x in ratios) + "   (target <= 1.5)")
    if restic:
        print(f"{'restic s3 / local':<22}" + "".join(f"{r['restic s3'] / r['restic local']:>10.2f}" for r in rows))
        print(f"{'ours s3 / restic s3':<22}" + "".join(f"{r['ours s3'] / r['restic s3']:>10.2f}" for r in rows))
    print("\nRequests of the unchanged S3 backup (last run):")
    counts = rows[-1]["requests"]
    for kind, n in sorted(counts.items()):
        print(f"  {kind:<24}{n:>5}")
    own = counts["PUT snapshots"] + counts["PUT index"] + sum(n for k, n in counts.items() if k.endswith(" locks"))
    print(f"  {'total':<24}{sum(counts.values()):>5}")
    others = sum(counts.values()) - own
    print(f"besides writing its snapshot and index and its lock objects: {others} (target <= 20)")


if __name__ == "__main__":
    main()
