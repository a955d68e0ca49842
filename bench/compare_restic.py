"""Our CLI against restic, side by side in one run, on the same data.

    python bench/compare_restic.py [--size-mb 2048] [--work /var/tmp/w9-bench] [--data DIR]
                                   [--dataset-script bench/dataset.py]

Steps, each run for both tools after the same page-cache warm-up: full backup,
mutate the data (about 2 % of it, like a day of use), incremental backup,
restore of the latest snapshot (checked with bench/treecompare.py for ours and
restic's). Prints wall time, peak memory and repository size with ratios
ours/restic (lower is better).

Memory is reported two ways: the largest single process (what `wait4` gives,
like /usr/bin/time) and the sum over the whole process tree, sampled every
20 ms (ours runs worker processes; restic is one process). The sum is the
honest figure to compare.

--dataset-script takes any script with make_dataset.py's interface
(`SCRIPT DIR --size-mb N` creates, `SCRIPT DIR --mutate` mutates).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from bench.treecompare import compare  # noqa: E402

PAGE = os.sysconf("SC_PAGE_SIZE")


def _tree_rss(pid: int) -> int:
    """Resident bytes of a process and all its descendants."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/statm") as f:
                total += int(f.read().split()[1]) * PAGE
            with open(f"/proc/{p}/task/{p}/children") as f:
                todo += [int(c) for c in f.read().split()]
        except (OSError, ValueError):
            continue
    return total


def run(cmd: list[str], env: dict) -> dict:
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak_sum = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak_sum
        while not done.is_set():
            peak_sum = max(peak_sum, _tree_rss(proc.pid))
            done.wait(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    done.set()
    sampler.join()
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    code = os.waitstatus_to_exitcode(status)
    if code not in (0, 3):
        sys.exit(f"failed ({code}): {' '.join(cmd)}\n{err[-2000:]}")
    return {"wall_s": wall, "max_process_mib": usage.ru_maxrss / 1024, "tree_sum_mib": peak_sum / 2**20}


def fresh_filesystem(work: Path, mountpoint: Path, data_bytes: int) -> None:
    """A new ext4 file system (loop-mounted image) to restore into: after a few hundred
    thousand deletions ext4 is slow to allocate inodes for minutes (it avoids recently
    freed ones), which would make whichever tool restores first look slower."""
    image = work / (mountpoint.name + ".img")
    with open(image, "wb") as f:
        f.truncate(int(data_bytes * 1.6) + (512 << 20))
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True)
    mountpoint.mkdir()
    subprocess.run(["mount", "-o", "loop", str(image), str(mountpoint)], check=True)


def du(path: Path) -> int:
    return sum(os.lstat(os.path.join(d, f)).st_size for d, _, files in os.walk(path) for f in files)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mb", type=int, default=2048)
    ap.add_argument("--work", default="/var/tmp/w9-bench")
    ap.add_argument("--data", help="use (and mutate) this data directory instead of generating one")
    ap.add_argument("--dataset-script", default=str(HERE / "dataset.py"))
    ap.add_argument("--settle", type=float, default=90, help="seconds to wait after deleting an old work dir")
    ap.add_argument(
        "--restore-fs",
        choices=["fresh", "dir"],
        default="fresh" if os.geteuid() == 0 else "dir",
        help="restore into a fresh loop-mounted ext4 each (default as root) or into plain directories",
    )
    a = ap.parse_args()
    if not shutil.which("restic"):
        sys.exit("restic is not installed (Debian: apt-get install restic)")
    work = Path(a.work)
    if work.exists():
        shutil.rmtree(work)
        # ext4 avoids reusing recently freed inodes: right after deleting a few hundred
        # thousand files, creating files is several times slower for a while (measured
        # here: 50 000 creates took 0.8 s normally and 7.5 s just after such a delete)
        subprocess.run(["sync"], check=True)
        time.sleep(a.settle)
    work.mkdir(parents=True)
    data = Path(a.data) if a.data else work / "data"
    if not data.exists():
        subprocess.run([sys.executable, a.dataset_script, str(data), "--size-mb", str(a.size_mb)], check=True)
    ours = [sys.executable, "-m", "sidecar"]
    env = dict(os.environ, BACKUP_ENCRYPTION_KEY="bench-pass", RESTIC_PASSWORD="bench-pass")
    env["PYTHONPATH"] = str(HERE.parent)
    r_ours, r_restic = work / "repo-ours", work / "repo-restic"
    subprocess.run([*ours, "init", "--repo", str(r_ours)], env=env, check=True, capture_output=True)
    subprocess.run(["restic", "-q", "init", "-r", str(r_restic)], env=env, check=True, capture_output=True)

    def warm() -> None:
        subprocess.run(f"tar -cf - -C '{data}' . | cat > /dev/null", shell=True, check=True)

    rows: dict[str, dict] = {}

    def both(step: str, ours_cmd: list[str], restic_cmd: list[str]) -> None:
        warm()
        o = run(ours_cmd, env)
        warm()
        r = run(restic_cmd, env)
        rows[step] = {"ours": o, "restic": r}

    both(
        "full backup",
        [*ours, "backup", "--repo", str(r_ours), "--path", str(data)],
        ["restic", "-q", "-r", str(r_restic), "backup", str(data)],
    )
    sizes = {"after full": (du(r_ours), du(r_restic))}
    subprocess.run([sys.executable, a.dataset_script, str(data), "--mutate"], check=True)
    both(
        "incremental",
        [*ours, "backup", "--repo", str(r_ours), "--path", str(data)],
        ["restic", "-q", "-r", str(r_restic), "backup", str(data)],
    )
    sizes["after incremental"] = (du(r_ours), du(r_restic))
    t_ours, t_restic = work / "restore-ours", work / "restore-restic"
    if a.restore_fs == "fresh":
        for target in (t_ours, t_restic):
            fresh_filesystem(work, target, du(data))
    subprocess.run(["sync"], check=True)
    both(
        "restore",
        [*ours, "restore", "--repo", str(r_ours), "latest", "--target", str(t_ours / "data")],
        ["restic", "-q", "-r", str(r_restic), "restore", "latest", "--target", str(t_restic)],
    )
    ours_diff = compare(data, t_ours / "data")
    restic_diff = compare(data, t_restic / str(data).lstrip("/"))

    print(f"data: {du(data) / 2**20:.0f} MiB in {data}")
    print(
        f"{'step':14} {'ours s':>8} {'restic s':>9} {'ratio':>6}  {'ours MiB (max proc / tree)':>27} "
        f"{'restic MiB':>11} {'ratio (tree)':>12}"
    )
    result: dict[str, object] = {}
    for step, r in rows.items():
        o, x = r["ours"], r["restic"]
        result[step] = round(o["wall_s"] / x["wall_s"], 3)
        result[step + " memory"] = round(o["tree_sum_mib"] / x["tree_sum_mib"], 3)
        print(
            f"{step:14} {o['wall_s']:8.2f} {x['wall_s']:9.2f} {o['wall_s'] / x['wall_s']:6.2f}  "
            f"{o['max_process_mib']:12.0f} / {o['tree_sum_mib']:5.0f}     {x['tree_sum_mib']:11.0f} "
            f"{o['tree_sum_mib'] / x['tree_sum_mib']:12.2f}"
        )
    for name, (o_size, x_size) in sizes.items():
        result[f"repository {name}"] = round(o_size / x_size, 3)
        print(
            f"repository {name:18} ours {o_size / 2**20:8.1f} MiB  restic {x_size / 2**20:8.1f} MiB"
            f"  ratio {o_size / x_size:.3f}"
        )
    print(
        f"restore identical: ours {not ours_diff} ({len(ours_diff)} differences), "
        f"restic {not restic_diff} ({len(restic_diff)} differences)"
    )
    for line in ours_diff[:10]:
        print("  ours:", line)
    result["restore identical"] = not ours_diff
    result["raw"] = rows
    print(json.dumps(result))
    if a.restore_fs == "fresh":
        for target in (t_ours, t_restic):
            subprocess.run(["umount", str(target)], check=False)


if __name__ == "__main__":
    main()
