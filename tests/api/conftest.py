"""An API over a real repository and catalog (SQLite; the PostgreSQL variant is in
test_api.py), without Docker: apps come from tests/integration/test_api_apps.py."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sidecar.api import create_app
from sidecar.catalog import Catalog, RepositoryInfo, open_catalog
from sidecar.catalog.db import close_catalog
from sidecar.docker.apps import Registry
from sidecar.jobs.runner import JobRunner
from sidecar.operations import Operations
from sidecar.repo.backends.local import LocalBackend
from sidecar.repo.backup import BackupOptions, BackupSession
from sidecar.repo.repository import Repository

API_KEY = "test-api-key-" + "k" * 20
PASSPHRASE = b"api test passphrase"


@dataclass
class ApiEnv:
    ops: Operations
    repo_path: Path
    tmp: Path

    def repo(self) -> Repository:
        return Repository.open(LocalBackend(self.repo_path), PASSPHRASE)

    def back_up(self, app_id: str, content: bytes = b"hello", name: str = "f.txt") -> str:
        """A snapshot made with the engine and recorded in the catalog; returns its backup_id."""
        src = self.tmp / f"src-{app_id}"
        src.mkdir(exist_ok=True)
        (src / name).write_bytes(content)
        repo = self.repo()
        with BackupSession(repo, BackupOptions(app_id=app_id, app_name=app_id.upper())) as session:
            session.add_tree("volume:data", str(src), kind="volume")
            snap = session.commit()
        self.ops.catalog.record_snapshot(snap, self.ops.repo_info)
        return snap.backup_id


def make_env(tmp_path: Path, catalog_url: str, **ops_args) -> ApiEnv:
    repo_path = tmp_path / "repo"
    Repository.init(LocalBackend(repo_path), PASSPHRASE)
    open_catalog(catalog_url)
    catalog = Catalog()
    ops = Operations(
        catalog=catalog,
        runner=JobRunner(catalog, 2),
        open_repo=lambda: Repository.open(LocalBackend(repo_path), PASSPHRASE),
        repo_info=RepositoryInfo(str(repo_path), "local", True),
        state_dir=tmp_path / "state",
        **ops_args,
    )
    return ApiEnv(ops, repo_path, tmp_path)


def sqlite_env(tmp_path: Path, **ops_args) -> Iterator[ApiEnv]:
    """An ApiEnv on a SQLite catalog for a fixture to yield from; closed afterwards."""
    e = make_env(tmp_path, f"sqlite:///{tmp_path / 'catalog.db'}", **ops_args)
    yield e
    e.ops.runner.shutdown()
    close_catalog()


def fake_host(shop_labels: dict[str, str] | None = None) -> Registry:
    """Apps as the registry would see them on a Docker host (no Docker client): "shop" with a
    volume and a label schedule (or `shop_labels`), "blog" with a label error."""
    from tests.docker.test_apps import FakeClient, inspect, volume

    client = FakeClient()
    client.api.volumes_by_name["shop_data"] = volume("shop_data", "data")
    labels = shop_labels or {"websoft9.backup.schedule": "@daily"}
    client.add(inspect("c1", "shop_web_1", "shop", labels, [("shop_data", "/d")]))
    client.add(inspect("c2", "blog_web_1", "blog", {"websoft9.backup.schedule": "sometimes"}))
    registry = Registry(log_changes=False)
    registry.inventory(client)
    return registry


@pytest.fixture
def env(tmp_path: Path) -> Iterator[ApiEnv]:
    yield from sqlite_env(tmp_path)


@pytest.fixture
def client(env: ApiEnv):
    app = create_app(env.ops, API_KEY)
    app.testing = True
    c = app.test_client()
    c.environ_base["HTTP_X_API_KEY"] = API_KEY
    return c


@pytest.fixture
def live_server(env: ApiEnv) -> Iterator[str]:
    """The same app on a real HTTP server (waitress) on 127.0.0.1, random port."""
    from waitress.server import create_server

    server = create_server(create_app(env.ops, API_KEY), host="127.0.0.1", port=0, threads=4)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.effective_port}"
    server.close()
    thread.join(timeout=5)
