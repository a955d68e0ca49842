"""Repository in an S3 bucket (AWS, MinIO, Ceph RGW, Wasabi, any S3 protocol server).

`s3://bucket/prefix`; the rest from the environment (the workers a backup starts
inherit it): BACKUP_S3_ENDPOINT_URL (else boto3's own AWS_ENDPOINT_URL_S3 /
AWS_ENDPOINT_URL), BACKUP_S3_REGION (else AWS_REGION / AWS_DEFAULT_REGION, else
us-east-1), BACKUP_S3_ADDRESSING (auto, path, virtual), BACKUP_S3_STORAGE_CLASS
(data packs only; metadata stays STANDARD), BACKUP_S3_CONNECTIONS (uploads at once
per backup, spread over its worker processes, and parts at once of a big object; 4),
BACKUP_S3_MAX_ATTEMPTS (default 10). Credentials come from the usual AWS chain.

Every PUT carries Content-MD5: a body damaged on the way is refused by the
server (BadDigest). The ETag the server answers (the MD5 of what it stored, for
a single PUT or a part, unless the bucket encrypts with KMS or customer keys:
BACKUP_S3_CHECK_ETAG=false there) is checked too, so a server that does not
check Content-MD5 cannot keep a damaged object: it is deleted and sent again
(`DAMAGED_ATTEMPTS` times at most), then the backup fails. Throttling (503
SlowDown), 5xx answers and connection errors are retried by botocore's
standard mode with exponential back-off and jitter. Objects larger than
`multipart_threshold` go up in parts, `connections` at a time, each with its
own Content-MD5; a failed multipart upload is aborted.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from sidecar.config import env_flag, env_int
from sidecar.errors import BackupError, InvalidRequest
from sidecar.repo.backends.base import ObjectNotFound

log = logging.getLogger(__name__)

ADDRESSING = ("auto", "path", "virtual")
STORAGE_CLASSES = (
    "STANDARD",
    "STANDARD_IA",
    "ONEZONE_IA",
    "INTELLIGENT_TIERING",
    "GLACIER_IR",
    "REDUCED_REDUNDANCY",
)
MiB = 1 << 20
DAMAGED_ATTEMPTS = 3  # uploads of one object whose stored MD5 differs from ours, before giving up


class S3Unavailable(BackupError):
    code = "STORAGE_UNAVAILABLE"


@dataclass(frozen=True)
class S3Settings:
    bucket: str
    prefix: str = ""  # without leading or trailing "/"
    region: str | None = None
    endpoint_url: str | None = None
    addressing: str = "auto"
    storage_class: str | None = None
    connections: int = 4
    max_attempts: int = 10
    multipart_threshold: int = 64 * MiB
    part_size: int = 16 * MiB
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    check_etag: bool = True

    @classmethod
    def from_url(cls, url: str, env: Mapping[str, str] = os.environ) -> S3Settings:
        rest = url[len("s3://") :]
        bucket, _, prefix = rest.partition("/")
        if not bucket:
            raise InvalidRequest(f"repository URL {url!r}: no bucket (use s3://BUCKET/PREFIX)")
        addressing = (env.get("BACKUP_S3_ADDRESSING") or "auto").strip().lower()
        if addressing not in ADDRESSING:
            raise InvalidRequest(f"BACKUP_S3_ADDRESSING: must be one of {', '.join(ADDRESSING)}, got {addressing!r}")
        storage_class = (env.get("BACKUP_S3_STORAGE_CLASS") or "").strip().upper() or None
        if storage_class is not None and storage_class not in STORAGE_CLASSES:
            raise InvalidRequest(
                f"BACKUP_S3_STORAGE_CLASS: must be one of {', '.join(STORAGE_CLASSES)}, got {storage_class!r}"
            )
        return cls(
            bucket=bucket,
            prefix=prefix.strip("/"),
            region=(env.get("BACKUP_S3_REGION") or env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or None),
            endpoint_url=env.get("BACKUP_S3_ENDPOINT_URL") or None,
            addressing=addressing,
            storage_class=storage_class,
            connections=env_int(env, "BACKUP_S3_CONNECTIONS", 4, 1, 64),
            max_attempts=env_int(env, "BACKUP_S3_MAX_ATTEMPTS", 10, 1, 50),
            check_etag=env_flag(env, "BACKUP_S3_CHECK_ETAG", True),
        )

    @property
    def location(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"


def _b64(digest) -> str:  # type: ignore[no-untyped-def]
    return base64.b64encode(digest.digest()).decode()


class _Damaged(Exception):
    """The server stored something else than what was sent."""


def staging_root(env: Mapping[str, str] = os.environ) -> Path:
    """Where packs are prepared before upload: the data dir (like the cache), never the bucket."""
    from sidecar.config import default_data_dir

    return Path(env.get("BACKUP_DATA_DIR") or default_data_dir(env)) / "staging"


class S3Backend:
    """Objects are keys under `prefix/` in `bucket`."""

    def __init__(self, settings: S3Settings, staging_dir: Path | None = None) -> None:
        import boto3
        from botocore.config import Config

        self.settings = settings
        self.location = settings.location
        key = hashlib.sha256(self.location.encode()).hexdigest()[:16]
        self.staging_dir = (staging_dir or staging_root()) / key
        config = Config(
            region_name=settings.region or "us-east-1",
            retries={"mode": "standard", "max_attempts": settings.max_attempts},
            max_pool_connections=max(settings.connections * 2, 10),
            connect_timeout=settings.connect_timeout,
            read_timeout=settings.read_timeout,
            # Content-MD5 (signed) covers the body: no second hash of it for the signature, even over http
            s3={"addressing_style": settings.addressing, "payload_signing_enabled": False},
            # our own Content-MD5 on every PUT; no streaming (aws-chunked) bodies
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        self._client = boto3.session.Session().client("s3", endpoint_url=settings.endpoint_url, config=config)
        # packs a backup worker uploads at once: `connections` spread over the workers of a backup
        from sidecar.repo.workerproc import worker_count

        self.upload_threads = max(1, settings.connections // worker_count())
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()

    # ---- names and errors ----------------------------------------------------------------------

    def _key(self, name: str) -> str:
        if name.startswith("/") or ".." in name.split("/"):
            raise ValueError(f"bad object name {name!r}")
        return f"{self.settings.prefix}/{name}" if self.settings.prefix else name

    def _name(self, key: str) -> str:
        return key[len(self.settings.prefix) + 1 :] if self.settings.prefix else key

    def _fail(self, exc: Exception, what: str) -> BackupError:
        """One clear line for an S3 error (never credentials: botocore's messages hold none)."""
        from botocore.exceptions import ClientError, NoCredentialsError

        if isinstance(exc, NoCredentialsError):
            return S3Unavailable(
                f"{self.location}: no AWS credentials (set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
                "a profile, or an instance role)"
            )
        if isinstance(exc, ClientError):
            error = exc.response.get("Error", {})
            code = error.get("Code", "?")
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code == "NoSuchBucket":
                return S3Unavailable(f"{self.location}: bucket {self.settings.bucket!r} does not exist")
            if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
                return S3Unavailable(f"{self.location}: {what}: access denied ({code}); check the credentials")
            message = error.get("Message") or ""
            return S3Unavailable(f"{self.location}: {what}: {code} (HTTP {status}) {message}".rstrip())
        return S3Unavailable(f"{self.location}: {what}: {type(exc).__name__}: {exc}")

    def _errors(self):  # type: ignore[no-untyped-def]
        from botocore.exceptions import BotoCoreError, ClientError

        return (BotoCoreError, ClientError)

    # ---- the protocol --------------------------------------------------------------------------

    def put(self, name: str, data: bytes | Path, *, cache_ranges: Sequence[tuple[int, int]] = ()) -> None:
        key = self._key(name)
        extra = {}
        if self.settings.storage_class and name.startswith("data/"):
            extra["StorageClass"] = self.settings.storage_class
        try:
            if isinstance(data, Path):
                size = data.stat().st_size
                if size > self.settings.multipart_threshold:
                    self._put_multipart(key, data, size, extra)
                else:
                    self._put_checked(key, data.read_bytes(), extra)
                data.unlink(missing_ok=True)  # handed over
            else:
                self._put_checked(key, data, extra)
        except self._errors() as exc:
            raise self._fail(exc, f"cannot store {name}") from None

    def _put_checked(self, key: str, body: bytes, extra: dict) -> None:
        digest = hashlib.md5(body)
        for attempt in range(1, DAMAGED_ATTEMPTS + 1):
            answer = self._client.put_object(
                Bucket=self.settings.bucket, Key=key, Body=body, ContentMD5=_b64(digest), **extra
            )
            try:
                self._check_etag(answer, digest, key)
                return
            except _Damaged as exc:
                log.warning("%s (attempt %d of %d): deleted, sending it again", exc, attempt, DAMAGED_ATTEMPTS)
                self._client.delete_object(Bucket=self.settings.bucket, Key=key)
        raise S3Unavailable(
            f"{self.location}: {self._name(key)} arrived damaged {DAMAGED_ATTEMPTS} times (its MD5 differs from "
            "what was sent): not stored"
        )

    def _check_etag(self, answer: dict, digest, key: str) -> None:  # type: ignore[no-untyped-def]
        if not self.settings.check_etag:
            return
        etag = str(answer.get("ETag", "")).strip('"')
        if etag != digest.hexdigest():
            raise _Damaged(f"{self._name(key)} was stored with MD5 {etag[:32]!r}, sent {digest.hexdigest()}")

    def _executor(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.settings.connections, thread_name_prefix="s3-part")
            return self._pool

    def _put_multipart(self, key: str, path: Path, size: int, extra: dict) -> None:
        bucket = self.settings.bucket
        upload_id = self._client.create_multipart_upload(Bucket=bucket, Key=key, **extra)["UploadId"]
        part_size = self.settings.part_size

        def upload(number: int) -> dict:
            with open(path, "rb") as f:
                f.seek((number - 1) * part_size)
                body = f.read(part_size)
            digest = hashlib.md5(body)
            for attempt in range(1, DAMAGED_ATTEMPTS + 1):
                answer = self._client.upload_part(
                    Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=body, ContentMD5=_b64(digest)
                )
                try:
                    self._check_etag(answer, digest, f"{key} part {number}")
                    return {"PartNumber": number, "ETag": answer["ETag"]}
                except _Damaged as exc:  # sending the part again replaces it
                    log.warning("%s (attempt %d of %d): sending it again", exc, attempt, DAMAGED_ATTEMPTS)
            raise S3Unavailable(f"{self.location}: {self._name(key)} part {number} arrived damaged: not stored")

        try:
            numbers = range(1, (size + part_size - 1) // part_size + 1)
            parts = list(self._executor().map(upload, numbers))
            self._client.complete_multipart_upload(
                Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
            )
        except BaseException:
            try:
                self._client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
            except Exception as exc:  # the bucket's lifecycle rule (or prune) cleans up what is left
                log.warning("could not abort the multipart upload of %s: %s", key, exc)
            raise

    def get(self, name: str, offset: int = 0, length: int | None = None, *, cache: bool = False) -> bytes:
        key = self._key(name)
        args: dict = {"Bucket": self.settings.bucket, "Key": key}
        if length is not None:
            if length == 0:
                return b""
            args["Range"] = f"bytes={offset}-{offset + length - 1}"
        elif offset:
            args["Range"] = f"bytes={offset}-"
        try:
            data = self._client.get_object(**args)["Body"].read()
        except self._errors() as exc:
            if _not_found(exc):
                raise ObjectNotFound(f"{name} is missing from {self.location}") from None
            if _status(exc) == 416:  # the range starts past the end
                raise ObjectNotFound(f"{name} is truncated (wanted {length} bytes at {offset}, got 0)") from None
            raise self._fail(exc, f"cannot read {name}") from None
        if length is not None and len(data) != length:
            raise ObjectNotFound(f"{name} is truncated (wanted {length} bytes at {offset}, got {len(data)})")
        return data

    def list(self, prefix: str) -> Iterator[tuple[str, int]]:
        paginator = self._client.get_paginator("list_objects_v2")
        full = self._key(prefix) if prefix else (self.settings.prefix + "/" if self.settings.prefix else "")
        try:
            for page in paginator.paginate(Bucket=self.settings.bucket, Prefix=full):
                for item in page.get("Contents", ()):
                    yield self._name(item["Key"]), int(item["Size"])
        except self._errors() as exc:
            raise self._fail(exc, f"cannot list {prefix or 'the repository'}") from None

    def delete(self, name: str) -> None:
        try:
            self._client.delete_object(Bucket=self.settings.bucket, Key=self._key(name))
        except self._errors() as exc:
            if not _not_found(exc):
                raise self._fail(exc, f"cannot delete {name}") from None

    def exists(self, name: str) -> bool:
        try:
            self._client.head_object(Bucket=self.settings.bucket, Key=self._key(name))
        except self._errors() as exc:
            if _not_found(exc):
                return False
            raise self._fail(exc, f"cannot look for {name}") from None
        return True

    def create_bucket(self) -> bool:
        """Create the bucket if there is none (init); True if it was made."""
        try:
            self._client.head_bucket(Bucket=self.settings.bucket)
            return False
        except self._errors() as exc:
            if not _not_found(exc):
                raise self._fail(exc, "cannot reach the bucket") from None
        args: dict = {"Bucket": self.settings.bucket}
        region = self.settings.region
        if region and region != "us-east-1":
            args["CreateBucketConfiguration"] = {"LocationConstraint": region}
        try:
            self._client.create_bucket(**args)
        except self._errors() as exc:
            raise self._fail(exc, "cannot create the bucket") from None
        return True


def _status(exc: Exception) -> int | None:
    response = getattr(exc, "response", None) or {}
    return response.get("ResponseMetadata", {}).get("HTTPStatusCode")


def _not_found(exc: Exception) -> bool:
    response = getattr(exc, "response", None) or {}
    code = response.get("Error", {}).get("Code")
    return code in ("NoSuchKey", "404", "NotFound") or (_status(exc) == 404 and code != "NoSuchBucket")
