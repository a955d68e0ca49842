"""Randomized restore drills on the real engine: DRILLS (default 10) scenarios from seed
DRILL_SEED (default 0). Each drill restores exactly, rolls back and reports, or refuses a
corrupt snapshot before touching anything; the test prints every drill and the success rate
and fails on any failed drill. `python -m bench.drills` runs the long series (50+)."""

from __future__ import annotations

import os
from pathlib import Path

from tests.drills.runner import run_drill
from tests.drills.scenario import generate

DRILLS = int(os.environ.get("DRILLS", "10"))
FIRST_SEED = int(os.environ.get("DRILL_SEED", "0"))


def test_restore_drills(docker_client, tmp_path: Path) -> None:
    scenarios = [generate(seed) for seed in range(FIRST_SEED, FIRST_SEED + DRILLS)]
    faults = [s for s in scenarios if s.fault]
    assert len(faults) >= DRILLS // 3, "a third of the drills inject a fault"
    results = []
    for s in scenarios:
        r = run_drill(s, docker_client, tmp_path / f"drill-{s.seed}")
        results.append(r)
        mark = "ok  " if r.ok else "FAIL"
        print(f"{mark} {s.describe()}: {r.outcome} (restore {r.restore_s:.1f} s, drill {r.total_s:.1f} s) {r.detail}")
    passed = sum(r.ok for r in results)
    print(f"{passed}/{len(results)} drills passed ({100 * passed / len(results):.0f} %)")
    failed = [f"{r.scenario.describe()}: {r.outcome}: {r.detail}" for r in results if not r.ok]
    assert not failed, "\n".join(failed)
    assert {r.outcome for r in results} >= {"restored", "rolled back"}, [r.outcome for r in results]
