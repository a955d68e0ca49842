"""Repository on a local (or mounted) file system."""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator, Sequence
from pathlib import Path

from sidecar.errors import disk_full
from sidecar.repo.backends.base import ObjectNotFound


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalBackend:
    """Objects are files under `root`; every write is temp file, fsync, rename."""

    def __init__(self, root: Path) -> None:
        self.root = root.absolute()
        self.location = str(self.root)
        self.staging_dir = self.root / "tmp"
        self._made_dirs: set[Path] = set()

    def _path(self, name: str) -> Path:
        if name.startswith("/") or ".." in name.split("/"):
            raise ValueError(f"bad object name {name!r}")
        return self.root / name

    def _parent(self, path: Path) -> None:
        parent = path.parent
        if parent not in self._made_dirs:
            parent.mkdir(parents=True, exist_ok=True)
            self._made_dirs.add(parent)

    def put(self, name: str, data: bytes | Path, *, cache_ranges: Sequence[tuple[int, int]] = ()) -> None:
        dest = self._path(name)
        self._parent(dest)
        try:
            if isinstance(data, Path):
                src = data
            else:
                self.staging_dir.mkdir(exist_ok=True)
                src = self.staging_dir / f"put-{secrets.token_hex(8)}"
                try:
                    with open(src, "wb") as f:
                        f.write(data)
                        f.flush()
                        os.fsync(f.fileno())
                except BaseException:
                    src.unlink(missing_ok=True)
                    raise
            os.replace(src, dest)
            fsync_dir(dest.parent)
        except OSError as exc:
            raise disk_full(exc, f"{name} in {self.location}") or exc from None

    def get(self, name: str, offset: int = 0, length: int | None = None, *, cache: bool = False) -> bytes:
        try:
            with open(self._path(name), "rb", buffering=0) as f:
                if length is None:
                    f.seek(offset)
                    return f.read()
                data = os.pread(f.fileno(), length, offset)
        except (FileNotFoundError, NotADirectoryError):
            raise ObjectNotFound(f"{name} is missing from {self.location}") from None
        if len(data) != length:
            raise ObjectNotFound(f"{name} is truncated (wanted {length} bytes at {offset}, got {len(data)})")
        return data

    def list(self, prefix: str) -> Iterator[tuple[str, int]]:
        base = self._path(prefix.rstrip("/")) if prefix else self.root
        if not base.is_dir():
            return
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames.sort()
            rel = os.path.relpath(dirpath, self.root)
            for fname in sorted(filenames):
                try:
                    size = os.lstat(os.path.join(dirpath, fname)).st_size
                except FileNotFoundError:
                    continue
                yield (fname if rel == "." else f"{rel}/{fname}"), size

    def delete(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(name).unlink()

    def exists(self, name: str) -> bool:
        return self._path(name).exists()
