"""Drills on an S3 repository (moto's server behind a fault-injecting proxy), through
the command line as an operator runs it: backups through a flaky link complete or
fail with a clear error and never leave a snapshot pointing at missing data; an
interrupted backup's packs are reused, not sent again; two hosts back up into one
repository at once and a third prunes it; an unchanged backup asks S3 for little."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import PASSWORD, ROOT, assert_same_tree, run_cli
from tests.s3 import FaultyProxy, new_bucket_url

pytestmark = pytest.mark.usefixtures("s3_env")


def host_env(tmp_path: Path, name: str, endpoint: str, **extra: str) -> dict[str, str]:
    """One sidecar host: its own data dir (cache, staging), the S3 endpoint to use."""
    return {"BACKUP_DATA_DIR": str(tmp_path / name), "AWS_ENDPOINT_URL_S3": endpoint, **extra}


def app_data(root: Path, seed: int, mib: int) -> Path:
    """`mib` MiB of incompressible files plus small text ones: several packs."""
    rng = random.Random(seed)
    (root / "files").mkdir(parents=True)
    for i in range(mib // 7):
        (root / "files" / f"blob{i}.bin").write_bytes(rng.randbytes(7 << 20))
    for i in range(40):
        (root / "files" / f"note{i}.txt").write_text(f"app {seed} note {i}\n" * 50)
    return root


def ok(result):
    assert result.code == 0, f"exit {result.code}: {result.err}"
    assert "Traceback" not in result.err and PASSWORD not in result.err + result.out
    return result


def data_objects(repo: str, env: dict) -> set[str]:
    from sidecar.repo.backends.base import open_backend

    return {name for name, _ in open_backend(repo, {**os.environ, **env}).list("data/")}


def test_backups_through_a_flaky_link_complete_or_fail_clearly(s3_server, tmp_path):
    repo = new_bucket_url()
    clean = host_env(tmp_path, "host", s3_server)
    ok(run_cli("init", "--repo", repo, env=clean))
    src = app_data(tmp_path / "src", seed=1, mib=35)
    proxy = FaultyProxy(s3_server, rate=0.08, seed=11)
    try:
        flaky = host_env(tmp_path, "host", proxy.url)
        for round_ in range(3):
            (src / "files" / f"round{round_}.txt").write_text(f"round {round_}\n" * 1000)
            result = run_cli("backup", "--repo", repo, "--path", src, "--app-id", "app", env=flaky)
            assert "Traceback" not in result.err
            if result.code != 0:  # a clear error, one line, naming the repository
                assert result.code == 1 and "s3://" in result.err, result.err
            ok(run_cli("check", "--repo", repo, env=flaky))  # no snapshot names missing data
        assert sum(proxy.faults.values()) >= 5, proxy.faults
        assert {"corrupt", "503", "500"} & set(proxy.faults)
    finally:
        proxy.close()
    ok(run_cli("check", "--repo", repo, "--read-data", env=clean))
    snaps = ok(run_cli("snapshots", "--repo", repo, "--json", env=clean)).json()
    assert snaps, "no backup got through 8 % of failures"
    target = tmp_path / "restored"
    ok(run_cli("restore", "latest", "--repo", repo, "--target", target, env=clean))
    restored_rounds = sorted(p.name for p in (target / "files").glob("round*.txt"))
    assert restored_rounds == [f"round{i}.txt" for i in range(len(restored_rounds))]


def test_an_interrupted_backup_is_resumed_without_sending_its_packs_again(s3_server, tmp_path):
    repo = new_bucket_url()
    clean = host_env(tmp_path, "host", s3_server)
    ok(run_cli("init", "--repo", repo, env=clean))
    src = app_data(tmp_path / "src", seed=2, mib=70)
    proxy = FaultyProxy(s3_server, rate=0.0)
    try:
        proxy.block_after_data_puts = 2  # the link dies after two packs
        env = host_env(tmp_path, "host", proxy.url, BACKUP_S3_MAX_ATTEMPTS="2")
        failed = run_cli("backup", "--repo", repo, "--path", src, "--app-id", "app", env=env)
        assert failed.code == 1 and "SlowDown" in failed.err and "Traceback" not in failed.err, failed.err
        assert ok(run_cli("snapshots", "--repo", repo, "--json", env=clean)).json() == []
        left = data_objects(repo, clean)
        assert len(left) == 2  # reached S3, named by no index yet
        proxy.block_after_data_puts = None
        proxy.reset_counts()
        ok(run_cli("backup", "--repo", repo, "--path", src, "--app-id", "app", env=env))
        sent = {line.split(" ")[1].split("?")[0] for line in proxy.log if line.startswith("PUT") and "/data/" in line}
        assert sent and not any(name in path for path in sent for name in left)  # none of them again
    finally:
        proxy.close()
    assert left <= data_objects(repo, clean)
    ok(run_cli("check", "--repo", repo, "--read-data", env=clean))
    target = tmp_path / "restored"
    ok(run_cli("restore", "latest", "--repo", repo, "--target", target, env=clean))
    assert_same_tree(src, target)


def test_two_hosts_back_up_at_once_and_a_third_prunes(s3_server, tmp_path):
    repo = new_bucket_url()
    ok(run_cli("init", "--repo", repo, env=host_env(tmp_path, "h0", s3_server)))
    sources = {name: app_data(tmp_path / f"src-{name}", seed=i + 3, mib=21) for i, name in enumerate(("blog", "shop"))}
    for name, src in sources.items():  # a first backup each, then one to forget
        ok(run_cli("backup", "--repo", repo, "--path", src, "--app-id", name, env=host_env(tmp_path, name, s3_server)))
        (src / "files" / "blob0.bin").write_bytes(os.urandom(7 << 20))
    procs = {}
    for name, src in sources.items():
        env = {k: v for k, v in os.environ.items() if not k.startswith("BACKUP_")}
        env.update(BACKUP_ENCRYPTION_KEY=PASSWORD, **host_env(tmp_path, name, s3_server))
        procs[name] = subprocess.Popen(
            [sys.executable, "-m", "sidecar", "backup", "--repo", repo, "--path", str(src), "--app-id", name],
            env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
    for name, proc in procs.items():
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, f"{name}: {err}"
    third = host_env(tmp_path, "h3", s3_server)
    forgot = ok(run_cli("forget", "--repo", repo, "--keep-last", "1", "--prune", "--json", env=third)).json()
    assert len(forgot["removed"]) == 2 and forgot["prune"]["bytes_freed"] > 0
    ok(run_cli("check", "--repo", repo, "--read-data", env=third))
    for name, src in sources.items():  # each host still restores its newest, from its own cache
        target = tmp_path / f"restored-{name}"
        env = host_env(tmp_path, name, s3_server)
        ok(run_cli("restore", "latest", "--repo", repo, "--app-id", name, "--target", target, env=env))
        assert_same_tree(src, target)
