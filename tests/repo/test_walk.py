"""Directory walking in tree order (sidecar/repo/walk.py)."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from sidecar.repo.walk import Walker, compile_excludes

FILES = [
    b"a.log",
    b"a.txt",
    b"b.txt",
    b"Z",
    b".hidden",
    b"cache/x.bin",
    b"cache/deep/y.bin",
    b"tmp/t1",
    b"sub/b.log",
    b"sub/cache/keep.bin",
    b"sub/tmp/keep",
    b"dir.log/inside",
    b"\xff\xfe.log",
    b"\xff\xfe.txt",
]
DIRS = [b"cache", b"cache/deep", b"tmp", b"sub", b"sub/cache", b"sub/tmp", b"dir.log", b"empty"]


ROOT = Path(__file__).resolve().parents[2]


def make_tree(root: Path) -> bytes:
    base = os.fsencode(root)
    for d in DIRS:
        os.makedirs(base + b"/" + d, exist_ok=True)
    for f in FILES:
        with open(base + b"/" + f, "wb") as fh:
            fh.write(f)
    return base


@pytest.fixture
def tree(tmp_path: Path) -> bytes:
    return make_tree(tmp_path / "src")


def walk(root: bytes, *excludes: str, errors: list | None = None) -> list[bytes]:
    on_error = (lambda p, m: errors.append((p, m))) if errors is not None else (lambda p, m: None)
    return [rel for rel, _, _ in Walker(root, excludes, on_error=on_error)]


def tree_order(paths) -> list[bytes]:
    """The documented order: depth first, siblings sorted by name bytes, root first."""
    return sorted(paths, key=lambda p: () if p == b"." else tuple(p.split(b"/")))


def test_root_first_then_depth_first_sorted_by_bytes(tree):
    walked = walk(tree)
    assert walked[0] == b"."
    assert sorted(walked[1:]) == sorted(FILES + DIRS)
    assert walked == tree_order(walked)
    assert walked[:6] == [b".", b".hidden", b"Z", b"a.log", b"a.txt", b"b.txt"]
    # a directory is followed by its whole subtree before its next sibling
    i = walked.index(b"cache")
    assert walked[i : i + 4] == [b"cache", b"cache/deep", b"cache/deep/y.bin", b"cache/x.bin"]
    assert walked[-2:] == [b"\xff\xfe.log", b"\xff\xfe.txt"]


def test_entries_carry_absolute_path_and_lstat(tree):
    for rel, path, st in Walker(tree):
        assert path == (tree if rel == b"." else tree + b"/" + rel)
        expected = os.lstat(path)
        assert (st.st_ino, st.st_mode, st.st_size) == (expected.st_ino, expected.st_mode, expected.st_size)


def test_same_name_prefixes(tmp_path):
    root = os.fsencode(tmp_path)
    for d in [b"a", b"a/b"]:
        os.mkdir(root + b"/" + d)
    for f in [b"a-c", b"a.b", b"a0", b"a/b/c", b"a/z"]:
        open(root + b"/" + f, "wb").close()
    assert walk(root) == [b".", b"a", b"a/b", b"a/b/c", b"a/z", b"a-c", b"a.b", b"a0"]


EXCLUDE_CASES = [
    # (patterns, paths that must be missing)
    (("*.log",), {b"a.log", b"sub/b.log", b"dir.log", b"dir.log/inside", b"\xff\xfe.log"}),
    (("cache/*",), {b"cache/x.bin", b"cache/deep", b"cache/deep/y.bin"}),
    (("/tmp",), {b"tmp", b"tmp/t1"}),
    (("tmp",), {b"tmp", b"tmp/t1", b"sub/tmp", b"sub/tmp/keep"}),
    (("sub/tmp",), {b"sub/tmp", b"sub/tmp/keep"}),
    (("/sub/cache/",), {b"sub/cache", b"sub/cache/keep.bin"}),
    (("cache",), {b"cache", b"cache/x.bin", b"cache/deep", b"cache/deep/y.bin", b"sub/cache", b"sub/cache/keep.bin"}),
    (("?.txt",), {b"a.txt", b"b.txt"}),
    (("[ab].*",), {b"a.log", b"a.txt", b"b.txt", b"sub/b.log"}),
    (("*.log", "/tmp"), {b"a.log", b"sub/b.log", b"dir.log", b"dir.log/inside", b"\xff\xfe.log", b"tmp", b"tmp/t1"}),
    (("",), set()),
    (("   ",), set()),
    (("nothing-matches",), set()),
]


@pytest.mark.parametrize("patterns,missing", EXCLUDE_CASES, ids=[" ".join(c[0]) or "empty" for c in EXCLUDE_CASES])
def test_excludes(tree, patterns, missing):
    everything = set(walk(tree))
    walked = walk(tree, *patterns)
    assert set(walked) == everything - missing
    assert walked == tree_order(walked)


def test_excluded_directory_is_not_listed(tree, monkeypatch):
    listed = []
    real = os.scandir

    def scandir(path):
        listed.append(path)
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    walk(tree, "cache")
    assert tree + b"/cache" not in listed
    assert tree + b"/sub" in listed


def test_trailing_slash_pattern_matches_the_relative_path(tree):
    assert b"cache" not in walk(tree, "cache/")


def test_compile_excludes_without_patterns():
    assert compile_excludes(()) is None


def test_symlinks_are_not_followed(tmp_path):
    root = tmp_path / "src"
    outside = tmp_path / "outside"
    (root / "real").mkdir(parents=True)
    (root / "real" / "f").write_bytes(b"x")
    outside.mkdir()
    (outside / "secret").write_bytes(b"s")
    (root / "to-dir").symlink_to("real")
    (root / "to-outside").symlink_to(outside)
    (root / "loop").symlink_to(".")
    (root / "dangling").symlink_to("does-not-exist")
    entries = {rel: st for rel, _, st in Walker(os.fsencode(root))}
    assert sorted(entries) == [b".", b"dangling", b"loop", b"real", b"real/f", b"to-dir", b"to-outside"]
    for link in (b"dangling", b"loop", b"to-dir", b"to-outside"):
        assert stat.S_ISLNK(entries[link].st_mode)


def test_vanished_directory_is_reported(tmp_path):
    root = tmp_path / "src"
    (root / "a").mkdir(parents=True)
    (root / "b").write_bytes(b"b")
    errors: list = []
    walked = []
    for rel, path, _ in Walker(os.fsencode(root), on_error=lambda p, m: errors.append((p, m))):
        walked.append(rel)
        if rel == b"a":
            os.rmdir(path)  # gone before it is listed
    assert walked == [b".", b"a", b"b"]
    assert len(errors) == 1
    assert errors[0][0] == b"a"
    assert "cannot list directory" in errors[0][1]


def test_vanished_file_is_reported(tmp_path):
    root = tmp_path / "src"
    root.mkdir()
    for name in ("a", "b", "c"):
        (root / name).write_bytes(b"x")
    errors: list = []
    walked = []
    for rel, _, _ in Walker(os.fsencode(root), on_error=lambda p, m: errors.append((p, m))):
        walked.append(rel)
        if rel == b"a":
            (root / "b").unlink()  # listed already, gone before its stat
    assert walked == [b".", b"a", b"c"]
    assert [p for p, _ in errors] == [b"b"]
    assert "cannot stat" in errors[0][1]


_UNREADABLE_WALK = """
import os, sys, json
from sidecar.repo.walk import Walker
errors = []
walker = Walker(os.fsencode(sys.argv[1]), on_error=lambda p, m: errors.append((p.decode(), m)))
walked = [rel.decode() for rel, _, _ in walker]
print(json.dumps({"walked": walked, "errors": errors}))
"""


def test_unreadable_directory_is_reported(tmp_path):
    """Runs the walk as an unprivileged user (root could read the directory anyway)."""
    base = tmp_path / "walk"
    root = base / "src"
    (root / "locked").mkdir(parents=True)
    (root / "locked" / "hidden").write_bytes(b"x")
    (root / "z").write_bytes(b"z")
    (root / "locked").chmod(0)
    cmd = [sys.executable, "-c", _UNREADABLE_WALK, str(root)]
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        assert setpriv, "setpriv (util-linux) is needed to run this test as root"
        for parent in [tmp_path, *tmp_path.parents]:
            parent.chmod(parent.stat().st_mode | 0o005)  # let the unprivileged user reach the tree
        cmd = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", "--", *cmd]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT).stdout
    finally:
        (root / "locked").chmod(0o755)
    result = json.loads(out)
    assert result["walked"] == [".", "locked", "z"]
    assert len(result["errors"]) == 1
    assert result["errors"][0][0] == "locked"
    assert "cannot list directory" in result["errors"][0][1]
    assert "ermission" in result["errors"][0][1]
