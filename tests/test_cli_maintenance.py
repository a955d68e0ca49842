"""End-to-end tests of the maintenance commands: check, forget, prune, export, key, unlock."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import tarfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from sidecar.repo.backends.local import LocalBackend
from sidecar.repo.forget import plan_forget
from sidecar.repo.locks import read_locks
from sidecar.repo.repository import Repository
from sidecar.repo.retention import RetentionPolicy
from tests.conftest import PASSWORD, ROOT, RUN_ENV, CliResult, backend_of, copy_tree, run_cli

pytestmark = pytest.mark.backends("local", "s3")

# ---- helpers ------------------------------------------------------------------------------


def clean(result: CliResult) -> CliResult:
    """No traceback and no passphrase in anything the program printed."""
    assert "Traceback" not in result.err, result.err
    assert PASSWORD not in result.out and PASSWORD not in result.err
    return result


def ok(result: CliResult) -> CliResult:
    clean(result)
    assert result.code == 0, f"exit {result.code}\nstdout: {result.out}\nstderr: {result.err}"
    return result


def backup(cli, repo: Path, path: Path, *extra: str) -> dict:
    return ok(cli("backup", "--repo", repo, "--path", path, "--json", *extra)).json()


def snapshot_ids(cli, repo: Path, *extra: str) -> list[str]:
    return [s["id"] for s in ok(cli("snapshots", "--repo", repo, "--json", *extra)).json()]


def restore(cli, repo: Path, ref: str, target: Path, *extra: str) -> CliResult:
    return ok(cli("restore", ref, "--repo", repo, "--target", target, *extra))


def repo_files(repo: Path | str, kinds: tuple[str, ...] = ("config", "keys", "data", "index", "snapshots")) -> dict:
    """name -> size of the repository's objects (locks and staging excluded), local or S3."""
    backend = backend_of(repo)
    return {name: size for name, size in backend.list("") if name == "config" or name.split("/")[0] in kinds}


def repo_size(repo: Path) -> int:
    return sum(repo_files(repo).values())


def check_ok(cli, repo: Path, *extra: str) -> CliResult:
    r = ok(cli("check", "--repo", repo, *extra))
    assert "no errors" in r.out, r.out
    return r


def small_app(root: Path, seed: int, big: int = 0) -> Path:
    rng = random.Random(seed)
    (root / "conf").mkdir(parents=True, exist_ok=True)
    for k in range(8):
        (root / "conf" / f"c{k}.ini").write_text(f"[app{seed}]\nkey{k} = {rng.random()}\n" * 20)
    if big:
        (root / "blob.bin").write_bytes(rng.randbytes(big))
    return root


def open_repo(repo: Path | str, password: str = PASSWORD) -> Repository:
    return Repository.open(backend_of(repo), password.encode())


def run_raw(*args: str, password: str | None = PASSWORD, env: dict | None = None) -> subprocess.CompletedProcess:
    """Like `run_cli`, but keeps stdout as bytes (tar streams)."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("BACKUP_")}
    if password is not None:
        full_env["BACKUP_ENCRYPTION_KEY"] = password
    full_env.update(RUN_ENV)
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "sidecar", *map(str, args)], capture_output=True, env=full_env, timeout=300, cwd=ROOT
    )


# ---- check --------------------------------------------------------------------------------------


def test_check_passes_on_a_healthy_repository(cli, repo, data):
    empty = check_ok(cli, repo)
    assert "0 snapshots" in empty.out
    backup(cli, repo, data)
    (data / "html" / "new.php").write_text("<?php echo 2;\n")
    backup(cli, repo, data)
    structure = check_ok(cli, repo)
    assert "2 snapshots" in structure.out
    full = check_ok(cli, repo, "--read-data")
    half = check_ok(cli, repo, "--read-data", "50")
    for r in (structure, full, half):
        assert "error" not in r.out.replace("no errors", "")
    report = ok(cli("check", "--repo", repo, "--json", "--read-data")).json()
    assert {"ok", "errors", "notes", "snapshots", "packs", "blobs", "packs_read", "damaged_blobs", "affected"} <= set(
        report
    )
    assert report["ok"] is True
    assert report["errors"] == []
    assert report["snapshots"] == 2
    assert report["damaged_blobs"] == 0
    assert report["affected"] == []
    data_packs = len(list(backend_of(repo).list("data/")))
    assert report["packs"] == data_packs > 0
    assert report["packs_read"] == report["packs"]
    assert report["blobs"] > 0
    structure_json = ok(cli("check", "--repo", repo, "--json")).json()
    assert structure_json["packs_read"] == 0
    half_json = ok(cli("check", "--repo", repo, "--json", "--read-data", "50")).json()
    assert 1 <= half_json["packs_read"] <= report["packs"]
    assert half_json["packs_read"] == max(1, round(report["packs"] * 0.5))


# ---- forget ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_apps_template(tmp_path_factory) -> tuple[Path, list[str], list[str]]:
    """A repository with 4 snapshots of app A and 2 of app B (made once; tests get a copy)."""
    base = tmp_path_factory.mktemp("two-apps")
    repo = base / "repo"
    ok(run_cli("init", "--repo", repo))
    a_dir = small_app(base / "a", 1)
    b_dir = small_app(base / "b", 2)
    a, b = [], []
    for k in range(4):
        (a_dir / "version").write_text(f"{k}\n")
        a.append(backup(run_cli, repo, a_dir, "--app-id", "A")["snapshot_id"])
        if k < 2:
            (b_dir / "version").write_text(f"{k}\n")
            b.append(backup(run_cli, repo, b_dir, "--app-id", "B")["snapshot_id"])
    return repo, a, b


@pytest.fixture
def two_apps(two_apps_template, tmp_path) -> tuple[Path, list[str], list[str]]:
    template, a, b = two_apps_template
    return copy_tree(template, tmp_path / "repo"), list(a), list(b)


def test_forget_keep_last_per_app_app_id_and_dry_run(cli, two_apps, tmp_path):
    repo, a, b = two_apps
    everything = snapshot_ids(cli, repo)
    assert sorted(everything) == sorted(a + b)
    before = repo_files(repo)

    dry = ok(cli("forget", "--repo", repo, "--keep-last", "2", "--dry-run", "--json")).json()
    assert dry["dry_run"] is True
    assert sorted(dry["removed"]) == sorted(a[:2])
    assert repo_files(repo) == before  # nothing changed
    assert snapshot_ids(cli, repo) == everything
    text = ok(cli("forget", "--repo", repo, "--keep-last", "2", "--dry-run"))
    assert "would remove 2 snapshots" in text.out

    only_b = ok(cli("forget", "--repo", repo, "--keep-last", "1", "--app-id", "B", "--json")).json()
    assert only_b["removed"] == [b[0]]
    assert set(only_b["apps"]) == {"B"}
    assert snapshot_ids(cli, repo, "--app-id", "A") == a

    report = ok(cli("forget", "--repo", repo, "--keep-last", "2", "--json")).json()
    assert sorted(report["removed"]) == sorted(a[:2])
    decisions = {d["id"]: d for d in report["apps"]["A"]}
    assert [d["id"] for d in report["apps"]["A"]] == a[::-1]  # newest first
    assert decisions[a[3]]["keep"] and decisions[a[2]]["keep"] and "last" in decisions[a[3]]["reasons"]
    assert not decisions[a[1]]["keep"] and not decisions[a[0]]["keep"]
    assert [d["keep"] for d in report["apps"]["B"]] == [True]
    assert snapshot_ids(cli, repo, "--app-id", "A") == a[2:]
    assert snapshot_ids(cli, repo, "--app-id", "B") == b[1:]
    check_ok(cli, repo, "--read-data")
    restored = tmp_path / "restored-b"
    restore(cli, repo, "latest", restored, "--app-id", "B")
    assert (restored / "version").read_text() == "1\n"


def test_forget_needs_a_rule_and_keeps_the_last_snapshot(cli, two_apps):
    repo, a, b = two_apps
    r = clean(cli("forget", "--repo", repo, "--keep-days", "0", "--keep-last", "0"))
    assert r.code == 1
    assert "no retention rule" in r.err
    r = clean(cli("forget", "--repo", repo))
    assert r.code == 1 and "no retention rule" in r.err
    r = clean(cli("forget", a[0], "--repo", repo, "--keep-last", "1"))
    assert r.code == 1 and "not both" in r.err
    assert sorted(snapshot_ids(cli, repo)) == sorted(a + b)

    # rules that keep nothing: only through the engine can the clock move 10 years on
    engine = open_repo(repo)
    future = datetime.now(UTC) + timedelta(days=3650)
    plan = plan_forget(engine, RetentionPolicy(days=1), now=future)
    for app, ids in (("A", a), ("B", b)):
        decisions = plan[app]
        assert [d.snapshot.id for d in decisions] == ids[::-1]
        assert decisions[0].keep and "newest" in decisions[0].reasons[0]
        assert not any(d.keep for d in decisions[1:])
    plan = plan_forget(engine, RetentionPolicy(days=1), now=future, allow_empty=True)
    assert not any(d.keep for decisions in plan.values() for d in decisions)
    plan = plan_forget(engine, RetentionPolicy(days=1), app_id="B", now=future)
    assert list(plan) == ["B"]

    # from the command line every snapshot is recent: --keep-days 1 keeps them all
    recent = ok(cli("forget", "--repo", repo, "--keep-days", "1", "--allow-empty", "--json")).json()
    assert recent["removed"] == []

    # explicit ids remove even an app's last snapshot
    wrong_app = clean(cli("forget", b[1], "--repo", repo, "--app-id", "A"))
    assert wrong_app.code == 1 and "BACKUP_NOT_FOUND" in wrong_app.err
    ok(cli("forget", b[0], b[1][:10], "--repo", repo))
    assert snapshot_ids(cli, repo, "--app-id", "B") == []
    assert snapshot_ids(cli, repo, "--app-id", "A") == a
    check_ok(cli, repo)


def test_forget_with_prune_frees_space(cli, repo, data, tmp_path, same_tree, snapshot_copy):
    first = backup(cli, repo, data, "--app-id", "site")
    (data / "uploads" / "2026" / "extra.bin").write_bytes(os.urandom(2 << 20))
    second = backup(cli, repo, data, "--app-id", "site")
    for p in (data / "uploads" / "2026").iterdir():
        p.unlink()
    third = backup(cli, repo, data, "--app-id", "site")
    state = snapshot_copy(data)
    size = repo_size(repo)
    report = ok(cli("forget", "--repo", repo, "--keep-last", "1", "--prune", "--json")).json()
    assert sorted(report["removed"]) == sorted([first["snapshot_id"], second["snapshot_id"]])
    assert report["prune"]["bytes_freed"] > 2 << 20
    assert repo_size(repo) < size - (2 << 20)
    assert snapshot_ids(cli, repo) == [third["snapshot_id"]]
    check_ok(cli, repo, "--read-data")
    target = tmp_path / "restored"
    restore(cli, repo, "latest", target)
    same_tree(state, target)


# ---- prune -------------------------------------------------------------------------------------


def test_prune_frees_space_and_keeps_every_remaining_snapshot(cli, repo, data, tmp_path, same_tree, snapshot_copy):
    from bench import dataset

    ids, states = [], []
    for seed in (None, 2):
        if seed is not None:
            dataset.mutate(str(data), seed=seed)
        states.append(snapshot_copy(data))
        ids.append(backup(cli, repo, data, "--app-id", "site")["snapshot_id"])
    for p in (data / "uploads" / "2026").iterdir():
        p.write_bytes(os.urandom(p.stat().st_size))  # replaced content: the old one is garbage once forgotten
    states.append(snapshot_copy(data))
    ids.append(backup(cli, repo, data, "--app-id", "site")["snapshot_id"])
    other = small_app(tmp_path / "other", 5, big=300_000)
    other_state = snapshot_copy(other)
    ids.append(backup(cli, repo, other, "--app-id", "other")["snapshot_id"])
    states.append(other_state)

    before = repo_files(repo)
    dry = ok(cli("prune", "--repo", repo, "--dry-run", "--json")).json()
    assert dry["dry_run"] is True
    assert dry["packs_deleted"] == 0 and dry["bytes_freed"] == 0  # every pack is used
    ok(cli("forget", ids[0], "--repo", repo))
    dry = ok(cli("prune", "--repo", repo, "--dry-run", "--json")).json()
    assert dry["bytes_freed"] > 0
    dry_text = ok(cli("prune", "--repo", repo, "--dry-run"))
    assert "would free" in dry_text.out
    after_forget = repo_files(repo)
    assert {k: v for k, v in before.items() if not k.startswith("snapshots/")} == {
        k: v for k, v in after_forget.items() if not k.startswith("snapshots/")
    }  # forget and dry runs removed no data

    size = repo_size(repo)
    report = ok(cli("prune", "--repo", repo, "--json")).json()
    assert report["dry_run"] is False
    assert report["bytes_freed"] == dry["bytes_freed"]
    assert report["packs_deleted"] == dry["packs_deleted"]
    assert report["packs_repacked"] == dry["packs_repacked"]
    assert repo_size(repo) < size
    assert size - repo_size(repo) >= report["bytes_freed"] * 0.9
    check_ok(cli, repo, "--read-data")
    for i in (1, 2, 3):
        target = tmp_path / f"restored-{i}"
        restore(cli, repo, ids[i], target)
        same_tree(states[i], target)
    again = ok(cli("prune", "--repo", repo, "--json")).json()
    assert again["packs_deleted"] == 0 and again["packs_repacked"] == 0 and again["bytes_freed"] == 0


def test_prune_repacks_partly_used_packs(cli, repo, tmp_path, same_tree, snapshot_copy):
    # one batch of files goes to one store worker, so all of this lands in one data pack
    app = small_app(tmp_path / "app", 3, big=1 << 20)
    first = backup(cli, repo, app, "--app-id", "app")
    (app / "blob.bin").unlink()  # its data is garbage once the first snapshot goes
    (app / "conf" / "added.ini").write_text("[more]\nx = 1\n")
    second = backup(cli, repo, app, "--app-id", "app")
    state = snapshot_copy(app)
    ok(cli("forget", first["snapshot_id"], "--repo", repo))
    size = repo_size(repo)

    report = ok(cli("prune", "--repo", repo, "--max-unused", "1", "--json")).json()
    assert report["packs_repacked"] > 0, report
    assert report["packs_written"] > 0
    # blob.bin (1 MiB) may be cut in two chunks (the boundaries depend on the repository's
    # secret chunker seed); a piece under 256 KiB shares a group with the kept files
    assert report["bytes_freed"] >= 1 << 19
    assert repo_size(repo) <= size - (1 << 19)
    check_ok(cli, repo, "--read-data")
    target = tmp_path / "restored"
    restore(cli, repo, second["snapshot_id"], target)
    same_tree(state, target)


def test_prune_refuses_while_a_backup_holds_the_lock(cli, repo, data):
    backup(cli, repo, data, "--app-id", "x")
    (data / "html" / "new.php").write_text("<?php\n")
    second = backup(cli, repo, data, "--app-id", "x")
    ok(cli("forget", "--repo", repo, "--keep-last", "1"))
    before = repo_files(repo)

    lock = open_repo(repo).lock("shared", "backup")
    try:
        r = clean(cli("prune", "--repo", repo))
        assert r.code == 1, r
        assert "locked" in r.err and "backup" in r.err, r.err
        assert str(os.getpid()) in r.err  # names the holder
        assert repo_files(repo) == before  # nothing deleted
        dry = clean(cli("prune", "--repo", repo, "--dry-run"))
        assert dry.code == 1 and "locked" in dry.err
        forget_prune = clean(cli("forget", "--repo", repo, "--keep-last", "1", "--prune", "--lock-wait", "0"))
        assert forget_prune.code == 0  # nothing to forget, so no prune is attempted
        assert repo_files(repo) == before
    finally:
        lock.release()
    report = ok(cli("prune", "--repo", repo, "--json")).json()
    assert report["packs_deleted"] + report["packs_repacked"] > 0
    assert repo_size(repo) < sum(before.values())
    assert snapshot_ids(cli, repo) == [second["snapshot_id"]]
    check_ok(cli, repo, "--read-data")


# ---- export ------------------------------------------------------------------------------------


def untar(archive: Path | bytes, dest: Path) -> None:
    """Extract as root with GNU tar, keeping owners, modes, ns times, xattrs, links, devices."""
    dest.mkdir()
    cmd = ["tar", "--xattrs", "--xattrs-include=*", "--numeric-owner", "--same-owner", "-xpf"]
    if isinstance(archive, bytes):
        proc = subprocess.run([*cmd, "-", "-C", str(dest)], input=archive, capture_output=True)
    else:
        proc = subprocess.run([*cmd, str(archive), "-C", str(dest)], capture_output=True)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")


def test_export_tar_matches_the_data(cli, repo, data, tmp_path, same_tree):
    snap = backup(cli, repo, data, "--app-id", "site")
    out = tmp_path / "x.tar"
    r = ok(cli("export", "latest", "--repo", repo, "--output", out))
    assert out.is_file() and not Path(str(out) + ".part").exists()
    assert f"exported snapshot {snap['snapshot_id'][:8]}" in r.err
    with tarfile.open(out) as tar:
        names = tar.getnames()
    assert "." in names and "db/dump.sql" in names and "odd/a-fifo" in names
    extracted = tmp_path / "extracted"
    untar(out, extracted)
    same_tree(data, extracted)

    streamed = run_raw("export", snap["backup_id"], "--repo", repo, "--output", "-")
    assert streamed.returncode == 0, streamed.stderr
    assert b"Traceback" not in streamed.stderr and b"exported snapshot" in streamed.stderr
    assert streamed.stdout[257:262] == b"ustar"  # a tar stream, nothing else on stdout
    extracted2 = tmp_path / "extracted-stdout"
    untar(streamed.stdout, extracted2)
    same_tree(data, extracted2)


def test_export_of_a_two_path_snapshot_and_one_source(cli, repo, data, tmp_path, same_tree):
    a, b = data / "odd", data / "db"
    ok(cli("backup", "--repo", repo, "--path", a, "--path", b, "--app-id", "two"))
    out = tmp_path / "both.tar"
    ok(cli("export", "latest", "--repo", repo, "--app-id", "two", "--output", out))
    both = tmp_path / "both"
    untar(out, both)
    same_tree(a, both / str(a).lstrip("/"))
    same_tree(b, both / str(b).lstrip("/"))
    one = tmp_path / "one.tar"
    ok(cli("export", "latest", "--repo", repo, "--source", str(a), "--output", one))
    only_a = tmp_path / "only-a"
    untar(one, only_a)
    same_tree(a, only_a)


# ---- keys --------------------------------------------------------------------------------------


def test_keys_add_remove_export_and_recover_with_the_master_key(cli, repo, tmp_path, same_tree):
    app = small_app(tmp_path / "app", 9)
    ok(cli("backup", "--repo", repo, "--path", app))
    keys = ok(cli("key", "list", "--repo", repo, "--json")).json()
    assert len(keys) == 1 and keys[0]["current"] is True
    assert {"id", "current", "created", "hostname", "username"} <= set(keys[0])
    original = keys[0]["id"]

    second_pw = "second passphrase, for the admin"
    added = ok(cli("key", "add", "--repo", repo, env={"BACKUP_NEW_ENCRYPTION_KEY": second_pw}))
    assert second_pw not in added.out + added.err
    keys = ok(cli("key", "list", "--repo", repo, "--json")).json()
    assert len(keys) == 2
    new_id = next(k["id"] for k in keys if k["id"] != original)
    assert added.out.strip() == f"added key {new_id[:8]}"
    as_second = ok(cli("key", "list", "--repo", repo, "--json", password=second_pw)).json()
    assert {k["id"]: k["current"] for k in as_second} == {original: False, new_id: True}
    ok(cli("snapshots", "--repo", repo, password=second_pw))

    refused = clean(cli("key", "remove", original[:12], "--repo", repo))
    assert refused.code == 1 and "in use" in refused.err
    assert len(ok(cli("key", "list", "--repo", repo, "--json")).json()) == 2
    ok(cli("key", "remove", new_id[:12], "--repo", repo))
    assert [k["id"] for k in ok(cli("key", "list", "--repo", repo, "--json")).json()] == [original]
    gone = clean(cli("snapshots", "--repo", repo, password=second_pw))
    assert gone.code == 1 and "wrong encryption key" in gone.err

    exported = ok(cli("key", "export", "--repo", repo))
    master = json.loads(exported.out)
    assert set(master) >= {"repository", "encryption", "id"}
    assert master["repository"] == json.loads(backend_of(repo).get("config"))["id"]
    master_file = tmp_path / "master.json"
    master_file.write_text(exported.out)

    # every passphrase lost: the exported master key makes a new one
    recovered_pw = "recovered after losing everything"
    new_key = clean(
        cli(
            "key",
            "add",
            "--repo",
            repo,
            "--master-key-file",
            master_file,
            password=None,
            env={"BACKUP_NEW_ENCRYPTION_KEY": recovered_pw},
        )
    )
    assert new_key.code == 0, new_key.err
    assert len(ok(cli("key", "list", "--repo", repo, "--json", password=recovered_pw)).json()) == 2
    target = tmp_path / "restored"
    restore_r = clean(cli("restore", "latest", "--repo", repo, "--target", target, password=recovered_pw))
    assert restore_r.code == 0, restore_r.err
    same_tree(app, target)
    bad_master = tmp_path / "bad.json"
    bad_master.write_text('{"encryption": "AAAA", "id": "AAAA"}')
    r = clean(cli("key", "list", "--repo", repo, "--master-key-file", bad_master, password=None))
    assert r.code == 1 and "master key" in r.err


# ---- unlock ------------------------------------------------------------------------------------

HOLD_LOCK = """
import sys, time
from pathlib import Path
from sidecar.repo.backends.local import LocalBackend
from sidecar.repo.repository import Repository
repo = Repository.open(LocalBackend(Path(sys.argv[1])), sys.argv[2].encode())
lock = repo.lock("shared", "backup")
print("locked", flush=True)
time.sleep(120)
"""


@pytest.mark.backends("local")  # the lock holder below opens a local path
def test_unlock_removes_a_stale_lock(cli, repo, data):
    backup(cli, repo, data, "--app-id", "x")
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(repo), PASSWORD], stdout=subprocess.PIPE, cwd=ROOT, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        assert len(list((repo / "locks").iterdir())) == 1
        live = ok(cli("unlock", "--repo", repo))
        assert "removed 0 lock(s)" in live.out  # the holder is alive: its lock is not stale
        assert len(list((repo / "locks").iterdir())) == 1
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    locks = read_locks(LocalBackend(repo), open_repo(repo).codec)
    assert len(locks) == 1 and not isinstance(locks[0], str) and locks[0].pid == holder.pid
    assert locks[0].stale(datetime.now(UTC))
    ok(cli("prune", "--repo", repo, "--dry-run"))  # a stale lock blocks no one, not even an exclusive lock
    r = ok(cli("unlock", "--repo", repo))
    assert "removed 1 lock(s)" in r.out
    assert list((repo / "locks").iterdir()) == []
    check_ok(cli, repo)

    # --remove-all also removes a live lock (the operator says its holder is gone)
    lock = open_repo(repo).lock("shared", "backup")
    try:
        r = ok(cli("unlock", "--repo", repo, "--remove-all"))
        assert "removed 1 lock(s)" in r.out
        assert list((repo / "locks").iterdir()) == []
    finally:
        lock.release()
