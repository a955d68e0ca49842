"""Reading and writing Docker volumes.

Two ways, same snapshot tree (paths, owners, modes, mtimes, links):

* **host**: the volume's mountpoint (`/var/lib/docker/volumes/NAME/_data`)
  when this process can see it — the sidecar's compose example mounts
  `/var/lib/docker/volumes`. The engine walks it like any directory, and an
  incremental backup skips unchanged files without reading them.
* **archive**: Docker's archive API (`GET/PUT /containers/ID/archive`) on a
  container that mounts the volume, as tar streams. Works with any volume
  driver and without the mount. Docker's tar headers carry whole seconds, so
  mtimes read this way lose their sub-second part (documented in
  docs/docker.md).

`BACKUP_VOLUME_ACCESS` = `auto` (host when visible, else archive), `host` or
`archive` chooses.
"""

from __future__ import annotations

import contextlib
import logging
import os
import posixpath
import threading
from collections.abc import Iterator
from typing import BinaryIO

import docker
import docker.errors

from sidecar.docker.apps import App, VolumeInfo
from sidecar.docker.streams import prefetched
from sidecar.errors import BackupCreateFailed, InvalidRequest, RestoreFailed
from sidecar.repo.backup import BackupSession
from sidecar.repo.export import export_snapshot
from sidecar.repo.repository import Repository
from sidecar.repo.restore import RestoreResult, restore_snapshot
from sidecar.repo.snapshot import SnapshotRecord, SourceRecord

log = logging.getLogger(__name__)

ACCESS_MODES = ("auto", "host", "archive")
ARCHIVE_CHUNK = 1 << 20


def access_mode(env: dict[str, str] | None = None) -> str:
    mode = (env if env is not None else os.environ).get("BACKUP_VOLUME_ACCESS", "auto").strip().lower()
    if mode not in ACCESS_MODES:
        raise InvalidRequest(f"BACKUP_VOLUME_ACCESS must be one of {', '.join(ACCESS_MODES)}, got {mode!r}")
    return mode


class VolumeAccess:
    def __init__(self, client: docker.DockerClient, mode: str = "auto") -> None:
        if mode not in ACCESS_MODES:
            raise InvalidRequest(f"volume access must be one of {', '.join(ACCESS_MODES)}, got {mode!r}")
        self.client = client
        self.mode = mode

    def host_path(self, volume: VolumeInfo) -> str | None:
        """The volume's directory when this process can read it (and the mode allows it)."""
        if self.mode == "archive":
            return None
        path = volume.mountpoint
        if path and os.path.isdir(path) and os.access(path, os.R_OK | os.X_OK):
            return path
        if self.mode == "host":
            raise BackupCreateFailed(
                f"volume {volume.name}: its mountpoint {path or '(none)'} is not visible here "
                "(mount /var/lib/docker/volumes into the sidecar, or set BACKUP_VOLUME_ACCESS=auto)"
            )
        return None

    def how(self, volume: VolumeInfo) -> str:
        return "host" if self.host_path(volume) else "archive"

    @staticmethod
    def _carrier(app: App, volume: VolumeInfo) -> tuple[str, str]:
        """(container id, mount destination) of a container of the app that mounts `volume`."""
        mounts = app.mounts_of(volume.name)
        if not mounts:
            raise BackupCreateFailed(f"volume {volume.name}: no container of app {app.app_id} mounts it")
        container, mount = mounts[0]
        return container.id, mount.destination

    # ---- reading ---------------------------------------------------------------------

    def back_up(
        self, session: BackupSession, app: App, volume: VolumeInfo, name: str, excludes: tuple[str, ...] = ()
    ) -> SourceRecord:
        """Add `volume` to the backup as source `name`."""
        path = self.host_path(volume)
        if path is not None:
            record = session.add_tree(name, path, kind="volume", excludes=excludes)
        else:
            container, destination = self._carrier(app, volume)
            try:
                chunks, _stat = self.client.api.get_archive(container, destination, chunk_size=ARCHIVE_CHUNK)
            except docker.errors.APIError as exc:
                raise BackupCreateFailed(
                    f"volume {volume.name}: the archive API refused it: {exc.explanation}"
                ) from None
            strip = posixpath.basename(destination.rstrip("/")) or "."
            try:
                record = session.add_tar(name, prefetched(chunks), strip=strip, kind="volume", excludes=excludes)
            finally:
                with contextlib.suppress(Exception):
                    chunks.close()
        return record

    # ---- writing ---------------------------------------------------------------------

    def restore(
        self,
        repo: Repository,
        snapshot: SnapshotRecord,
        source: str,
        app: App,
        volume: VolumeInfo,
        *,
        delete: bool = True,
    ) -> RestoreResult | int:
        """Write source `source` of `snapshot` into `volume`. Through the host path the
        volume ends up exact (extra files removed unless `delete` is false); through the
        archive API files are added and replaced, never removed."""
        path = self.host_path(volume)
        if path is not None:
            return restore_snapshot(repo, snapshot, path, source=source, delete=delete)
        container, destination = self._carrier(app, volume)
        return self._put_archive(repo, snapshot, source, container, destination)

    def _put_archive(
        self, repo: Repository, snapshot: SnapshotRecord, source: str, container: str, destination: str
    ) -> int:
        # The tar names the volume's root after the mount point and goes into its parent
        # directory, so that the root's own owner, mode and mtime are set as well.
        parent = posixpath.dirname(destination.rstrip("/")) or "/"
        root_name = posixpath.basename(destination.rstrip("/"))
        read_fd, write_fd = os.pipe()
        outcome: dict[str, object] = {}

        def produce() -> None:
            with os.fdopen(write_fd, "wb", buffering=ARCHIVE_CHUNK) as out:
                try:
                    outcome["count"] = export_snapshot(repo, snapshot, out, source=source, root_name=root_name)
                except BaseException as exc:
                    outcome["error"] = exc

        producer = threading.Thread(target=produce, name="volume-tar", daemon=True)
        producer.start()
        with os.fdopen(read_fd, "rb", buffering=0) as pipe:
            try:
                ok = self.client.api.put_archive(container, parent, _chunks(pipe))
            except docker.errors.APIError as exc:
                raise RestoreFailed(f"writing into {destination} of {container[:12]}: {exc.explanation}") from None
            finally:
                _drain(pipe)
                producer.join()
        if "error" in outcome:
            raise outcome["error"]  # type: ignore[misc]
        if not ok:
            raise RestoreFailed(f"the Docker engine did not accept the archive for {destination} of {container[:12]}")
        return int(outcome.get("count", 0))  # type: ignore[call-overload]


def _chunks(pipe: BinaryIO) -> Iterator[bytes]:
    while data := pipe.read(ARCHIVE_CHUNK):
        yield data


def _drain(pipe: BinaryIO) -> None:
    with contextlib.suppress(OSError):
        while pipe.read(ARCHIVE_CHUNK):
            pass
