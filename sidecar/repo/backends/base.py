"""The protocol every storage back end implements, and the factory by URL."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Protocol

from sidecar.errors import BackupCorrupted, InvalidRequest


class ObjectNotFound(BackupCorrupted):
    """A named object is not in the back end."""


class Backend(Protocol):
    """Immutable, content-addressed objects named like `data/ab/ab12…`.

    `put` with a `Path` hands the file over: the back end may move it.
    `staging_dir` is where writers prepare files for `put` (same file system
    as the repository for the local back end, so `put` is a rename).
    `get(..., cache=True)` marks a range worth keeping in a local cache (tree
    groups), and `put(..., cache_ranges=...)` the ranges of a new pack worth
    keeping from the start; back ends without a cache ignore both.
    """

    location: str
    staging_dir: Path

    def put(self, name: str, data: bytes | Path, *, cache_ranges: Sequence[tuple[int, int]] = ()) -> None: ...

    def get(self, name: str, offset: int = 0, length: int | None = None, *, cache: bool = False) -> bytes: ...

    def list(self, prefix: str) -> Iterator[tuple[str, int]]: ...

    def delete(self, name: str) -> None: ...

    def exists(self, name: str) -> bool: ...


def open_backend(url: str, env: Mapping[str, str] | None = None) -> Backend:
    """A back end for a repository URL: a local path (or file://path), or s3://bucket/prefix
    (settings from the environment: sidecar.repo.backends.s3) behind a metadata cache in the
    data directory (BACKUP_CACHE_MAX_MB, default 2048)."""
    env = os.environ if env is None else env
    if url.startswith("s3://"):
        from sidecar.config import default_data_dir
        from sidecar.repo.backends.cache import DEFAULT_MAX_BYTES, CachedBackend, cache_dir_for
        from sidecar.repo.backends.s3 import S3Backend, S3Settings

        s3 = S3Backend(S3Settings.from_url(url, env))
        base = Path(env.get("BACKUP_DATA_DIR") or default_data_dir(env)) / "cache"
        limit = (env.get("BACKUP_CACHE_MAX_MB") or "").strip()
        if limit and not limit.isdigit():
            raise InvalidRequest(f"BACKUP_CACHE_MAX_MB: must be a whole number of MiB, got {limit!r}")
        max_bytes = int(limit) << 20 if limit else DEFAULT_MAX_BYTES
        return CachedBackend(s3, cache_dir_for(s3.location, base), max_bytes)
    from sidecar.repo.backends.local import LocalBackend

    path = url[len("file://") :] if url.startswith("file://") else url
    if not path:
        raise InvalidRequest("empty repository path")
    return LocalBackend(Path(path))
