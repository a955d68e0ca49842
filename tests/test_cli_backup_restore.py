"""End-to-end specification of `backup` and `restore` through the command line.

Every test runs `python -m sidecar ...` in a subprocess (the `cli` fixture), the
way an operator or the API layer does, and judges the result on disk with
`bench.treecompare` (content, modes incl. setuid/setgid/sticky, owners, ns
mtimes, symlinks, hard links, fifos, devices, xattrs, non-UTF-8 names).
"""

from __future__ import annotations

import os
import random
import re
import shutil
import stat
from pathlib import Path

import pytest

from bench import dataset, treecompare
from tests.conftest import PASSWORD, CliResult

pytestmark = pytest.mark.backends("local", "s3")

BACKUP_ID = re.compile(r"^backup_\d{8}_\d{6}_[0-9a-f]{6}$")
SNAPSHOT_ID = re.compile(r"^[0-9a-f]{64}$")


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


def backup(cli, repo: Path, *paths: Path, extra: tuple = ()) -> dict:
    args = ["backup", "--repo", repo, "--json", *extra]
    for p in paths:
        args += ["--path", p]
    return ok(cli(*args)).json()


def restore(cli, repo: Path, ref: str, target: Path, *extra: str) -> CliResult:
    return ok(cli("restore", ref, "--repo", repo, "--target", target, *extra))


def snapshots(cli, repo: Path, *extra: str) -> list[dict]:
    return ok(cli("snapshots", "--repo", repo, "--json", *extra)).json()


def file_stats(root: Path) -> dict[bytes, tuple]:
    """What the engine uses to decide "unchanged": path -> (inode, size, mtime, ctime);
    one path per inode (hard links count once, as in the backup's `files`)."""
    out: dict[bytes, tuple] = {}
    seen: set[int] = set()
    base = os.fsencode(root)
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames.sort()
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if stat.S_ISREG(st.st_mode) and st.st_ino not in seen:
                seen.add(st.st_ino)
                out[os.path.relpath(path, base)] = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    return out


def html_files(root: Path) -> list[Path]:
    return sorted(p for p in (root / "html").rglob("*.php") if p.is_file())


def replace_with_file(path: Path, content: bytes) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()
    path.write_bytes(content)


def populate_junk(target: Path) -> None:
    """A non-empty restore target: things no snapshot has, at several depths."""
    (target / "junk-dir" / "deeper").mkdir(parents=True)
    (target / "junk-dir" / "deeper" / "x.bin").write_bytes(os.urandom(1000))
    (target / "junk-file.txt").write_text("left over\n")
    (target / "html").mkdir()
    (target / "html" / "junk.php").write_text("<?php // not in any snapshot\n")
    os.symlink("/etc/passwd", target / "junk-link")


# ---- point in time ------------------------------------------------------------------------


def test_every_snapshot_restores_its_point_in_time(cli, repo, data, snapshot_copy, same_tree, tmp_path):
    """backup → mutate → backup → mutate → backup; each snapshot restores to exactly the
    state it was taken from, into a fresh directory and into one reused, non-empty target."""
    states: list[Path] = []
    ids: list[str] = []

    def take() -> None:
        states.append(snapshot_copy(data))
        ids.append(backup(cli, repo, data, extra=("--app-id", "site"))["snapshot_id"])

    take()
    dataset.mutate(str(data), seed=2)  # odd/link-to-run: symlink -> directory
    take()
    odd = data / "odd"
    replace_with_file(odd / "link-to-run", b"a file now\n")  # directory -> file (mutate makes it a directory again)
    replace_with_file(odd / "empty dir", b"was a directory\n")  # directory -> file
    (odd / "empty file").unlink()
    (odd / "empty file").mkdir()  # file -> directory
    (odd / "empty file" / "child").write_bytes(b"inside a former file\n")
    (odd / "dangling-link").unlink()
    os.symlink("somewhere/else", odd / "dangling-link")  # symlink target changes
    dataset.mutate(str(data), seed=3)
    take()

    listed = snapshots(cli, repo, "--app-id", "site")
    assert [s["id"] for s in listed] == ids
    assert [s["backup_type"] for s in listed] == ["full", "incremental", "incremental"]
    assert [s["parent"] for s in listed] == [None, ids[0], ids[1]]

    for i, snapshot_id in enumerate(ids):
        fresh = tmp_path / f"fresh-{i}"
        restore(cli, repo, snapshot_id, fresh)
        same_tree(states[i], fresh)

    reused = tmp_path / "reused"
    reused.mkdir()
    populate_junk(reused)
    for i in (2, 0, 1, 2, 0):  # every type change in both directions
        restore(cli, repo, ids[i], reused)
        same_tree(states[i], reused)


# ---- backup types -------------------------------------------------------------------------


def test_incremental_reuses_unchanged_files_and_rereads_changed_ones(cli, repo, data, tmp_path):
    first = backup(cli, repo, data, extra=("--app-id", "app", "--type", "incremental"))
    assert first["backup_type"] == "full"  # nothing to be incremental to
    assert first["parent"] is None
    assert first["reused_files"] == 0
    total = len(file_stats(data))
    assert first["files"] == total

    other_dir = tmp_path / "other"
    other_dir.mkdir()
    (other_dir / "f").write_text("another app\n")
    other = backup(cli, repo, other_dir, extra=("--app-id", "other-app"))
    assert other["backup_type"] == "full"

    files = html_files(data)
    for p in files[:3]:
        with open(p, "ab") as f:
            f.write(b"\n// appended\n")
    os.chmod(files[3], 0o640)  # metadata only: ctime changes, so it is read again
    st = os.stat(files[4])
    os.utime(files[4], ns=(st.st_atime_ns, st.st_mtime_ns + 1))  # mtime only
    (data / "html" / "brand-new.php").write_text("<?php echo 'new';\n")

    second = backup(cli, repo, data, extra=("--app-id", "app"))
    assert second["backup_type"] == "incremental"
    assert second["parent"] == first["snapshot_id"]  # the latest of *this* app, not other-app's
    assert second["files"] == total + 1
    assert second["reused_files"] == total - 5

    # a day of use (bench.dataset.mutate): the expected reuse follows from what changed on disk
    before = file_stats(data)
    dataset.mutate(str(data), seed=2)
    after = file_stats(data)
    unchanged = sum(1 for rel, sig in after.items() if before.get(rel) == sig)
    assert 0 < unchanged < len(after)
    third = backup(cli, repo, data, extra=("--app-id", "app"))
    assert third["parent"] == second["snapshot_id"]
    assert third["files"] == len(after)
    assert third["reused_files"] == unchanged
    assert third["added_bytes"] < third["bytes"] // 2  # only the changes are new


def test_full_rereads_everything_but_adds_almost_nothing(cli, repo, data):
    first = backup(cli, repo, data, extra=("--app-id", "app"))
    (data / "html" / "one-more.php").write_text("<?php echo 1;\n")
    incremental = backup(cli, repo, data, extra=("--app-id", "app"))
    assert incremental["reused_files"] == incremental["files"] - 1
    full = backup(cli, repo, data, extra=("--app-id", "app", "--type", "full"))
    assert full["backup_type"] == "full"
    assert full["parent"] is None
    assert full["reused_files"] == 0
    assert full["files"] == incremental["files"]
    assert full["bytes"] == incremental["bytes"]
    assert full["added_bytes"] <= full["bytes"] // 100  # every chunk is already stored
    assert full["stored_bytes"] <= first["stored_bytes"] // 100


def test_differential_uses_the_latest_full_as_parent(cli, repo, data, tmp_path, same_tree, snapshot_copy):
    full1 = backup(cli, repo, data, extra=("--app-id", "app"))
    files = html_files(data)
    incs = []
    for k in range(2):
        with open(files[k], "ab") as f:
            f.write(b"// change %d\n" % k)
        incs.append(backup(cli, repo, data, extra=("--app-id", "app")))
    assert incs[0]["parent"] == full1["snapshot_id"]
    assert incs[1]["parent"] == incs[0]["snapshot_id"]

    diff = backup(cli, repo, data, extra=("--app-id", "app", "--type", "differential"))
    assert diff["backup_type"] == "differential"
    assert diff["parent"] == full1["snapshot_id"]
    assert diff["reused_files"] == diff["files"] - 2  # both files changed since the full

    full2 = backup(cli, repo, data, extra=("--app-id", "app", "--type", "full"))
    after_diff = backup(cli, repo, data, extra=("--app-id", "app"))
    assert after_diff["parent"] == full2["snapshot_id"]
    with open(files[5], "ab") as f:
        f.write(b"// change after the second full\n")
    inc3 = backup(cli, repo, data, extra=("--app-id", "app"))
    assert inc3["parent"] == after_diff["snapshot_id"]
    state = snapshot_copy(data)
    diff2 = backup(cli, repo, data, extra=("--app-id", "app", "--type", "differential"))
    assert diff2["parent"] == full2["snapshot_id"]
    assert diff2["reused_files"] == diff2["files"] - 1

    listed = {s["id"]: s for s in snapshots(cli, repo)}
    assert listed[diff2["snapshot_id"]]["parent"] == full2["snapshot_id"]
    assert listed[diff2["snapshot_id"]]["backup_type"] == "differential"
    target = tmp_path / "restored"
    restore(cli, repo, diff2["snapshot_id"], target)
    same_tree(state, target)


# ---- JSON output ------------------------------------------------------------------------------


def test_backup_and_snapshots_json_fields(cli, repo, data, tmp_path):
    b = backup(cli, repo, data, extra=("--app-id", "wordpress", "--tag", "nightly", "--tag", "before-upgrade"))
    expected = {
        "snapshot_id",
        "backup_id",
        "app_id",
        "backup_type",
        "files",
        "bytes",
        "added_bytes",
        "stored_bytes",
        "duration_s",
        "warnings",
    }
    assert expected <= set(b)
    assert SNAPSHOT_ID.match(b["snapshot_id"])
    assert BACKUP_ID.match(b["backup_id"]), b["backup_id"]
    assert b["app_id"] == "wordpress"
    assert b["backup_type"] == "full"
    assert b["files"] == len(file_stats(data))
    assert b["bytes"] == sum(sig[1] for sig in file_stats(data).values())
    assert 0 < b["stored_bytes"] < b["bytes"]  # compressible text, a sparse file
    assert b["added_bytes"] >= b["bytes"] * 0.9
    assert isinstance(b["duration_s"], float | int) and b["duration_s"] >= 0
    assert b["warnings"] == []

    other = tmp_path / "other"
    other.mkdir()
    (other / "a.txt").write_text("x\n")
    o = backup(cli, repo, other, extra=("--type", "differential"))  # no --app-id: the path is the app
    assert o["app_id"] == str(other)
    assert o["backup_type"] == "full" and o["parent"] is None  # no full to be differential to

    everything = snapshots(cli, repo)
    assert [s["id"] for s in everything] == [b["snapshot_id"], o["snapshot_id"]]
    s = everything[0]
    assert {"id", "app_id", "time", "backup_type", "tags", "sources"} <= set(s)
    assert s["backup_id"] == b["backup_id"]
    assert s["app_id"] == "wordpress"
    assert s["backup_type"] == "full"
    assert s["tags"] == ["nightly", "before-upgrade"]
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$", s["time"]), s["time"]
    assert s["time"][:10].replace("-", "") == b["backup_id"][7:15]
    assert s["sources"] == [{"name": str(data), "kind": "path"}]
    assert everything[1]["tags"] == []

    only = snapshots(cli, repo, "--app-id", "wordpress")
    assert [x["id"] for x in only] == [b["snapshot_id"]]
    assert snapshots(cli, repo, "--app-id", "no-such-app") == []

    table = ok(cli("snapshots", "--repo", repo))
    assert b["snapshot_id"][:8] in table.out and "nightly" in table.out
    assert "2 snapshots" in table.out


# ---- restore details ---------------------------------------------------------------------------


def test_restore_makes_a_non_empty_target_exact(cli, repo, data, tmp_path, same_tree):
    snap = backup(cli, repo, data)["snapshot_id"]
    target = tmp_path / "target"
    target.mkdir()
    populate_junk(target)
    (target / "odd").mkdir()
    (target / "odd" / "extra inside a snapshot dir").write_text("x\n")
    os.symlink("../html", target / "odd" / "extra-symlink")
    os.symlink("/", target / "odd" / "extra-symlink-to-root-dir")
    (target / "db" / "dump.sql").mkdir(parents=True)  # a directory where the snapshot has a file
    (target / "db" / "dump.sql" / "inner.txt").write_text("in the way\n")
    (target / "uploads").write_text("a file where the snapshot has a directory\n")
    os.symlink("/tmp", target / "html" / "plugins")  # a symlink where the snapshot has a directory
    (target / "odd" / "run.sh").mkdir()  # a directory where the snapshot has a hard-linked file

    restore(cli, repo, snap, target)
    same_tree(data, target)
    assert Path("/etc/passwd").exists()  # removing the extra link did not follow it


def test_restore_no_delete_keeps_extras(cli, repo, data, tmp_path):
    snap = backup(cli, repo, data)["snapshot_id"]
    target = tmp_path / "target"
    target.mkdir()
    populate_junk(target)
    (target / "odd").mkdir()
    (target / "odd" / "extra.txt").write_text("keep me\n")
    restore(cli, repo, snap, target, "--no-delete")
    problems = treecompare.compare(str(data), str(target))
    extras = {"junk-dir", "junk-dir/deeper", "junk-dir/deeper/x.bin", "junk-file.txt", "junk-link"}
    extras |= {"html/junk.php", "odd/extra.txt"}
    assert sorted(problems) == sorted(f"extra     {e}" for e in extras)


def test_restore_sources_of_a_two_path_snapshot(cli, repo, data, tmp_path, same_tree):
    a, b = data / "odd", data / "db"
    snap = backup(cli, repo, a, b, extra=("--app-id", "two"))
    listed = snapshots(cli, repo)[0]
    assert listed["sources"] == [{"name": str(a), "kind": "path"}, {"name": str(b), "kind": "path"}]

    both = tmp_path / "both"
    restore(cli, repo, snap["snapshot_id"], both)
    same_tree(a, both / str(a).lstrip("/"))
    same_tree(b, both / str(b).lstrip("/"))

    only_a = tmp_path / "only-a"
    restore(cli, repo, snap["snapshot_id"], only_a, "--source", str(a))
    same_tree(a, only_a)
    only_b = tmp_path / "only-b"
    restore(cli, repo, "latest", only_b, "--app-id", "two", "--source", str(b))
    same_tree(b, only_b)

    bad = clean(cli("restore", snap["snapshot_id"], "--repo", repo, "--target", tmp_path / "x", "--source", "/nope"))
    assert bad.code == 1
    assert "has no source '/nope'" in bad.err
    assert str(a) in bad.err  # names the sources it does have


def small_tree(root: Path, text: str) -> Path:
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_text(text)
    (root / "sub" / "b.bin").write_bytes(random.Random(text).randbytes(5000))
    return root


def test_restore_by_backup_id_prefix_and_latest(cli, repo, tmp_path, same_tree, snapshot_copy):
    app1 = small_tree(tmp_path / "app1", "first app\n")
    app2 = small_tree(tmp_path / "app2", "second app\n")
    s1 = backup(cli, repo, app1, extra=("--app-id", "one"))
    s1_state = snapshot_copy(app1)
    (app1 / "a.txt").write_text("first app, changed\n")
    s1b = backup(cli, repo, app1, extra=("--app-id", "one"))
    backup(cli, repo, app2, extra=("--app-id", "two"))

    by_backup_id = tmp_path / "r-backup-id"
    restore(cli, repo, s1["backup_id"], by_backup_id)
    same_tree(s1_state, by_backup_id)

    by_prefix = tmp_path / "r-prefix"
    restore(cli, repo, s1["snapshot_id"][:8], by_prefix)
    same_tree(s1_state, by_prefix)

    latest_one = tmp_path / "r-latest-one"
    r = restore(cli, repo, "latest", latest_one, "--app-id", "one", "--json")
    assert r.json()["snapshot_id"] == s1b["snapshot_id"]
    same_tree(app1, latest_one)

    latest_any = tmp_path / "r-latest"
    restore(cli, repo, "latest", latest_any)
    same_tree(app2, latest_any)


def test_unknown_snapshot_is_a_clear_error(cli, repo, tmp_path):
    app = small_tree(tmp_path / "app", "x\n")
    backup(cli, repo, app, extra=("--app-id", "one"))
    target = tmp_path / "target"
    for ref, extra in [
        ("deadbeef", ()),
        ("backup_20000101_000000_abcdef", ()),
        ("not-an-id", ()),
        ("latest", ("--app-id", "no-such-app")),
    ]:
        r = clean(cli("restore", ref, "--repo", repo, "--target", target, *extra))
        assert r.code == 1, (ref, r)
        assert "BACKUP_NOT_FOUND" in r.err, (ref, r.err)
        assert len(r.err.strip().splitlines()) == 1, r.err
        assert not target.exists() or not any(target.iterdir())


# ---- stream source -----------------------------------------------------------------------------


def sql_dump(rng: random.Random, size: int) -> bytes:
    """Lines like a database dump (unique ids, varied text), about `size` bytes."""
    pool = [" ".join(rng.choice(dataset.WORDS) for _ in range(rng.randrange(5, 30))) for _ in range(2000)]
    lines = []
    n = i = 0
    while n < size:
        lines.append(
            f"INSERT INTO `posts` VALUES ({i},{rng.randrange(50)},'{rng.choice(pool)}','p-{rng.randrange(10**9)}');\n"
        )
        n += len(lines[-1])
        i += 1
    return "".join(lines).encode()


def test_stdin_stream_backup_and_restore(cli, repo, tmp_path):
    rng = random.Random(7)
    # big against the chunk size (1 MiB on average, 4 MiB at most), so dedup shows whatever
    # the repository's secret chunker seed makes of it
    dump = sql_dump(rng, 24 << 20)
    first = ok(cli("backup", "--repo", repo, "--stdin", "dump.sql", "--app-id", "db1", "--json", input=dump)).json()
    assert first["files"] == 1
    assert first["bytes"] == len(dump)
    assert first["app_id"] == "db1"
    listed = snapshots(cli, repo, "--app-id", "db1")
    assert listed[0]["sources"] == [{"name": "dump.sql", "kind": "stream"}]

    target = tmp_path / "target"
    restore(cli, repo, first["snapshot_id"], target)
    assert sorted(os.listdir(target)) == ["dump.sql"]
    assert (target / "dump.sql").read_bytes() == dump

    lines = dump.splitlines(keepends=True)
    for k in (len(lines) // 2, len(lines) // 2 + 7):
        lines[k] = b"UPDATE `posts` SET views = views + 1 WHERE id = %d;\n" % k
    changed = b"".join(lines)
    second = ok(cli("backup", "--repo", repo, "--stdin", "dump.sql", "--app-id", "db1", "--json", input=changed)).json()
    assert second["bytes"] == len(changed)
    assert second["parent"] == first["snapshot_id"]
    assert second["added_bytes"] < len(changed) * 0.4, second  # unchanged chunks are not stored again

    target2 = tmp_path / "target2"
    restore(cli, repo, "latest", target2, "--app-id", "db1")
    assert (target2 / "dump.sql").read_bytes() == changed
    target3 = tmp_path / "target3"
    restore(cli, repo, first["backup_id"], target3)
    assert (target3 / "dump.sql").read_bytes() == dump


# ---- excludes ------------------------------------------------------------------------------------


def test_excludes(cli, repo, data, tmp_path, same_tree, snapshot_copy):
    (data / "app.log").write_text("top-level log\n")
    (data / "html" / "debug.log").write_text("nested log\n")
    (data / "cache" / "sub").mkdir(parents=True)
    (data / "cache" / "page.html").write_text("cached\n")
    (data / "cache" / "sub" / "deep.bin").write_bytes(b"cached too\n")
    (data / "html" / "cache").mkdir()
    (data / "html" / "cache" / "kept.txt").write_text("'cache/*' is relative to the source root\n")
    expected = snapshot_copy(data)
    for rel in ("app.log", "html/debug.log"):
        (expected / rel).unlink()
    shutil.rmtree(expected / "cache" / "sub")
    (expected / "cache" / "page.html").unlink()
    for rel in (".", "html", "cache"):  # removing entries changed these directories' mtimes
        st = os.stat(data / rel)
        os.utime(expected / rel, ns=(st.st_atime_ns, st.st_mtime_ns))

    b = backup(cli, repo, data, extra=("--exclude", "*.log", "--exclude", "cache/*"))
    target = tmp_path / "target"
    restore(cli, repo, b["snapshot_id"], target)
    same_tree(expected, target)
    assert b["files"] == len(file_stats(expected))


def test_restore_over_a_newer_state_drops_directory_xattrs(cli, repo, data, tmp_path, same_tree, snapshot_copy):
    old_state = snapshot_copy(data)
    old = backup(cli, repo, data)["snapshot_id"]
    os.setxattr(data / "odd", "user.note", b"added later")  # a directory
    os.setxattr(data, "user.note", b"on the root too")
    new_state = snapshot_copy(data)
    new = backup(cli, repo, data)["snapshot_id"]
    target = tmp_path / "target"
    restore(cli, repo, new, target)
    same_tree(new_state, target)
    restore(cli, repo, old, target)
    same_tree(old_state, target)
