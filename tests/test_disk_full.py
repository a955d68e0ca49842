"""A full disk under a local repository: the backup fails with BACKUP_QUOTA_EXCEEDED,
records no snapshot, leaves no staged file behind, the repository stays sound,
`prune` gives the space back, and with room again the next backup succeeds.

The repository lives on a small tmpfs (mounting needs root; CI runs as root)."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import PASSWORD, CliResult, run_cli

SMALL_MIB = 24  # more than one 16 MiB pack, less than the big app


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        if os.environ.get("CI") == "true":
            pytest.fail("needs root to mount a tmpfs")
        pytest.skip("needs root to mount a tmpfs")
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={SMALL_MIB}m,mode=0700", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def used(path: Path) -> int:
    usage = shutil.disk_usage(path)
    return usage.total - usage.free


def files_under(path: Path) -> list[str]:
    return [os.path.join(d, n) for d, _, names in os.walk(path) for n in names]


def ok(result: CliResult) -> CliResult:
    assert result.code == 0 and "Traceback" not in result.err, f"exit {result.code}: {result.err}"
    return result


def test_disk_full_during_a_local_backup(small_fs: Path, tmp_path: Path, same_tree) -> None:
    repo = small_fs / "repo"
    ok(run_cli("init", "--repo", repo))
    rng = random.Random(4)
    small = tmp_path / "small-app"
    small.mkdir()
    (small / "config.php").write_text("<?php define('DB', 'wp');\n" * 40)
    (small / "logo.png").write_bytes(rng.randbytes(300_000))
    s0 = ok(run_cli("backup", "--repo", repo, "--path", small, "--app-id", "small", "--json")).json()["snapshot_id"]
    baseline = used(small_fs)

    big = tmp_path / "big-app"
    big.mkdir()
    for i in range(5):  # 40 MiB that does not compress, on a 24 MiB file system
        (big / f"video-{i}.bin").write_bytes(rng.randbytes(8 << 20))
    failed = run_cli("backup", "--repo", repo, "--path", big, "--app-id", "big")
    assert failed.code == 1, (failed.code, failed.err)
    assert "Traceback" not in failed.err and PASSWORD not in failed.err
    assert "BACKUP_QUOTA_EXCEEDED" in failed.err and "no space left" in failed.err.lower(), failed.err
    assert [line for line in failed.err.splitlines() if line.strip()][-1].startswith("error:"), failed.err

    # no snapshot of the big app, nothing staged left over, the repository checks clean
    listed = ok(run_cli("snapshots", "--repo", repo, "--json")).json()
    assert [s["id"] for s in listed] == [s0]
    assert files_under(repo / "tmp") == [], "staged files of the failed backup were left behind"
    check = ok(run_cli("check", "--repo", repo, "--read-data", "--json")).json()
    assert check["ok"], check
    ok(run_cli("restore", s0, "--repo", repo, "--target", tmp_path / "restored-s0"))
    same_tree(small, tmp_path / "restored-s0")

    # what the failed backup stored is kept for the next one to reuse; prune gives the space back
    assert used(small_fs) > baseline
    ok(run_cli("prune", "--repo", repo))
    assert used(small_fs) <= baseline + (64 << 10), (used(small_fs), baseline)
    ok(run_cli("check", "--repo", repo, "--read-data"))

    # with room again, the backup succeeds and restores exactly
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_fs)], check=True)
    done = ok(run_cli("backup", "--repo", repo, "--path", big, "--app-id", "big", "--json")).json()
    ok(run_cli("restore", done["snapshot_id"], "--repo", repo, "--target", tmp_path / "restored-big"))
    same_tree(big, tmp_path / "restored-big")


def test_disk_full_backup_leaves_room_for_the_next_small_one(small_fs: Path, tmp_path: Path) -> None:
    """A failed big backup does not take the other apps down with it once prune has run:
    a small app's backup right after still succeeds."""
    repo = small_fs / "repo"
    ok(run_cli("init", "--repo", repo))
    rng = random.Random(6)
    big = tmp_path / "big"
    big.mkdir()
    (big / "dump.bin").write_bytes(rng.randbytes(40 << 20))
    failed = run_cli("backup", "--repo", repo, "--path", big, "--app-id", "big")
    assert failed.code == 1 and "BACKUP_QUOTA_EXCEEDED" in failed.err, failed.err
    ok(run_cli("prune", "--repo", repo))
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("hello\n" * 1000)
    ok(run_cli("backup", "--repo", repo, "--path", other, "--app-id", "other"))
    assert len(ok(run_cli("snapshots", "--repo", repo, "--json")).json()) == 1
