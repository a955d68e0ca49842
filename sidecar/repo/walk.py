"""Walk a directory in tree order: depth first, siblings sorted by name bytes."""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable, Iterator
from fnmatch import translate
from operator import attrgetter
from stat import S_ISDIR

_name = attrgetter("name")


def compile_excludes(patterns: tuple[str, ...]) -> Callable[[bytes, bytes], bool] | None:
    """Globs relative to the source root. A pattern with a `/` inside or at the start
    matches the whole relative path (`cache/*`, `/tmp`); one without matches any
    entry's name (`*.log`, `node_modules/`: a trailing `/` is ignored)."""
    if not patterns:
        return None
    by_name, by_path = [], []
    for pattern in patterns:
        pattern = pattern.strip()
        anchored = pattern.startswith("/")
        pattern = pattern.strip("/")  # a trailing "/" (as in "node_modules/") is ignored
        if not pattern:
            continue
        if anchored or "/" in pattern:
            by_path.append(translate(pattern))
        else:
            by_name.append(translate(pattern))
    name_re = re.compile("|".join(by_name)) if by_name else None
    path_re = re.compile("|".join(by_path)) if by_path else None

    def excluded(rel: bytes, name: bytes) -> bool:
        if name_re and name_re.match(name.decode("utf-8", "surrogateescape")):
            return True
        return bool(path_re and path_re.match(rel.decode("utf-8", "surrogateescape")))

    return excluded


class Walker:
    """Yields (relative path, absolute path, lstat) for the root (".") and all below.
    Entries that cannot be read are reported to `on_error(path, message)` and skipped."""

    def __init__(
        self, root: bytes, excludes: tuple[str, ...] = (), on_error: Callable[[bytes, str], None] = lambda p, m: None
    ) -> None:
        self.root = root
        self.excluded = compile_excludes(excludes)
        self.on_error = on_error

    def _children(self, path: bytes, rel: bytes) -> Iterator[tuple[bytes, bytes, os.stat_result]]:
        try:
            with os.scandir(path) as it:
                entries = sorted(it, key=_name)
        except OSError as exc:
            self.on_error(rel, f"cannot list directory: {exc.strerror}")
            return iter(())
        return self._stat_all(entries, rel)

    def _stat_all(self, entries: list[os.DirEntry[bytes]], rel: bytes) -> Iterator[tuple[bytes, bytes, os.stat_result]]:
        prefix = b"" if rel == b"." else rel + b"/"
        excluded = self.excluded
        for e in entries:
            child_rel = prefix + e.name
            if excluded is not None and excluded(child_rel, e.name):
                continue
            try:
                st = e.stat(follow_symlinks=False)
            except OSError as exc:
                self.on_error(child_rel, f"cannot stat: {exc.strerror}")
                continue
            yield child_rel, e.path, st

    def __iter__(self) -> Iterator[tuple[bytes, bytes, os.stat_result]]:
        st = os.lstat(self.root)
        yield b".", self.root, st
        yield from self._below(self.root, b".")

    def iter_from(self, start: bytes) -> Iterator[tuple[bytes, bytes, os.stat_result]]:
        """The entries at or after the relative path `start` in tree order (the walk's tail, as
        `__iter__` would yield it): `start`'s ancestors are entered, not yielded. `start` need
        not exist any more."""
        if start == b".":
            return iter(self)
        return self._from(self.root, b".", start.split(b"/"))

    def _from(self, path: bytes, rel: bytes, parts: list[bytes]) -> Iterator[tuple[bytes, bytes, os.stat_result]]:
        name, rest = parts[0], parts[1:]
        for child_rel, child_path, st in self._children(path, rel):
            child_name = child_rel[child_rel.rfind(b"/") + 1 :]
            if child_name < name:
                continue
            if child_name == name and rest:  # an ancestor of `start`: before it, so not yielded
                if stat.S_ISDIR(st.st_mode):
                    yield from self._from(child_path, child_rel, rest)
                continue
            yield child_rel, child_path, st
            if stat.S_ISDIR(st.st_mode):
                yield from self._below(child_path, child_rel)

    def iter_before(self, start: bytes) -> Iterator[tuple[bytes, bytes, os.stat_result]]:
        """The entries before the relative path `start` in tree order (the walk's head, the
        complement of `iter_from`): `start`'s ancestors are yielded, as they come before it.
        Nothing after `start` is entered or stat-ed."""
        if start == b".":
            return iter(())
        return self._before_root(start.split(b"/"))

    def _before_root(self, parts: list[bytes]) -> Iterator[tuple[bytes, bytes, os.stat_result]]:
        yield b".", self.root, os.lstat(self.root)
        yield from self._until(self.root, b".", parts)

    def _until(self, path: bytes, rel: bytes, parts: list[bytes]) -> Iterator[tuple[bytes, bytes, os.stat_result]]:
        name, rest = parts[0], parts[1:]
        for child_rel, child_path, st in self._children(path, rel):
            child_name = child_rel[child_rel.rfind(b"/") + 1 :]
            if child_name > name or (child_name == name and not rest):
                return
            yield child_rel, child_path, st
            if S_ISDIR(st.st_mode):
                if child_name == name:  # an ancestor of `start`: only what comes before it
                    yield from self._until(child_path, child_rel, rest)
                    return
                yield from self._below(child_path, child_rel)
            elif child_name == name:
                return

    def _below(self, path: bytes, rel: bytes) -> Iterator[tuple[bytes, bytes, os.stat_result]]:
        stack = [self._children(path, rel)]
        while stack:
            for entry in stack[-1]:
                yield entry
                if S_ISDIR(entry[2].st_mode):
                    stack.append(self._children(entry[1], entry[0]))
                    break
            else:
                stack.pop()
