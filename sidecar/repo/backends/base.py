"""The protocol every storage back end implements, and the factory by URL."""

from __future__ import annotations

from collections.abc import Iterator
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
    """

    location: str
    staging_dir: Path

    def put(self, name: str, data: bytes | Path) -> None: ...

    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes: ...

    def list(self, prefix: str) -> Iterator[tuple[str, int]]: ...

    def delete(self, name: str) -> None: ...

    def exists(self, name: str) -> bool: ...


def open_backend(url: str) -> Backend:
    """A back end for a repository URL: a local path (or file://path)."""
    if url.startswith("s3://"):
        raise InvalidRequest("S3 repositories are not supported yet by this build (use a local path)")
    from sidecar.repo.backends.local import LocalBackend

    path = url[len("file://") :] if url.startswith("file://") else url
    if not path:
        raise InvalidRequest("empty repository path")
    return LocalBackend(Path(path))
