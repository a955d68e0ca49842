"""Crash safety on S3: `kill -9` of backups into a bucket (moto's server) at many points.

The same drill as tests/test_crash.py's local one, through the S3 back end: kills
at the first uploaded pack, spread over a measured run (start-up, chunking,
uploads in flight), once the first index object is stored (2 MiB packs, so the
backup stores an index every 8 packs while it runs), once the snapshot object
is stored. After every kill `check --read-data`
passes, the snapshot made before restores exactly, a stale lock of the dead
process blocks nobody; at the end every snapshot a run completed restores and a
last full backup sends little, because the packs already uploaded are reused.

S3_CRASH_POINTS (default 6) sets how many timed kill points are tried; with the
three event kills and tests/test_crash.py's eleven that is twenty.
"""

from __future__ import annotations

import json
import os
import random
import signal
import time
from pathlib import Path

import pytest

from bench import dataset
from sidecar.repo.backends.base import open_backend
from tests.conftest import RUN_ENV, run_cli
from tests.s3 import new_bucket_url
from tests.test_crash import Kill, kill_after, kill_when, spread, start_cli

S3_CRASH_POINTS = int(os.environ.get("S3_CRASH_POINTS", "6"))
RANDOM_MIB = 48  # incompressible, in 2 MiB packs: ~24 packs, index objects stored as the backup runs
PACK_SIZE = 2 << 20
APP = "s3-crash-app"

pytestmark = pytest.mark.usefixtures("s3_env")


class Bucket:
    """A repository in a bucket and the environment of the host that backs up into it."""

    def __init__(self, name: str) -> None:
        self.url = new_bucket_url(name)
        self.env = {"BACKUP_DATA_DIR": RUN_ENV["BACKUP_DATA_DIR"]}  # the host's cache and staging
        self.backend = open_backend(self.url, {**os.environ, **self.env})
        result = run_cli("init", "--repo", self.url)
        assert result.code == 0, result.err
        config = json.loads(self.backend.get("config"))
        config["pack_size"] = PACK_SIZE  # a supported config key
        self.backend.delete("config")
        self.backend.put("config", json.dumps(config).encode())

    def objects(self, kind: str) -> set[str]:
        return {name for name, _ in self.backend.list(f"{kind}/")}

    def backup(self, src: Path, *extra: str) -> dict:
        result = run_cli("backup", "--repo", self.url, "--path", src, "--app-id", APP, "--json", *extra)
        assert result.code == 0, result.err
        return result.json()


def check_clean(bucket: Bucket, label: str) -> None:
    result = run_cli("check", "--repo", bucket.url, "--read-data", "--json")
    assert result.code == 0, f"{label}: check --read-data failed:\n{result.out}\n{result.err}"
    report = result.json()
    assert report["ok"] and not report["errors"], f"{label}: {report['errors']}"


def assert_restores(bucket: Bucket, snapshot: str, original: Path, target: Path, same_tree, label: str) -> None:
    result = run_cli("restore", snapshot, "--repo", bucket.url, "--target", target)
    assert result.code == 0, f"{label}: restore of {snapshot[:8]} failed: {result.err}"
    same_tree(original, target)


def test_backup_to_s3_killed_at_many_points(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, same_tree) -> None:
    monkeypatch.setitem(RUN_ENV, "BACKUP_DATA_DIR", str(tmp_path / "host"))  # for run_cli too
    small = tmp_path / "small"
    dataset.create(str(small), size_mb=2, seed=3)
    big = tmp_path / "big"
    dataset.create(str(big), size_mb=8, seed=8)
    rng = random.Random(8)
    for i in range(RANDOM_MIB // 8):
        (big / f"media-{i}.bin").write_bytes(rng.randbytes(8 << 20))

    # how long a full backup of the big data takes here, into a bucket of its own, and a re-run
    measure = Bucket("measure")
    t0 = time.monotonic()
    first = measure.backup(big, "--type", "full")
    duration = time.monotonic() - t0
    t0 = time.monotonic()
    measure.backup(big, "--type", "full")
    rerun = time.monotonic() - t0

    bucket = Bucket("crash")
    s0 = bucket.backup(small)["snapshot_id"]
    fractions = spread(S3_CRASH_POINTS)
    # the event kills first (later runs find the data stored and store no index until their end),
    # then timed kills; those late in a run are scaled to a re-run, which uploads nothing
    plan: list[tuple[str, float | str]] = [("kill at the first uploaded pack", "data")]
    plan += [("kill once an index is stored", "index")]
    plan += [(f"timed kill at {f:.2f} of {duration:.2f}s", f * duration) for f in fractions if f < 0.8]
    plan += [(f"timed kill at {f:.2f} of a re-run's {rerun:.2f}s", f * rerun * 0.8) for f in fractions if f >= 0.8]
    plan += [("kill once the snapshot is stored", "snapshots")]

    kills: list[Kill] = []
    written: dict[str, str] = {}  # snapshot id -> label of the run that stored it
    states: list[str] = []
    for n, (label, when) in enumerate(plan):
        before = {kind: bucket.objects(kind) for kind in ("data", "index", "snapshots")}
        proc = start_cli(
            "backup", "--repo", bucket.url, "--path", big, "--app-id", APP, "--type", "full",
            log=tmp_path / f"b{n}", extra_env=bucket.env,
        )  # fmt: skip
        if isinstance(when, str):
            k = kill_when(proc, lambda kind=when, seen=before[when]: bool(bucket.objects(kind) - seen), label)
        else:
            k = kill_after(proc, when, label)
        kills.append(k)
        new = {kind: bucket.objects(kind) - seen for kind, seen in before.items()}
        state = next(
            (name for name, hit in (("finished", k.returncode == 0), ("snapshot stored", new["snapshots"]),
             ("index stored", new["index"]), ("packs uploaded", new["data"])) if hit),
            "reading (nothing new uploaded)",
        )  # fmt: skip
        states.append(state)
        print(f"{label}: exit {k.returncode}, {len(new['data'])} new packs, {state}")
        assert len(new["snapshots"]) <= 1, f"{label}: one run stored {len(new['snapshots'])} snapshots"
        if k.returncode == 0:
            assert new["snapshots"], f"{label}: the run completed but left no snapshot"
        else:
            assert k.returncode == -signal.SIGKILL, (
                f"{label}: exit {k.returncode}: {(tmp_path / f'b{n}.err').read_text()}"
            )
        for name in new["snapshots"]:
            written[name.rsplit("/", 1)[1]] = label
        check_clean(bucket, label)
        assert_restores(bucket, s0, small, tmp_path / f"restore-s0-{n}", same_tree, label)

    assert states[0] in ("packs uploaded", "index stored") and states[1] == "index stored", states
    assert states[-1] in ("snapshot stored", "finished"), states
    assert any(k.killed for k in kills), "no kill hit a running backup"
    listed = run_cli("snapshots", "--repo", bucket.url, "--json")
    assert listed.code == 0, listed.err
    ids = {s["id"] for s in listed.json()}
    assert ids == {s0, *written}, "a snapshot appeared that no run stored, or one vanished"
    for m, (sid, label) in enumerate(sorted(written.items())):
        assert_restores(bucket, sid, big, tmp_path / f"restore-new-{m}", same_tree, label)

    # what the killed runs uploaded is reused: a last full backup sends little
    final = bucket.backup(big, "--type", "full")
    assert final["added_bytes"] < 0.05 * first["added_bytes"], final
    check_clean(bucket, "final")
    assert_restores(bucket, final["snapshot_id"], big, tmp_path / "restore-final", same_tree, "final")
