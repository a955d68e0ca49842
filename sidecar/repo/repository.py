"""Opening, creating and reading a repository: config, keys, objects, snapshots.

Backup, restore, check, forget and prune live in their own modules and work
on an open `Repository`.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import logging
import os
import socket
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

from sidecar.errors import (
    BackupError,
    BackupNotFound,
    IntegrityError,
    RepositoryExists,
    RepositoryNotFound,
    UnsupportedFormat,
    WrongKey,
)
from sidecar.repo import crypto
from sidecar.repo.backends.base import Backend, ObjectNotFound
from sidecar.repo.chunker import Chunker, ChunkerParams
from sidecar.repo.codec import DEFAULT_LEVEL, Codec
from sidecar.repo.crypto import MasterKey
from sidecar.repo.index import BlobLocation, Index
from sidecar.repo.locks import REFRESH_EVERY, RepositoryLock, acquire_lock
from sidecar.repo.pack import TARGET_PACK_SIZE, TREE, PackEntry, extract_blob, pack_object_name, read_header
from sidecar.repo.snapshot import SnapshotRecord, format_time

log = logging.getLogger(__name__)

FORMAT_NAME = "websoft9-backup"
FORMAT_VERSION = 1


def _now() -> datetime:
    return datetime.now(UTC)


def _object_id(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Repository:
    """An open repository: its config, master key, codec and (lazily) index."""

    def __init__(
        self, backend: Backend, config: dict, key: MasterKey, key_name: str, compression_level: int = DEFAULT_LEVEL
    ) -> None:
        self.backend = backend
        self.config = config
        self.key = key
        self.key_name = key_name
        self.codec = Codec(key, compression_level)
        self.chunker = Chunker(ChunkerParams.from_json(config["chunker"]), key.chunker_seed())
        self.pack_size = int(config.get("pack_size", TARGET_PACK_SIZE))
        self._index: Index | None = None
        self.problems: list[str] = []  # damaged objects skipped while reading (also logged)
        self.lock_refresh_every = REFRESH_EVERY

    # ---- creating and opening -------------------------------------------------

    @classmethod
    def init(
        cls,
        backend: Backend,
        passphrase: bytes,
        *,
        compression_level: int = DEFAULT_LEVEL,
        chunker: ChunkerParams | None = None,
        master: MasterKey | None = None,
    ) -> Repository:
        if backend.exists("config"):
            raise RepositoryExists(f"{backend.location} already holds a repository")
        master = master or MasterKey.generate()
        config = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "id": os.urandom(32).hex(),
            "created": format_time(_now()),
            "chunker": (chunker or ChunkerParams()).to_json(),
            "blob_id": "blake3-keyed",
            "cipher": "aes-256-gcm",
            "compression": "zstd",
            "pack_size": TARGET_PACK_SIZE,
        }
        key_name = cls._store_key(backend, master, passphrase)
        backend.put("config", json.dumps(config, indent=1).encode())
        return cls(backend, config, master, key_name, compression_level)

    @staticmethod
    def _store_key(backend: Backend, master: MasterKey, passphrase: bytes) -> str:
        raw = crypto.make_key_file(
            master, passphrase, hostname=socket.gethostname(), username=getpass.getuser(), created=format_time(_now())
        )
        name = f"keys/{_object_id(raw)}"
        backend.put(name, raw)
        return name

    @staticmethod
    def read_config(backend: Backend) -> dict:
        try:
            raw = backend.get("config")
        except ObjectNotFound:
            raise RepositoryNotFound(
                f"{backend.location} is not a websoft9-backup repository (no config; run `init` first)"
            ) from None
        try:
            config = json.loads(raw)
            if config.get("format") != FORMAT_NAME:
                raise ValueError("not our format")
        except (ValueError, AttributeError):
            raise RepositoryNotFound(f"{backend.location} is not a websoft9-backup repository") from None
        if int(config.get("version", 0)) > FORMAT_VERSION:
            raise UnsupportedFormat(
                f"repository format version {config['version']} is newer than this program supports"
                f" ({FORMAT_VERSION}); upgrade websoft9-backup"
            )
        return config

    @classmethod
    def open(
        cls,
        backend: Backend,
        passphrase: bytes | None = None,
        *,
        master: MasterKey | None = None,
        compression_level: int = DEFAULT_LEVEL,
    ) -> Repository:
        config = cls.read_config(backend)
        if master is not None:
            return cls(backend, config, master, "", compression_level)
        if not passphrase:
            raise WrongKey("no encryption key given (set BACKUP_ENCRYPTION_KEY or use --password-file)")
        names = [name for name, _ in backend.list("keys/")]
        if not names:
            raise RepositoryNotFound(f"{backend.location} has no key files")
        damaged = []
        for name in names:
            try:
                found = crypto.unwrap_key_file(backend.get(name), passphrase)
            except BackupError as exc:
                damaged.append(f"{name}: {exc}")
                continue
            if found is not None:
                if damaged:
                    log.warning("damaged key file(s) skipped: %s", "; ".join(damaged))
                return cls(backend, config, found, name, compression_level)
        extra = f" ({len(damaged)} damaged: {'; '.join(damaged)})" if damaged else ""
        raise WrongKey(
            f"wrong encryption key: none of the {len(names)} key file(s) of {backend.location} opens with it{extra}"
        )

    # ---- keys --------------------------------------------------------------------

    def list_keys(self) -> list[dict]:
        out = []
        for name, _ in self.backend.list("keys/"):
            info = crypto.read_key_file_info(self.backend.get(name))
            out.append(
                {
                    "id": name.split("/", 1)[1],
                    "current": name == self.key_name,
                    "created": info.get("created"),
                    "hostname": info.get("hostname"),
                    "username": info.get("username"),
                }
            )
        return out

    def add_key(self, passphrase: bytes) -> str:
        return self._store_key(self.backend, self.key, passphrase).split("/", 1)[1]

    def remove_key(self, key_id: str) -> None:
        matches = [k for k in self.list_keys() if k["id"].startswith(key_id)]
        if len(matches) != 1:
            raise BackupNotFound(f"no single key matches {key_id!r} ({len(matches)} found)")
        if matches[0]["current"]:
            raise UnsupportedFormat("refusing to remove the key in use; open the repository with another key first")
        self.backend.delete(f"keys/{matches[0]['id']}")

    # ---- sealed objects --------------------------------------------------------

    def save_json(self, kind: str, doc: Any) -> str:
        """Store a sealed JSON object under `kind/` and return its id."""
        sealed = self.codec.encode_json(doc)
        object_id = _object_id(sealed)
        self.backend.put(f"{kind}/{object_id}", sealed)
        return object_id

    def load_json(self, kind: str, object_id: str) -> Any:
        sealed = self.backend.get(f"{kind}/{object_id}")
        if _object_id(sealed) != object_id:
            raise IntegrityError(f"{kind}/{object_id} does not match its name (damaged in storage)")
        return self.codec.decode_json(sealed)

    def list_ids(self, kind: str) -> list[str]:
        return [name.rsplit("/", 1)[1] for name, _ in self.backend.list(f"{kind}/")]

    # ---- index and blobs -------------------------------------------------------

    def index(self, reload: bool = False) -> Index:
        """All blobs of the repository. A damaged index file is skipped (and noted
        in `problems`): its blobs then count as missing, which `check` reports.
        Index files are read a few at a time, so loading never holds them all."""
        if self._index is None or reload:
            ids = self.list_ids("index")
            index, superseded = self._load_index(ids, skip=set())
            if superseded & index.loaded_ids:  # an interrupted prune left superseded files: load without them
                index, _ = self._load_index(ids, skip=superseded)
            index.merge()
            self._index = index
        return self._index

    def _load_index(self, ids: list[str], skip: set[str]) -> tuple[Index, set[str]]:
        index, superseded = Index(), set()

        def load(index_id: str) -> dict | None:
            try:
                return self.load_json("index", index_id)
            except BackupError as exc:
                self._problem(f"index {index_id} skipped: {exc}")
                return None

        def all_records() -> Iterator[bytes]:
            wanted = [i for i in ids if i not in skip]
            with ThreadPoolExecutor(4) as pool:
                for start in range(0, len(wanted), 4):
                    batch = wanted[start : start + 4]
                    for index_id, doc in zip(batch, pool.map(load, batch), strict=True):
                        if doc is None:
                            continue
                        superseded.update(doc.get("supersedes", []))
                        try:
                            records = index.document_records(doc)
                        except BackupError as exc:
                            self._problem(f"index {index_id} skipped: {exc}")
                            continue
                        index.loaded_ids.add(index_id)
                        yield from records

        index.load_records(list(all_records()))
        return index, superseded

    def _problem(self, message: str) -> None:
        log.warning("%s", message)
        self.problems.append(message)

    def unindexed_packs(self) -> list[tuple[str, list[PackEntry]]]:
        """Stored packs no index names (left by an interrupted backup), read from
        their own headers so a new backup can reuse their data instead of
        storing it again."""
        known = self.index().pack_ids()
        found = []
        for name, size in self.backend.list("data/"):
            pack_id = name.rsplit("/", 1)[1]
            if pack_id in known:
                continue
            try:
                found.append((pack_id, read_header(self.backend, pack_id, size, self.codec)))
            except BackupError as exc:
                self._problem(f"pack {pack_id} not reusable: {exc}")
        return found

    def load_blob(self, blob_id: bytes) -> bytes:
        loc = self.index().get(blob_id)
        if loc is None:
            raise IntegrityError(f"blob {blob_id.hex()[:16]} is not in the index")
        # listings are read again by every incremental backup: a remote repository's cache keeps them
        sealed = self.backend.get(pack_object_name(loc.pack_id), loc.offset, loc.length, cache=loc.type == TREE)
        return self.blob_from_group(blob_id, loc, self.codec.decode(sealed))

    def blob_from_group(self, blob_id: bytes, loc: BlobLocation, group: bytes) -> bytes:
        """The blob's plaintext out of its decoded group, checked against its id."""
        return extract_blob(self.key, blob_id, group, loc.inner, loc.raw_length)

    # ---- snapshots ---------------------------------------------------------------

    def load_snapshot(self, snapshot_id: str) -> SnapshotRecord:
        return SnapshotRecord.from_json(self.load_json("snapshots", snapshot_id), snapshot_id)

    def list_snapshots(self, app_id: str | None = None) -> list[SnapshotRecord]:
        """Snapshots, oldest first. A damaged one is skipped and noted in `problems`."""
        ids = self.list_ids("snapshots")

        def load(snapshot_id: str) -> SnapshotRecord | None:
            try:
                return self.load_snapshot(snapshot_id)
            except BackupError as exc:
                self._problem(f"snapshot {snapshot_id} skipped: {exc}")
                return None

        with ThreadPoolExecutor(4) as pool:
            snaps = [s for s in pool.map(load, ids) if s is not None]
        if app_id is not None:
            snaps = [s for s in snaps if s.app_id == app_id]
        return sorted(snaps, key=lambda s: (s.time, s.id))

    def find_snapshot(self, ref: str, app_id: str | None = None) -> SnapshotRecord:
        """`latest`, a snapshot id (or unique prefix of at least 6), or a backup_id."""
        if ref == "latest":
            snaps = self.list_snapshots(app_id)
            if not snaps:
                raise BackupNotFound("the repository has no snapshots" + (f" of app {app_id}" if app_id else ""))
            return snaps[-1]
        if ref.startswith("backup_"):
            for snap in self.list_snapshots(app_id):
                if snap.backup_id == ref:
                    return snap
            raise BackupNotFound(f"no snapshot with backup_id {ref}")
        if len(ref) < 6 or any(c not in "0123456789abcdef" for c in ref):
            raise BackupNotFound(f"{ref!r} is not a snapshot id, backup_id or 'latest'")
        matches = [i for i in self.list_ids("snapshots") if i.startswith(ref)]
        if len(matches) != 1:
            raise BackupNotFound(f"{'no' if not matches else 'more than one'} snapshot matches {ref!r}")
        snap = self.load_snapshot(matches[0])
        if app_id is not None and snap.app_id != app_id:
            raise BackupNotFound(f"snapshot {ref} belongs to app {snap.app_id}, not {app_id}")
        return snap

    # ---- locks ---------------------------------------------------------------------

    def lock(self, kind: str, operation: str, wait: float = 0.0) -> RepositoryLock:
        return acquire_lock(self.backend, self.codec, kind, operation, wait, refresh_every=self.lock_refresh_every)
