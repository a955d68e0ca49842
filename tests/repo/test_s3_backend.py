"""The S3 back end against a real S3-protocol server (moto's, on 127.0.0.1), and the
metadata cache in front of it: the back-end protocol, pagination, multipart,
storage class, damaged uploads, faults, clear errors, and what the cache saves."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import boto3
import pytest

from sidecar.repo.backends.base import ObjectNotFound, open_backend
from sidecar.repo.backends.cache import CachedBackend
from sidecar.repo.backends.s3 import S3Backend, S3Settings, S3Unavailable
from sidecar.repo.backup import BackupOptions, BackupSession
from sidecar.repo.repository import Repository
from tests.s3 import FaultyProxy


def bucket_name() -> str:
    return f"w9-{secrets.token_hex(6)}"


def make(endpoint: str, tmp_path: Path, **settings) -> S3Backend:
    backend = S3Backend(
        S3Settings(
            bucket=settings.pop("bucket", None) or bucket_name(), prefix="repo", endpoint_url=endpoint, **settings
        ),
        staging_dir=tmp_path / "staging",
    )
    backend.create_bucket()
    return backend


def raw_client(endpoint: str):  # type: ignore[no-untyped-def]
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")


def test_the_backend_protocol(s3_env, s3_server, tmp_path):
    backend = make(s3_server, tmp_path)
    backend.put("config", b"{}")
    staged = tmp_path / "pack"
    staged.write_bytes(b"0123456789" * 1000)
    backend.put("data/ab/abcdef", staged)
    assert not staged.exists()  # handed over
    assert backend.get("data/ab/abcdef", 5, 10) == b"5678901234"
    assert backend.get("data/ab/abcdef", 9995) == b"56789"
    assert len(backend.get("data/ab/abcdef")) == 10000
    assert backend.exists("config") and not backend.exists("index/none")
    with pytest.raises(ObjectNotFound, match="index/none is missing"):
        backend.get("index/none")
    with pytest.raises(ObjectNotFound, match="truncated"):
        backend.get("data/ab/abcdef", 9990, 100)
    assert sorted(backend.list("")) == [("config", 2), ("data/ab/abcdef", 10000)]
    assert list(backend.list("data/")) == [("data/ab/abcdef", 10000)]
    backend.delete("data/ab/abcdef")
    backend.delete("data/ab/abcdef")  # deleting what is gone is fine
    assert list(backend.list("data/")) == []
    # the prefix is the repository's: another prefix in the same bucket is another repository
    other = S3Backend(S3Settings(bucket=backend.settings.bucket, prefix="other", endpoint_url=s3_server))
    assert list(other.list("")) == []
    with pytest.raises(ValueError):
        backend.put("../escape", b"x")


def test_listing_pages_past_a_thousand_objects(s3_env, s3_server, tmp_path):
    backend = make(s3_server, tmp_path)
    client = raw_client(s3_server)
    from concurrent.futures import ThreadPoolExecutor

    def put(i: int) -> None:  # straight to the server, eight at a time
        client.put_object(Bucket=backend.settings.bucket, Key=f"repo/snapshots/{i:05d}", Body=b"s")

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(put, range(1105)))
    names = [name for name, _ in backend.list("snapshots/")]
    assert len(names) == 1105 and names[0] == "snapshots/00000" and names[-1] == "snapshots/01104"


def test_multipart_upload_and_storage_class_for_data_only(s3_env, s3_server, tmp_path):
    mib = 1 << 20
    backend = make(
        s3_server, tmp_path, multipart_threshold=6 * mib, part_size=5 * mib, storage_class="STANDARD_IA", connections=3
    )
    big = tmp_path / "big"
    content = os.urandom(13 * mib)
    big.write_bytes(content)
    backend.put("data/00/00big", big)
    backend.put("index/abc", b"index")
    assert backend.get("data/00/00big") == content
    assert backend.get("data/00/00big", 6 * mib - 3, 6) == content[6 * mib - 3 : 6 * mib + 3]
    client = raw_client(s3_server)
    head = client.head_object(Bucket=backend.settings.bucket, Key="repo/data/00/00big")
    assert head["ETag"].strip('"').endswith("-3")  # three parts
    assert head.get("StorageClass") == "STANDARD_IA"
    index_head = client.head_object(Bucket=backend.settings.bucket, Key="repo/index/abc")
    assert index_head.get("StorageClass", "STANDARD") == "STANDARD"
    uploads = client.list_multipart_uploads(Bucket=backend.settings.bucket).get("Uploads", [])
    assert uploads == []


def test_damaged_uploads_are_never_kept(s3_env, s3_server, tmp_path, caplog):
    """Every PUT body damaged on the way: the stored MD5 differs, the object is deleted and sent again."""
    proxy = FaultyProxy(s3_server, rate=1.0, faults=("corrupt",))
    try:
        bucket = bucket_name()
        S3Backend(S3Settings(bucket=bucket, endpoint_url=s3_server)).create_bucket()
        backend = S3Backend(S3Settings(bucket=bucket, prefix="repo", endpoint_url=proxy.url))
        with pytest.raises(S3Unavailable, match="arrived damaged 3 times"):
            backend.put("data/00/x", b"payload" * 100)
        clean = S3Backend(S3Settings(bucket=bucket, prefix="repo", endpoint_url=s3_server))
        assert not clean.exists("data/00/x")
        assert "was stored with MD5" in caplog.text
        proxy.rate = 0.5  # half of them damaged: all arrive intact in the end
        for i in range(10):
            backend.put(f"data/00/{i}", f"payload {i}".encode() * 50)
        for i in range(10):
            assert clean.get(f"data/00/{i}") == f"payload {i}".encode() * 50
    finally:
        proxy.close()


def test_throttling_errors_and_resets_are_retried(s3_env, s3_server, tmp_path):
    proxy = FaultyProxy(s3_server, rate=0.3, seed=7, faults=("503", "500", "reset-before", "reset-after"))
    try:
        bucket = bucket_name()
        S3Backend(S3Settings(bucket=bucket, endpoint_url=s3_server)).create_bucket()
        backend = S3Backend(S3Settings(bucket=bucket, prefix="repo", endpoint_url=proxy.url, max_attempts=12))
        for i in range(20):
            backend.put(f"data/00/{i:02d}", bytes([i]) * 1000)
        assert [n for n, _ in backend.list("data/")] == [f"data/00/{i:02d}" for i in range(20)]
        assert all(backend.get(f"data/00/{i:02d}", 10, 5) == bytes([i]) * 5 for i in range(20))
        assert sum(proxy.faults.values()) >= 10 and set(proxy.faults) >= {"503", "500"}
    finally:
        proxy.close()


def test_clear_errors(s3_env, s3_server, tmp_path, monkeypatch):
    missing = S3Backend(S3Settings(bucket="w9-no-such-bucket", endpoint_url=s3_server))
    with pytest.raises(S3Unavailable, match="bucket 'w9-no-such-bucket' does not exist"):
        list(missing.list(""))
    with pytest.raises(S3Unavailable, match="does not exist"):
        missing.put("config", b"x")
    closed = S3Backend(S3Settings(bucket="b-b-b", endpoint_url="http://127.0.0.1:9", max_attempts=2, connect_timeout=1))
    with pytest.raises(S3Unavailable, match="cannot list the repository: EndpointConnectionError"):
        list(closed.list(""))
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    anonymous = S3Backend(S3Settings(bucket="b-b-b", endpoint_url=s3_server))
    with pytest.raises(S3Unavailable, match="no AWS credentials"):
        anonymous.exists("config")


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"BACKUP_S3_ADDRESSING": "sideways"}, "BACKUP_S3_ADDRESSING: must be one of auto, path, virtual"),
        ({"BACKUP_S3_STORAGE_CLASS": "COLD"}, "BACKUP_S3_STORAGE_CLASS: must be one of"),
        ({"BACKUP_S3_CONNECTIONS": "0"}, "BACKUP_S3_CONNECTIONS: must be a whole number from 1 to 64"),
        ({"BACKUP_S3_CHECK_ETAG": "maybe"}, "BACKUP_S3_CHECK_ETAG: must be true or false"),
    ],
)
def test_bad_settings_name_the_variable(env, message):
    from sidecar.errors import InvalidRequest

    with pytest.raises(InvalidRequest) as err:
        S3Settings.from_url("s3://bucket/prefix", env)
    assert message in err.value.message


def test_settings_from_the_url_and_environment():
    settings = S3Settings.from_url(
        "s3://my-bucket/a/b/",
        {
            "BACKUP_S3_ENDPOINT_URL": "http://minio:9000",
            "BACKUP_S3_REGION": "eu-central-1",
            "BACKUP_S3_ADDRESSING": "path",
            "BACKUP_S3_STORAGE_CLASS": "standard_ia",
            "BACKUP_S3_CONNECTIONS": "8",
        },
    )
    assert (settings.bucket, settings.prefix, settings.location) == ("my-bucket", "a/b", "s3://my-bucket/a/b")
    assert (settings.endpoint_url, settings.region, settings.addressing) == (
        "http://minio:9000",
        "eu-central-1",
        "path",
    )
    assert (settings.storage_class, settings.connections, settings.check_etag) == ("STANDARD_IA", 8, True)
    assert S3Settings.from_url("s3://b", {"AWS_REGION": "us-west-2"}).region == "us-west-2"
    from sidecar.errors import InvalidRequest

    with pytest.raises(InvalidRequest, match="no bucket"):
        S3Settings.from_url("s3:///prefix", {})


# ---- the cache --------------------------------------------------------------------------------


def s3_repo(endpoint: str, tmp_path: Path, bucket: str, data_dir: Path) -> Repository:
    env = {**os.environ, "BACKUP_DATA_DIR": str(data_dir), "AWS_ENDPOINT_URL_S3": endpoint}
    return Repository.open(open_backend(f"s3://{bucket}/repo", env), b"pw")


def test_the_cache_serves_metadata_and_can_be_deleted(s3_env, s3_server, tmp_path):
    proxy = FaultyProxy(s3_server, rate=0.0)
    try:
        bucket = bucket_name()
        env = {**os.environ, "BACKUP_DATA_DIR": str(tmp_path / "d"), "AWS_ENDPOINT_URL_S3": proxy.url}
        backend = open_backend(f"s3://{bucket}/repo", env)
        assert isinstance(backend, CachedBackend)
        backend.create_bucket()
        Repository.init(backend, b"pw")
        src = tmp_path / "src"
        (src / "d").mkdir(parents=True)
        for i in range(50):
            (src / "d" / f"f{i}").write_text(f"file {i}\n" * 100)
        for _ in range(2):
            repo = Repository.open(open_backend(f"s3://{bucket}/repo", env), b"pw")
            with BackupSession(repo, BackupOptions(app_id="a", workers=1)) as session:
                session.add_tree("volume:data", str(src), kind="volume")
                session.commit()
        proxy.reset_counts()
        repo = Repository.open(open_backend(f"s3://{bucket}/repo", env), b"pw")
        snaps = repo.list_snapshots()
        assert len(snaps) == 2
        gets = [line for line in proxy.log if line.startswith("GET") and "list-type" not in line]
        assert [g for g in gets if "/snapshots/" in g or "/index/" in g] == []  # from the cache
        # the listing of the newest snapshot: its tree groups come from the cache as well
        from sidecar.repo import tree

        ids = [bytes.fromhex(h) for h in snaps[-1].sources[0].tree]
        proxy.reset_counts()
        entries = list(tree.read_tree(ids, repo.load_blob))
        assert len(entries) >= 50 and not [g for g in proxy.log if g.startswith("GET") and "/data/" in g]
        # a damaged cached object is noticed and read again; a deleted cache is only slower
        cached = next((tmp_path / "d" / "cache").rglob("snapshots/*"))
        cached.write_bytes(b"garbage")
        assert len(Repository.open(open_backend(f"s3://{bucket}/repo", env), b"pw").list_snapshots()) == 2
        import shutil

        shutil.rmtree(tmp_path / "d" / "cache")
        assert len(Repository.open(open_backend(f"s3://{bucket}/repo", env), b"pw").list_snapshots()) == 2
    finally:
        proxy.close()


def test_the_cache_stays_under_its_bound(s3_env, s3_server, tmp_path):
    inner = make(s3_server, tmp_path)
    cache = CachedBackend(inner, tmp_path / "cache", max_bytes=50_000)
    import hashlib

    names = []
    for i in range(20):
        body = os.urandom(10_000) + bytes([i])
        name = f"index/{hashlib.sha256(body).hexdigest()}"
        cache.put(name, body)
        names.append((name, body))
    stored = sum(p.stat().st_size for p in (tmp_path / "cache").rglob("*") if p.is_file())
    assert stored <= 50_000
    for name, body in names:  # evicted or not, every object reads back right
        assert cache.get(name) == body
