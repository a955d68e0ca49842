"""Apps appear, change and disappear in the registry as their containers do."""

from __future__ import annotations

import time

import pytest

from sidecar.docker.apps import Registry
from sidecar.docker.client import EventWatcher
from sidecar.errors import AppPolicyInvalid
from sidecar.jobs.backup import backup_app
from tests.conftest import run_cli
from tests.integration.conftest import job_context, service


@pytest.fixture
def watched(docker_client):
    registry = Registry()
    watcher = EventWatcher(registry.inventory, registry.handle_event, backoff_max=2.0)
    watcher.start()
    assert watcher.wait_connected(20), "the watcher did not connect to the engine"
    yield registry, watcher
    watcher.stop()


def _policy_is(app_id: str, **fields):
    def check(reg: Registry) -> bool:
        app = reg.get(app_id)
        return app is not None and all(getattr(app.policy, k) == v for k, v in fields.items())

    return check


def test_app_is_discovered_within_two_seconds_of_its_start(watched, compose):
    registry, _ = watched
    compose.write(
        {
            "web": service(
                labels={"websoft9.backup.schedule": "0 3 * * *"},
                environment={"W9_APP_NAME": "My Blog"},
                volumes=["html:/var/www/html"],
            ),
            "db": service(labels={"websoft9.backup.db": "mariadb"}, volumes=["dbdata:/var/lib/mysql"]),
        },
        volumes=["html", "dbdata"],
    )
    compose.up()
    started = time.monotonic()
    assert registry.wait_for(
        lambda r: (
            (a := r.get(compose.name)) is not None and len(a.containers) == 2 and all(c.running for c in a.containers)
        ),
        2.0,
    ), f"app not discovered within 2 s: {registry.get(compose.name)}"
    assert time.monotonic() - started <= 2.0
    app = registry.get(compose.name)
    assert app.app_name == "My Blog"
    assert app.policy.managed and app.policy.schedule == "0 3 * * *"
    assert [d.container for d in app.policy.databases] == [compose.container("db")]
    assert {v.key for v in app.volumes} == {"html", "dbdata"}
    # the DB container's data volume is not copied file by file
    assert [v.key for v in app.backup_volumes()] == ["html"]


def test_recreated_with_new_labels_updates_the_policy_and_removal_forgets_the_app(watched, compose):
    registry, _ = watched
    compose.write({"web": service(labels={"websoft9.backup.schedule": "0 3 * * *"})})
    compose.up()
    assert registry.wait_for(_policy_is(compose.name, schedule="0 3 * * *"), 5)

    compose.write({"web": service(labels={"websoft9.backup.schedule": "@hourly", "websoft9.backup.type": "full"})})
    compose.up()  # compose re-creates the container: destroy + create + start
    assert registry.wait_for(_policy_is(compose.name, schedule="@hourly", backup_type="full"), 5), registry.get(
        compose.name
    )
    assert len(registry.get(compose.name).containers) == 1

    compose.down()
    assert registry.wait_for(lambda r: r.get(compose.name) is None, 5), "app still in the registry after down"


def test_label_typo_is_an_error_and_the_app_is_not_backed_up(watched, compose, local_repo, tmp_path, docker_client):
    registry, _ = watched
    compose.write(
        {"web": service(labels={"websoft9.backup.schedul": "0 3 * * *"}, volumes=["data:/data"])}, volumes=["data"]
    )
    compose.up()
    assert registry.wait_for(lambda r: r.get(compose.name) is not None, 5)
    app = registry.get(compose.name)
    assert not app.policy.managed
    [error] = app.policy.errors
    assert error.key == "websoft9.backup.schedul"
    assert "websoft9.backup.schedule" in error.why  # the suggestion
    assert app.to_dict()["errors"][0]["key"] == "websoft9.backup.schedul"

    with pytest.raises(AppPolicyInvalid, match=r"websoft9\.backup\.schedul"):
        backup_app(job_context(docker_client, local_repo, tmp_path / "state"), app)
    assert local_repo.list_snapshots() == []

    result = run_cli(
        "backup", "--repo", tmp_path / "cli-repo", "--app", compose.name, env={"BACKUP_DATA_DIR": str(tmp_path)}
    )
    assert result.code == 1
    assert "APP_POLICY_INVALID" in result.err and "websoft9.backup.schedul" in result.err
    assert "Traceback" not in result.err


def test_unknown_app_and_unreachable_engine_are_clear_errors(tmp_path, compose):
    init = run_cli("init", "--repo", tmp_path / "repo")
    assert init.code == 0, init.err
    result = run_cli(
        "backup", "--repo", tmp_path / "repo", "--app", "no-such-app", env={"BACKUP_DATA_DIR": str(tmp_path)}
    )
    assert result.code == 1
    assert "APP_NOT_FOUND" in result.err and "no-such-app" in result.err

    result = run_cli(
        "backup",
        "--repo",
        tmp_path / "repo",
        "--app",
        "x",
        env={"DOCKER_HOST": f"unix://{tmp_path}/nothing.sock", "BACKUP_DATA_DIR": str(tmp_path)},
    )
    assert result.code == 1
    assert "DOCKER_UNAVAILABLE" in result.err and "nothing.sock" in result.err
    assert "Traceback" not in result.err
