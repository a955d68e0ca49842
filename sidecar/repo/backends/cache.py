"""A local cache of a remote repository's metadata, so listing snapshots and an
incremental backup do not download it again.

Cached: whole `index/`, `snapshots/` and `keys/` objects — each named by the
SHA-256 of its bytes, which a cached copy is checked against on every read —
and the byte ranges of tree groups a caller asks to cache (`get(...,
cache=True)`, or `put(..., cache_ranges=...)` as a new tree pack is stored),
kept with their own SHA-256. Everything else (data packs,
locks, config) always comes from the back end. Files are written under a
temporary name and renamed, so processes sharing the cache never see half a
file; the whole directory can be deleted at any time. Least recently used
entries go when the cache is over `max_bytes`.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import secrets
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from sidecar.repo.backends.base import Backend

log = logging.getLogger(__name__)

WHOLE = ("index/", "snapshots/", "keys/")
DEFAULT_MAX_BYTES = 2 << 30


class CachedBackend:
    def __init__(self, inner: Backend, cache_dir: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.inner = inner
        self.location = inner.location
        self.staging_dir = inner.staging_dir
        self.dir = cache_dir
        self.max_bytes = max_bytes
        self.hits = 0
        self.misses = 0
        self._size: int | None = None
        self._lock = threading.Lock()

    # ---- the protocol --------------------------------------------------------------------------

    def put(self, name: str, data: bytes | Path, *, cache_ranges: Sequence[tuple[int, int]] = ()) -> None:
        kept = []
        if cache_ranges and isinstance(data, Path):  # read before the back end takes the file
            with open(data, "rb") as f:
                kept = [(offset, length, os.pread(f.fileno(), length, offset)) for offset, length in cache_ranges]
        self.inner.put(name, data)
        if not isinstance(data, Path) and name.startswith(WHOLE):
            self._store(self._whole_path(name), bytes(data))
        for offset, length, chunk in kept:
            self._store(self._range_path(name, offset, length), hashlib.sha256(chunk).digest() + chunk)

    def get(self, name: str, offset: int = 0, length: int | None = None, *, cache: bool = False) -> bytes:
        if name.startswith(WHOLE):
            path = self._whole_path(name)
            data = self._load(path, expected=name.rsplit("/", 1)[1])
            if data is None:
                data = self.inner.get(name)
                if hashlib.sha256(data).hexdigest() == name.rsplit("/", 1)[1]:
                    self._store(path, data)
            if length is None:
                return data[offset:]
            return (
                self.inner.get(name, offset, length) if offset + length > len(data) else data[offset : offset + length]
            )
        if cache and length is not None:
            path = self._range_path(name, offset, length)
            data = self._load_range(path)
            if data is None:
                data = self.inner.get(name, offset, length)
                self._store(path, hashlib.sha256(data).digest() + data)
            return data
        return self.inner.get(name, offset, length)

    def list(self, prefix: str) -> Iterator[tuple[str, int]]:
        return self.inner.list(prefix)

    def delete(self, name: str) -> None:
        self.inner.delete(name)
        if name.startswith(WHOLE):
            with contextlib.suppress(FileNotFoundError):
                self._whole_path(name).unlink()

    def exists(self, name: str) -> bool:
        return self.inner.exists(name)

    def __getattr__(self, attr: str):  # type: ignore[no-untyped-def]
        return getattr(self.inner, attr)  # back-end specific extras (create_bucket)

    # ---- files ---------------------------------------------------------------------------------

    def _whole_path(self, name: str) -> Path:
        return self.dir / name

    def _range_path(self, name: str, offset: int, length: int) -> Path:
        return self.dir / "ranges" / f"{name.replace('/', '_')}-{offset}-{length}"

    def _load(self, path: Path, expected: str) -> bytes | None:
        """A whole object, checked against the SHA-256 its name is."""
        return self._read(path, lambda raw: raw if hashlib.sha256(raw).hexdigest() == expected else None)

    def _load_range(self, path: Path) -> bytes | None:
        """A range, stored after the SHA-256 of its bytes."""

        def checked(raw: bytes) -> bytes | None:
            data = raw[32:]
            return data if len(raw) >= 32 and hashlib.sha256(data).digest() == raw[:32] else None

        return self._read(path, checked)

    def _read(self, path: Path, checked: Callable[[bytes], bytes | None]) -> bytes | None:
        try:
            raw = path.read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            self.misses += 1
            return None
        data = checked(raw)
        if data is None:
            log.warning("cache: %s is damaged; reading it from the repository again", path)
            path.unlink(missing_ok=True)
            self.misses += 1
            return None
        self._touch(path)
        self.hits += 1
        return data

    @staticmethod
    def _touch(path: Path) -> None:
        with contextlib.suppress(OSError):
            os.utime(path)  # its last use, for eviction

    def _store(self, path: Path, data: bytes) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except OSError as exc:  # a cache that cannot be written is only slower
            log.debug("cache: cannot write %s: %s", path, exc)
            return
        with self._lock:
            if self._size is None:
                self._size = sum(size for _, size, _ in self._entries())
            else:
                self._size += len(data)
            over = self._size > self.max_bytes
        if over:
            self._evict()

    def _entries(self) -> Iterator[tuple[Path, int, float]]:
        for dirpath, _dirs, files in os.walk(self.dir):
            for fname in files:
                path = Path(dirpath) / fname
                with contextlib.suppress(FileNotFoundError):
                    st = path.stat()
                    yield path, st.st_size, st.st_mtime

    def _evict(self) -> None:
        """Remove the least recently used entries down to 90 % of the bound."""
        entries = sorted(self._entries(), key=lambda e: e[2])
        total = sum(size for _, size, _ in entries)
        target = self.max_bytes * 0.9
        for path, size, _ in entries:
            if total <= target:
                break
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                total -= size
        with self._lock:
            self._size = total


def cache_dir_for(location: str, base: Path) -> Path:
    return base / hashlib.sha256(location.encode()).hexdigest()[:16]
