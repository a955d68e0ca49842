"""Randomized restore drills, the long series: `python -m bench.drills [--count 50] [--seed 0]`.

Each drill (tests/drills/scenario.py draws it from its seed) brings up a compose app on the
real Docker engine — 1-3 volumes of files with odd names, owners, modes, mtimes, symlinks and
hard links; MariaDB, PostgreSQL, Redis or no database; sometimes a second container — makes
2-4 backups with changes in between, changes it once more, and restores one of the backups:
plainly, after the app's volumes were deleted (disaster), or with a fault injected (a third
of the drills: the database killed during the load, a volume write failing, the containers
not coming back, a corrupt pack). A drill passes when the app is exactly as at that backup,
or — with a fault — is rolled back exactly to the state before and says so, or refuses a
corrupt snapshot before touching anything. Prints every drill and the success rate; exits 1
if any drill failed. Needs the engine and test image (`scripts/test-env all`).
"""

from __future__ import annotations

import argparse
import collections
import sys
import tempfile
import time
from pathlib import Path

from sidecar.docker.client import connect
from tests.drills.runner import run_drill
from tests.drills.scenario import generate


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0, help="first seed (drills use seed .. seed+count-1)")
    args = parser.parse_args()
    client = connect()
    results = []
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="w9-drills-") as tmp:
        for seed in range(args.seed, args.seed + args.count):
            s = generate(seed)
            r = run_drill(s, client, Path(tmp) / f"drill-{seed}")
            results.append(r)
            mark = "ok  " if r.ok else "FAIL"
            print(f"{mark} {s.describe()}: {r.outcome} (restore {r.restore_s:.1f} s, drill {r.total_s:.1f} s)"
                  + (f" {r.detail}" if r.detail else ""), flush=True)  # fmt: skip
    passed = sum(r.ok for r in results)
    outcomes = collections.Counter(r.outcome for r in results)
    engines = collections.Counter(r.scenario.engine for r in results)
    faults = collections.Counter(r.scenario.fault or ("disaster" if r.scenario.disaster else "none") for r in results)
    print()
    print(f"drills: {len(results)}, passed: {passed}, success rate: {100 * passed / len(results):.1f} %")
    print("outcomes: " + ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items())))
    print("databases: " + ", ".join(f"{k} {v}" for k, v in sorted(engines.items())))
    print("faults: " + ", ".join(f"{k} {v}" for k, v in sorted(faults.items())))
    restores = sorted(r.restore_s for r in results if r.outcome != "refused")
    if restores:
        print(f"restore time: median {restores[len(restores) // 2]:.1f} s, max {restores[-1]:.1f} s")
    print(f"wall time: {time.monotonic() - t0:.0f} s")
    return 0 if passed == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
