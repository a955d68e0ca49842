"""A tar stream as a backup source lists the same tree as a walk of the directory."""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from bench.treecompare import compare
from sidecar.errors import BackupCreateFailed
from sidecar.repo import tree
from sidecar.repo.backends.local import LocalBackend
from sidecar.repo.backup import BackupOptions, BackupSession
from sidecar.repo.repository import Repository
from sidecar.repo.restore import restore_snapshot
from sidecar.repo.tarscan import _relative


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    return Repository.init(LocalBackend(tmp_path / "repo"), b"k")


def make_tree(root: Path) -> None:
    (root / "d" / "sub").mkdir(parents=True)
    (root / "a.txt").write_text("hello")
    (root / "d" / "big.bin").write_bytes(os.urandom(5 << 20))  # chunked in the parent
    (root / "d" / "sub" / "small").write_bytes(os.urandom(3000))
    (root / "d" / "cache.log").write_text("skip me")
    (root / "empty").write_bytes(b"")
    os.link(root / "a.txt", root / "hard")
    os.symlink("a.txt", root / "link")
    os.symlink("nowhere", root / "dangling")
    os.mkfifo(root / "fifo")
    os.chmod(root / "d", 0o2750)
    os.chown(root / "d" / "sub" / "small", 33, 44)
    os.setxattr(root / "a.txt", "user.note", b"\x00\xffbinary")
    os.utime(root / "a.txt", ns=(1, 1_600_000_000_123_456_789))


def gnu_tar(root: Path, out: Path, *extra: str) -> None:
    subprocess.run(
        [
            "tar",
            "--sort=name",
            "--format=pax",
            "--xattrs",
            "--xattrs-include=*",
            "-cf",
            str(out),
            *extra,
            "-C",
            str(root.parent),
            root.name,
        ],
        check=True,
    )


def listing(repo: Repository, snap, name: str) -> list[dict]:
    ids = [bytes.fromhex(h) for h in snap.source(name).tree]
    return [{k: v for k, v in e.items() if k not in ("inode", "ctime_ns")} for e in tree.read_tree(ids, repo.load_blob)]


def test_tar_stream_lists_the_same_tree_as_a_walk(repo, tmp_path):
    src = tmp_path / "data"
    src.mkdir()
    make_tree(src)
    gnu_tar(src, tmp_path / "t.tar")
    with BackupSession(repo, BackupOptions(app_id="t")) as session:
        session.add_tree("walk", str(src))
        with open(tmp_path / "t.tar", "rb") as f:
            session.add_tar("tar", f, strip="data")
        snap = session.commit()
    walked, streamed = listing(repo, snap, "walk"), listing(repo, snap, "tar")
    assert len(walked) == 12
    assert walked == streamed
    by_path = {tree.entry_path(e): e for e in streamed}
    assert by_path[b"a.txt"]["mtime_ns"] == 1_600_000_000_123_456_789  # pax mtime kept to the nanosecond
    assert by_path[b"hard"]["type"] == tree.HARDLINK
    assert by_path[b"a.txt"]["xattrs"]
    # and it restores to the original
    target = tmp_path / "restored"
    restore_snapshot(repo, snap, str(target), source="tar")
    assert compare(str(src), str(target)) == []


def test_excludes_apply_to_names_and_whole_directories(repo, tmp_path):
    src = tmp_path / "data"
    src.mkdir()
    make_tree(src)
    gnu_tar(src, tmp_path / "t.tar")
    with BackupSession(repo, BackupOptions(app_id="t")) as session:
        with open(tmp_path / "t.tar", "rb") as f:
            session.add_tar("tar", f, strip="data", excludes=("*.log", "d/sub"))
        session.add_tree("walk", str(src), excludes=("*.log", "d/sub"))
        snap = session.commit()
    paths = [tree.entry_path(e) for e in listing(repo, snap, "tar")]
    assert b"d/cache.log" not in paths and b"d/sub" not in paths and b"d/sub/small" not in paths
    assert b"d/big.bin" in paths
    assert listing(repo, snap, "tar") == listing(repo, snap, "walk")


def test_out_of_order_and_damaged_streams_fail_clearly(repo, tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for name in ("root", "root/b", "root/a"):
            info = tarfile.TarInfo(name)
            info.type = tarfile.DIRTYPE
            t.addfile(info)
    with (
        pytest.raises(BackupCreateFailed, match="not in tree order at 'a'"),
        BackupSession(repo, BackupOptions(app_id="t")) as session,
    ):
        session.add_tar("x", io.BytesIO(buf.getvalue()), strip="root")
    src = tmp_path / "data"
    src.mkdir()
    (src / "f").write_bytes(os.urandom(100_000))
    gnu_tar(src, tmp_path / "t.tar")
    cut = (tmp_path / "t.tar").read_bytes()[:60_000]
    with (
        pytest.raises(BackupCreateFailed, match="damaged or ended early"),
        BackupSession(repo, BackupOptions(app_id="t")) as session,
    ):
        session.add_tar("y", io.BytesIO(cut), strip="data")
    assert repo.list_snapshots() == []


def test_relative_paths():
    assert _relative(b"data", b"data") == b"."
    assert _relative(b"data/", b"data") == b"."
    assert _relative(b"data/x/y", b"data") == b"x/y"
    assert _relative(b"./data/x", b"data") == b"x"
    assert _relative(b"other/x", b"data") is None
    assert _relative(b"x", b".") == b"x"
    assert _relative(b"./", b"") == b"."
