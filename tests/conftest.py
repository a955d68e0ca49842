"""Fixtures shared by the tests: run the CLI, make repositories and data sets."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import configuration

ROOT = Path(__file__).resolve().parents[1]
# hypothesis keeps caches (constants, unicode data) under ./.hypothesis even without an example
# database: keep them out of the working tree
configuration.set_hypothesis_home_dir(
    os.environ.get("HYPOTHESIS_STORAGE_DIRECTORY") or os.path.join(tempfile.gettempdir(), "websoft9-backup-hypothesis")
)
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # bench.dataset and bench.treecompare

from bench import dataset, treecompare  # noqa: E402
from tests.postgres import catalog_url, postgres_server, postgres_url  # noqa: E402, F401
from tests.s3 import s3_env, s3_server  # noqa: E402, F401

PASSWORD = "correct horse battery staple"
RUN_ENV: dict[str, str] = {}  # added to every run_cli environment (an S3 repository's data dir)


@dataclass
class CliResult:
    code: int
    out: str
    err: str

    def json(self):
        return json.loads(self.out)


def run_cli(
    *args: str,
    password: str | None = PASSWORD,
    env: dict | None = None,
    input: bytes | None = None,
    timeout: float = 300,
) -> CliResult:
    """Run `python -m sidecar ARGS` as a user would, with the passphrase in the environment."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("BACKUP_")}
    if password is not None:
        full_env["BACKUP_ENCRYPTION_KEY"] = password
    full_env.update(RUN_ENV)
    full_env.update(env or {})
    proc = subprocess.run(
        [sys.executable, "-m", "sidecar", *map(str, args)],
        input=input,
        capture_output=True,
        env=full_env,
        timeout=timeout,
        cwd=ROOT,
    )
    return CliResult(proc.returncode, proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace"))


@pytest.fixture
def cli():
    return run_cli


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """`@pytest.mark.backends("local", "s3")` (on a test or a module): the test runs once
    per back end, its `repo` fixture being a local path, then an s3:// URL."""
    marker = metafunc.definition.get_closest_marker("backends")
    if marker is not None and "repo" in metafunc.fixturenames:
        metafunc.parametrize("repo", marker.args, indirect=True)


@pytest.fixture
def repo(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path | str:
    """An initialised, empty repository: a local path, or (parametrized "s3") an
    s3:// URL on the tests' moto server, with its cache in tmp_path."""
    if getattr(request, "param", "local") == "s3":
        from tests.s3 import new_bucket_url

        request.getfixturevalue("s3_env")
        monkeypatch.setitem(RUN_ENV, "BACKUP_DATA_DIR", str(tmp_path / "w9data"))
        location: Path | str = new_bucket_url()
    else:
        location = tmp_path / "repo"
    result = run_cli("init", "--repo", location)
    assert result.code == 0, result.err
    return location


def backend_of(repo: Path | str):  # type: ignore[no-untyped-def]
    """The back end of a `repo` fixture's repository, as the CLI opens it."""
    from sidecar.repo.backends.base import open_backend

    return open_backend(str(repo), {**os.environ, **RUN_ENV})


@pytest.fixture(scope="session")
def dataset_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 6 MiB data set made once per session; copy it (`copy_tree`) before changing it."""
    path = tmp_path_factory.mktemp("template") / "data"
    dataset.create(str(path), size_mb=6, seed=1)
    return path


def copy_tree(src: Path, dst: Path) -> Path:
    """An exact copy (owners, modes, times, links, xattrs) with cp -a."""
    subprocess.run(["cp", "-a", "--", str(src), str(dst)], check=True)
    return dst


@pytest.fixture
def data(dataset_template: Path, tmp_path: Path) -> Path:
    """A private copy of the session data set, free to change."""
    return copy_tree(dataset_template, tmp_path / "data")


def assert_same_tree(original: Path, restored: Path) -> None:
    problems = treecompare.compare(str(original), str(restored))
    assert not problems, "\n".join(problems[:30])


@pytest.fixture
def same_tree():
    return assert_same_tree


@pytest.fixture
def snapshot_copy(tmp_path: Path):
    """Keep a copy of a tree as it is now (to compare a later restore against)."""
    counter = iter(range(1000))

    def take(src: Path) -> Path:
        return copy_tree(src, tmp_path / f"state-{next(counter)}")

    return take


def is_root() -> bool:
    return os.geteuid() == 0
