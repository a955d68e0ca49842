"""Deterministic test data shaped like an app's volumes, with every awkward case.

    python bench/dataset.py DIR --size-mb 50 [--seed 1]     create DIR
    python bench/dataset.py DIR --mutate [--seed 2]          change it like a day of use

Used by the tests, the demo and the benchmark. The same arguments always give
the same bytes and metadata. Layout:
  html/     many small text files (compressible, with shared passages)
  uploads/  larger random files (incompressible), one larger than a chunk
  db/       a SQL dump (one big file of similar lines)
  odd/      the cases a backup must keep: symlinks (also dangling and to
            directories), hard links, empty file and directory, modes
            0600/0755/setuid/setgid/sticky, names with spaces, non-ASCII and
            non-UTF-8 bytes, a 255-byte name, a sparse file, a fifo, xattrs,
            and (as root) a character device and numeric owners 33 and 999.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import shutil
import stat
import sys

WORDS = (
    "the function return value array string object class public private static include require echo "
    "foreach while if else null true false post user meta option term query cache theme plugin admin "
    "settings database table index select insert update delete where order limit join html div span"
).split()
_MTIME = 1_700_000_000_123_456_789  # fixed, with nanoseconds


def _text(rng: random.Random, size: int) -> bytes:
    out, n = [], 0
    while n < size:
        line = " " * (4 * rng.randrange(4)) + " ".join(rng.choice(WORDS) for _ in range(rng.randrange(3, 12))) + "\n"
        out.append(line)
        n += len(line)
    return "".join(out)[:size].encode()


def _sql(rng: random.Random, i: int) -> bytes:
    words = " ".join(rng.choice(WORDS) for _ in range(rng.randrange(5, 30)))
    return f"INSERT INTO `posts` VALUES ({i},{rng.randrange(50)},'{words}','post-{rng.randrange(10**9)}');\n".encode()


def _write(path: bytes, data: bytes, mode: int = 0o644, owner: int | None = None, mtime: int = _MTIME) -> None:
    with open(path, "wb") as f:
        f.write(data)
    if owner is not None and os.geteuid() == 0:
        os.chown(path, owner, owner)
    os.chmod(path, mode)
    os.utime(path, ns=(mtime, mtime))


def _xattr(path: bytes, name: str, value: bytes) -> None:
    with contextlib.suppress(OSError):  # no user xattrs on this file system: the case is simply absent
        os.setxattr(path, name, value, follow_symlinks=False)


def create(root: str, size_mb: float = 20, seed: int = 1) -> None:
    rng = random.Random(seed)
    base = os.fsencode(root)
    if os.path.exists(base) and os.listdir(base):
        raise SystemExit(f"{root} exists and is not empty")
    total = int(size_mb * 1024 * 1024)
    pool = [_text(rng, 32 * 1024) for _ in range(32)]
    # html: small text files built from shared passages
    n, i = 0, 0
    while n < total * 0.45:
        d = os.path.join(base, b"html", b"plugins", b"p%02d" % (i // 200), b"inc%d" % (i // 20 % 10))
        os.makedirs(d, exist_ok=True)
        size = min(int(rng.lognormvariate(8.0, 1.1)) + 1, 256 * 1024)
        piece = rng.choice(pool)
        off = rng.randrange(len(piece))
        data = (piece[off:] + piece)[:size]
        _write(os.path.join(d, b"file%05d.php" % i), data, owner=33, mtime=_MTIME + i)
        n += size
        i += 1
    # uploads: random bytes, one file larger than the biggest chunk
    up = os.path.join(base, b"uploads", b"2026")
    os.makedirs(up)
    budget = int(total * 0.35)
    sizes = [min(budget, 5 * 1024 * 1024 + 12345)]
    while sum(sizes) < budget:
        sizes.append(min(rng.randrange(64 * 1024, 2 * 1024 * 1024), budget - sum(sizes)) or 1)
    for k, size in enumerate(sizes):
        _write(os.path.join(up, b"image-%03d.jpg" % k), rng.randbytes(size), owner=33)
    # db: one dump
    os.makedirs(os.path.join(base, b"db"))
    lines, n = [], 0
    while n < total * 0.2:
        lines.append(_sql(rng, len(lines)))
        n += len(lines[-1])
    _write(os.path.join(base, b"db", b"dump.sql"), b"".join(lines), mode=0o600, owner=999)
    _odd_cases(os.path.join(base, b"odd"))


def _odd_cases(odd: bytes) -> None:
    os.makedirs(os.path.join(odd, b"empty dir"))
    _write(os.path.join(odd, b"empty file"), b"")
    _write(os.path.join(odd, "naïve café ✓.txt".encode()), b"non-ascii name\n")
    _write(os.path.join(odd, b"latin1-\xe9t\xe9.txt"), b"a name that is not UTF-8\n")
    _write(os.path.join(odd, b"n" * 251 + b".txt"), b"a 255-byte name\n")
    _write(os.path.join(odd, b"secret.php"), b"<?php define('DB_PASSWORD', 'x');\n", mode=0o600)
    _write(os.path.join(odd, b"run.sh"), b"#!/bin/sh\necho ok\n", mode=0o755)
    _write(os.path.join(odd, b"setuid-tool"), b"\x7fELF not really\n", mode=0o4755)
    _write(os.path.join(odd, b"setgid-tool"), b"\x7fELF not really\n", mode=0o2750)
    os.symlink(b"run.sh", os.path.join(odd, b"link-to-run"))
    os.symlink(b"../nowhere/at/all", os.path.join(odd, b"dangling-link"))
    os.symlink(b"empty dir", os.path.join(odd, b"link-to-dir"))
    os.link(os.path.join(odd, b"run.sh"), os.path.join(odd, b"hardlink-to-run.sh"))
    sparse = os.path.join(odd, b"sparse.img")
    with open(sparse, "wb") as f:
        f.seek(3 * 1024 * 1024)
        f.write(b"end of a sparse file\n")
    os.utime(sparse, ns=(_MTIME, _MTIME))
    os.mkfifo(os.path.join(odd, b"a-fifo"), 0o640)
    tagged = os.path.join(odd, b"tagged.txt")
    _write(tagged, b"a file with extended attributes\n")
    _xattr(tagged, "user.comment", b"backed up with its xattrs")
    _xattr(tagged, "user.binary", bytes(range(256)))
    if os.geteuid() == 0:
        os.mknod(os.path.join(odd, b"null-device"), 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    sticky = os.path.join(odd, b"sticky-tmp")
    os.makedirs(sticky)
    os.chmod(sticky, 0o1777)
    for d in (odd, sticky, os.path.join(odd, b"empty dir")):
        os.utime(d, ns=(_MTIME, _MTIME))


def mutate(root: str, seed: int = 2) -> None:
    """About 2 % of the data changes; plus metadata-only and type changes."""
    rng = random.Random(seed)
    base = os.fsencode(root)
    files = sorted(
        os.path.join(d, f) for d, _, names in os.walk(os.path.join(base, b"html")) for f in names if f.endswith(b".php")
    )
    for p in rng.sample(files, max(1, len(files) // 100)):
        with open(p, "ab") as f:
            f.write(_text(rng, rng.randrange(100, 4000)))
    for p in rng.sample(files, min(10, len(files))):
        if os.path.exists(p):
            os.remove(p)
    new_dir = os.path.join(base, b"html", b"new-%d" % seed)
    os.makedirs(new_dir, exist_ok=True)
    for k in range(15):
        _write(os.path.join(new_dir, b"added-%d.php" % k), _text(rng, rng.randrange(1000, 30000)))
    ups = sorted(os.listdir(os.path.join(base, b"uploads", b"2026")))
    for name in rng.sample(ups, min(2, len(ups))):
        p = os.path.join(base, b"uploads", b"2026", name)
        _write(p, rng.randbytes(os.path.getsize(p)), owner=33)
    dump = os.path.join(base, b"db", b"dump.sql")
    with open(dump, "rb") as f:
        lines = f.read().splitlines(keepends=True)
    for k in rng.sample(range(len(lines)), max(1, len(lines) // 200)):
        lines[k] = _sql(rng, k)
    lines += [_sql(rng, len(lines) + k) for k in range(max(1, len(lines) // 100))]
    _write(dump, b"".join(lines), mode=0o600, owner=999, mtime=_MTIME + 86_400_000_000_000)
    odd = os.path.join(base, b"odd")
    os.chmod(os.path.join(odd, b"secret.php"), 0o640)  # metadata only
    os.utime(os.path.join(odd, b"run.sh"), ns=(_MTIME + 5, _MTIME + 5))  # mtime only
    toggled = os.path.join(odd, b"link-to-run")  # a symlink (or file) becomes a directory, a directory a symlink
    if os.path.isdir(toggled) and not os.path.islink(toggled):
        shutil.rmtree(toggled)
        os.symlink(b"run.sh", toggled)
    else:
        os.remove(toggled)
        os.makedirs(os.path.join(toggled, b"inside"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dir")
    ap.add_argument("--size-mb", type=float, default=20)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--mutate", action="store_true")
    a = ap.parse_args()
    if a.mutate:
        mutate(a.dir, 2 if a.seed is None else a.seed)
    else:
        create(a.dir, a.size_mb, 1 if a.seed is None else a.seed)


if __name__ == "__main__":
    sys.exit(main())
