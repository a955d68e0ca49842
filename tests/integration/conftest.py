"""A real Docker engine and docker-compose for the integration tests.

`scripts/test-env` (run by `scripts/dev test` and `.ci/run`) installs and
starts them and builds the test image. Without an engine these tests skip on
a developer's machine and fail under CI=true.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from sidecar.docker.apps import Registry
from sidecar.docker.client import connect
from sidecar.docker.volumes import VolumeAccess
from sidecar.errors import DockerUnavailable
from sidecar.jobs.backup import JobContext
from sidecar.repo.backends.local import LocalBackend
from sidecar.repo.repository import Repository

TEST_IMAGE = os.environ.get("W9_TEST_IMAGE", "websoft9-backup-test:1")
CI = os.environ.get("CI", "").lower() == "true"


def _unavailable(reason: str) -> None:
    if CI:
        pytest.fail(f"integration tests need a Docker engine and {TEST_IMAGE} under CI=true: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def docker_client():
    try:
        client = connect()
    except DockerUnavailable as exc:
        _unavailable(str(exc))
    try:
        client.images.get(TEST_IMAGE)
    except Exception:
        _unavailable(f"the test image {TEST_IMAGE} is missing (scripts/test-env image builds it)")
    if shutil.which("docker-compose") is None:
        _unavailable("docker-compose is not installed (scripts/test-env docker installs it)")
    yield client
    client.close()


def service(command: str = "sleep infinity", **extra) -> dict:
    """A compose service on the test image: no network, an init that stops at once."""
    doc = {
        "image": TEST_IMAGE,
        "command": ["sh", "-c", command],
        "init": True,
        "network_mode": "none",
        "stop_grace_period": "2s",
    }
    doc.update(extra)
    return doc


def _no_interpolation(value):
    """docker-compose replaces $VAR in every value with the host's variable: `$$` keeps a `$`."""
    if isinstance(value, str):
        return value.replace("$", "$$")
    if isinstance(value, dict):
        return {k: _no_interpolation(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_no_interpolation(v) for v in value]
    return value


class ComposeProject:
    """A compose project in a temporary directory, brought down (with its volumes) at the end."""

    def __init__(self, workdir: Path, name: str) -> None:
        self.dir = workdir
        self.name = name
        self.file = workdir / "docker-compose.yml"

    def write(self, services: dict, volumes: list[str] | None = None) -> None:
        doc: dict = {"version": "2.4", "services": _no_interpolation(services)}
        if volumes:
            doc["volumes"] = {v: {} for v in volumes}
        self.file.write_text(yaml.safe_dump(doc, sort_keys=False))

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["docker-compose", "-p", self.name, "-f", str(self.file), *args],
            capture_output=True,
            text=True,
            check=check,
            timeout=300,
        )

    def up(self) -> None:
        self.run("up", "-d", "--remove-orphans")

    def down(self) -> None:
        self.run("down", "-v", "--remove-orphans", "-t", "1", check=False)

    def container(self, service_name: str) -> str:
        return f"{self.name}_{service_name}_1"

    def volume(self, key: str) -> str:
        return f"{self.name}_{key}"

    def exec(self, service_name: str, command: str) -> str:
        out = subprocess.run(
            ["docker", "exec", self.container(service_name), "sh", "-c", command],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == 0, out.stderr
        return out.stdout


@pytest.fixture
def compose(docker_client, tmp_path: Path) -> Iterator[ComposeProject]:
    project = ComposeProject(tmp_path, "w9it" + secrets.token_hex(4))
    yield project
    project.down()


@pytest.fixture
def registry(docker_client) -> Registry:
    reg = Registry()
    reg.inventory(docker_client)
    return reg


@pytest.fixture
def local_repo(tmp_path: Path) -> Repository:
    return Repository.init(LocalBackend(tmp_path / "repo"), b"integration test key")


def job_context(client, repo: Repository, state_dir: Path, mode: str = "auto", **kw) -> JobContext:
    return JobContext(client, repo, state_dir, VolumeAccess(client, mode), **kw)


def volume_path(client, name: str) -> str:
    return client.api.inspect_volume(name)["Mountpoint"]
