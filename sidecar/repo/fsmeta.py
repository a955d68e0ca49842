"""File system metadata <-> tree entries: what a backup records about an entry
(type, mode, owner, times, xattrs) and how a restore puts it back."""

from __future__ import annotations

import base64
import contextlib
import errno
import os
import stat
from collections.abc import Callable

from sidecar.repo import tree

_NO_XATTRS = (errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS)
_FORMATS = {
    tree.DIR: stat.S_IFDIR,
    tree.SYMLINK: stat.S_IFLNK,
    tree.FIFO: stat.S_IFIFO,
    tree.SOCKET: stat.S_IFSOCK,
}


def entry_from_stat(rel: bytes, st: os.stat_result) -> dict:
    """A tree entry for an lstat result, without content (files) or link target."""
    entry: dict = {}
    tree.put_name(entry, "path", rel)
    mode = st.st_mode
    if stat.S_ISREG(mode):
        entry["type"] = tree.FILE
    elif stat.S_ISDIR(mode):
        entry["type"] = tree.DIR
    elif stat.S_ISLNK(mode):
        entry["type"] = tree.SYMLINK
    elif stat.S_ISFIFO(mode):
        entry["type"] = tree.FIFO
    elif stat.S_ISSOCK(mode):
        entry["type"] = tree.SOCKET
    else:
        entry["type"] = tree.DEVICE
        entry["device"] = "char" if stat.S_ISCHR(mode) else "block"
        entry["rdev"] = [os.major(st.st_rdev), os.minor(st.st_rdev)]
    entry["mode"] = stat.S_IMODE(mode)
    entry["uid"] = st.st_uid
    entry["gid"] = st.st_gid
    entry["mtime_ns"] = st.st_mtime_ns
    if entry["type"] == tree.FILE:
        entry["size"] = st.st_size
        entry["inode"] = st.st_ino
        entry["ctime_ns"] = st.st_ctime_ns
    return entry


# a regular file's listing line up to its last stat field (`file_line_head`)
FILE_HEAD = b'{"path":"%s","type":"file","mode":%d,"uid":%d,"gid":%d,"mtime_ns":%d,"size":%d,"inode":%d,"ctime_ns":%d'


def file_line_head(rel: bytes, st: os.stat_result) -> bytes:
    """`encode_entry(entry_from_stat(rel, st))` of a regular file up to its last stat
    field (no closing brace), for a `rel` that JSON holds as is (no quote, backslash
    or control character; valid UTF-8). A third of the cost of building the entry."""
    return FILE_HEAD % (
        rel,
        stat.S_IMODE(st.st_mode),
        st.st_uid,
        st.st_gid,
        st.st_mtime_ns,
        st.st_size,
        st.st_ino,
        st.st_ctime_ns,
    )


class XattrReader:
    """Reads extended attributes, remembering file systems that have none."""

    def __init__(self) -> None:
        self._unsupported: set[int] = set()

    def read(self, path: bytes, device: int) -> list[list[str]] | None:
        if device in self._unsupported:
            return None
        try:
            names = os.listxattr(path, follow_symlinks=False)
        except OSError as exc:
            if exc.errno in _NO_XATTRS:
                self._unsupported.add(device)
            return None
        if not names:
            return None
        out = []
        for name in sorted(names):
            try:
                value = os.getxattr(path, name, follow_symlinks=False)
            except OSError:
                continue  # unreadable (e.g. a security.* name we may not read): skip it
            out.append(
                [base64.b64encode(name.encode("utf-8", "surrogateescape")).decode(), base64.b64encode(value).decode()]
            )
        return out or None


def decode_xattrs(entry: dict) -> list[tuple[str, bytes]]:
    return [
        (base64.b64decode(n).decode("utf-8", "surrogateescape"), base64.b64decode(v))
        for n, v in entry.get("xattrs", ())
    ]


class MetadataWriter:
    """Applies owner, xattrs, mode and mtime. Owners are set only as root;
    failures go to `warn(path, message)` and never stop a restore."""

    def __init__(self, warn: Callable[[bytes, str], None]) -> None:
        self._warn = warn
        self._root = os.geteuid() == 0

    def apply_fd(self, fd: int, path: bytes, entry: dict) -> None:
        """For a regular file being written: chown, xattrs, chmod, times."""
        if self._root:
            os.fchown(fd, entry["uid"], entry["gid"])
        if "xattrs" in entry:  # a fresh file has none to remove
            self._xattrs(fd, path, entry, fresh=True)
        os.fchmod(fd, entry["mode"])  # after chown: chown clears setuid/setgid
        mtime = entry["mtime_ns"]
        os.utime(fd, ns=(mtime, mtime))

    def apply_path(self, path: bytes, entry: dict) -> None:
        """For directories, symlinks and special files, by path. Never follows a
        symlink: what is on disk must still be the entry's type (lstat)."""
        try:
            st = os.lstat(path)
            if stat.S_IFMT(st.st_mode) != _FORMATS.get(entry["type"], stat.S_IFMT(st.st_mode)):
                self._warn(path, "changed type during the restore; metadata not set")
                return
            is_link = stat.S_ISLNK(st.st_mode)
            if self._root:
                os.chown(path, entry["uid"], entry["gid"], follow_symlinks=False)
            if not is_link:
                self._xattrs(path, path, entry)
                os.chmod(path, entry["mode"])  # lstat above: not a symlink, so this touches the entry itself
            mtime = entry["mtime_ns"]
            os.utime(path, ns=(mtime, mtime), follow_symlinks=False)
        except (OSError, NotImplementedError) as exc:
            self._warn(path, f"cannot set metadata: {getattr(exc, 'strerror', None) or exc}")

    def _xattrs(self, target: int | bytes, path: bytes, entry: dict, fresh: bool = False) -> None:
        """Make the entry's extended attributes exactly those of the snapshot
        (a `fresh` file has none to remove)."""
        wanted = dict(decode_xattrs(entry))
        present: list[str] = []
        if not fresh:
            with contextlib.suppress(OSError):
                present = (
                    os.listxattr(target) if isinstance(target, int) else os.listxattr(target, follow_symlinks=False)
                )
        for name in present:
            if name not in wanted and name != "security.selinux":  # the label belongs to the host's policy
                try:
                    if isinstance(target, int):
                        os.removexattr(target, name)
                    else:
                        os.removexattr(target, name, follow_symlinks=False)
                except OSError as exc:
                    self._warn(path, f"cannot remove xattr {name}: {exc.strerror}")
        for name, value in wanted.items():
            try:
                if isinstance(target, int):
                    os.setxattr(target, name, value)
                else:
                    os.setxattr(target, name, value, follow_symlinks=False)
            except OSError as exc:
                self._warn(path, f"cannot set xattr {name}: {exc.strerror}")
