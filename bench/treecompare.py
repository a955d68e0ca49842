"""Say whether two directory trees are identical the way a restore must make them.

    python bench/treecompare.py ORIGINAL RESTORED [--no-owner] [--no-mtime]

Compares every entry, the root included: type, permission bits (setuid,
setgid, sticky too), numeric owner, mtime in nanoseconds (files and
directories), size and SHA-256 of content, symlink target, device numbers,
extended attributes, and that entries hard-linked together in ORIGINAL are
hard-linked together in RESTORED. Exit 0 only when identical.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import stat
import sys


def _digest(path: bytes) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def scan(root: str | bytes, owner: bool = True, mtime: bool = True, mtime_unit_ns: int = 1) -> tuple[dict, list]:
    root_b = os.fsencode(root)
    entries: dict[bytes, dict] = {}
    inodes: dict[tuple[int, int], list[bytes]] = {}
    todo = [b"."]
    while todo:
        rel = todo.pop()
        path = root_b if rel == b"." else os.path.join(root_b, rel)
        st = os.lstat(path)
        e: dict = {"type": stat.S_IFMT(st.st_mode), "mode": stat.S_IMODE(st.st_mode)}
        try:
            names = sorted(os.listxattr(path, follow_symlinks=False))
            xattrs = {n: os.getxattr(path, n, follow_symlinks=False) for n in names}
            if xattrs:
                e["xattrs"] = xattrs
        except OSError:
            pass
        if owner:
            e["owner"] = (st.st_uid, st.st_gid)
        if stat.S_ISLNK(st.st_mode):
            e["target"] = os.readlink(path)
            e.pop("mode")  # symlink permissions mean nothing on Linux
        elif stat.S_ISREG(st.st_mode):
            e["size"] = st.st_size
            e["sha256"] = _digest(path)
            if mtime:
                e["mtime"] = st.st_mtime_ns // mtime_unit_ns
            if st.st_nlink > 1:
                inodes.setdefault((st.st_dev, st.st_ino), []).append(rel)
        elif stat.S_ISDIR(st.st_mode):
            if mtime:
                e["mtime"] = st.st_mtime_ns // mtime_unit_ns
            for name in os.listdir(path):
                todo.append(name if rel == b"." else os.path.join(rel, name))
        elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
            e["rdev"] = (os.major(st.st_rdev), os.minor(st.st_rdev))
        entries[rel] = e
    groups = sorted(sorted(g) for g in inodes.values() if len(g) > 1)
    return entries, groups


def compare(
    original: str | bytes, restored: str | bytes, owner: bool = True, mtime: bool = True, mtime_unit_ns: int = 1
) -> list[str]:
    """Differences as readable lines; empty when the trees are identical. `mtime_unit_ns`
    compares mtimes at a coarser resolution (10**9: whole seconds, as Docker's archive API has them)."""
    want, want_links = scan(original, owner, mtime, mtime_unit_ns)
    got, got_links = scan(restored, owner, mtime, mtime_unit_ns)
    problems = []
    for rel in sorted(set(want) | set(got)):
        shown = rel.decode("utf-8", "backslashreplace")
        if rel not in got:
            problems.append(f"missing   {shown}")
        elif rel not in want:
            problems.append(f"extra     {shown}")
        elif want[rel] != got[rel]:
            keys = sorted(k for k in set(want[rel]) | set(got[rel]) if want[rel].get(k) != got[rel].get(k))
            problems.append(f"differs   {shown}: {', '.join(keys)}")
    if want_links != got_links:
        problems.append(f"hard links differ: {want_links} vs {got_links}")
    return problems


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("original")
    ap.add_argument("restored")
    ap.add_argument("--no-owner", action="store_true")
    ap.add_argument("--no-mtime", action="store_true")
    a = ap.parse_args()
    problems = compare(a.original, a.restored, owner=not a.no_owner, mtime=not a.no_mtime)
    for line in problems[:50]:
        print(line)
    print(f"{len(problems)} differences")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
