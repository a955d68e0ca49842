"""Backups of real compose apps: volumes through both access paths, hooks, stop/start."""

from __future__ import annotations

import time

import pytest

from bench.treecompare import compare
from sidecar.docker.apps import ContainerInfo, VolumeInfo, build_app
from sidecar.errors import BackupCreateFailed
from sidecar.jobs.backup import StoppedLedger, backup_app, volume_source_name
from sidecar.repo import tree
from tests.conftest import run_cli
from tests.integration.conftest import TEST_IMAGE, job_context, service, volume_path

WEB_DATA = (
    "mkdir -p /var/www/html/wp-content/uploads /var/www/html/empty && cd /var/www/html"
    " && printf '<?php echo 1;' > index.php"
    " && printf 'define(DB_PASSWORD, x);' > wp-config.php && chmod 0600 wp-config.php"
    " && head -c 300000 /dev/urandom > wp-content/uploads/photo.jpg"
    " && ln -s wp-content/uploads/photo.jpg latest.jpg && ln index.php index-hard.php"
    " && chmod 4755 empty && chown -R 33:33 /var/www/html"
    " && touch -d '2021-02-03 04:05:06.789' index.php"
)
WORKER_DATA = (
    "mkdir -p /srv/queue/done && cd /srv/queue && head -c 6000000 /dev/urandom > big.bin"
    " && echo job > done/1.json && chmod 0600 done/1.json && mkfifo pipe"
)


def _two_container_app(compose, worker_labels=None, web_labels=None):
    compose.write(
        {
            "web": service(
                labels={"websoft9.backup.schedule": "@daily", **(web_labels or {})}, volumes=["html:/var/www/html"]
            ),
            "worker": service(labels=worker_labels or {}, volumes=["queue:/srv/queue"]),
        },
        volumes=["html", "queue"],
    )
    compose.up()
    compose.exec("web", WEB_DATA)
    compose.exec("worker", WORKER_DATA)


def _listing(repo, snapshot, source):
    """A source's entries without what only a walk knows (inode, ctime), mtimes in whole seconds."""
    out = []
    for e in tree.read_tree([bytes.fromhex(h) for h in snapshot.source(source).tree], repo.load_blob):
        e = {k: v for k, v in e.items() if k not in ("inode", "ctime_ns")}
        e["mtime_ns"] //= 10**9
        out.append(e)
    return out


def _fresh_container(client, volumes: dict[str, str]):
    container = client.containers.run(
        TEST_IMAGE,
        ["sleep", "infinity"],
        detach=True,
        init=True,
        network_mode="none",
        volumes={name: {"bind": dest, "mode": "rw"} for name, dest in volumes.items()},
    )
    return container


@pytest.mark.parametrize("mode", ["host", "archive"])
def test_two_container_app_backs_up_and_restores_into_fresh_volumes_identically(
    mode, compose, registry, docker_client, local_repo, tmp_path
):
    _two_container_app(compose)
    registry.inventory(docker_client)
    app = registry.require(compose.name)
    result = backup_app(job_context(docker_client, local_repo, tmp_path / "state", mode), app)
    snap = result.snapshot
    assert {v["access"] for v in result.volumes} == {mode}
    assert sorted(s.name for s in snap.sources) == ["volume:html", "volume:queue"]
    assert snap.app_id == compose.name and snap.backup_type == "full"
    assert snap.warnings == []

    fresh = {f"{compose.name}_restored_{key}": dest for key, dest in (("html", "/var/www/html"), ("queue", "/srv/q"))}
    helper = _fresh_container(docker_client, fresh)
    try:
        helper.reload()
        info = ContainerInfo.from_inspect(helper.attrs)
        vols = {n: VolumeInfo.from_inspect(docker_client.api.inspect_volume(n)) for n in fresh}
        target_app = build_app("restore-target", [info], vols)
        access = job_context(docker_client, local_repo, tmp_path / "state", mode).volume_access
        for key in ("html", "queue"):
            name = f"{compose.name}_restored_{key}"
            access.restore(local_repo, snap, volume_source_name(key), target_app, vols[name])
            original = volume_path(docker_client, compose.volume(key))
            restored = volume_path(docker_client, name)
            # Docker's archive API carries whole seconds: compare mtimes at that resolution there
            unit = 1 if mode == "host" else 10**9
            problems = compare(original, restored, mtime_unit_ns=unit)
            assert problems == [], f"{key} ({mode}): {problems[:10]}"
    finally:
        helper.remove(force=True, v=False)
        for name in fresh:
            docker_client.api.remove_volume(name, force=True)


def test_host_and_archive_paths_record_the_same_tree(compose, registry, docker_client, local_repo, tmp_path):
    _two_container_app(compose)
    registry.inventory(docker_client)
    app = registry.require(compose.name)
    via_host = backup_app(job_context(docker_client, local_repo, tmp_path / "s", "host"), app).snapshot
    via_archive = backup_app(job_context(docker_client, local_repo, tmp_path / "s", "archive"), app).snapshot
    for source in ("volume:html", "volume:queue"):
        host_entries = _listing(local_repo, via_host, source)
        assert len(host_entries) >= 5
        assert host_entries == _listing(local_repo, via_archive, source)
    # the walk kept nanoseconds; the archive API whole seconds
    host_index = {
        tree.entry_path(e): e
        for e in tree.read_tree([bytes.fromhex(h) for h in via_host.source("volume:html").tree], local_repo.load_blob)
    }
    assert host_index[b"index.php"]["mtime_ns"] % 10**9 == 789_000_000
    assert host_index[b"wp-config.php"]["mode"] == 0o600 and host_index[b"wp-config.php"]["uid"] == 33
    assert host_index[b"empty"]["mode"] == 0o4755


def _running(client, name: str) -> bool:
    return bool(client.api.inspect_container(name)["State"]["Running"])


def test_stop_true_containers_are_stopped_during_the_read_and_running_after(
    compose, registry, docker_client, local_repo, tmp_path
):
    _two_container_app(compose, worker_labels={"websoft9.backup.stop": "true"})
    registry.inventory(docker_client)
    app = registry.require(compose.name)
    seen: dict[str, tuple[bool, bool]] = {}

    def on_phase(phase, _app):
        seen[phase] = (
            _running(docker_client, compose.container("worker")),
            _running(docker_client, compose.container("web")),
        )

    ctx = job_context(docker_client, local_repo, tmp_path / "state", on_phase=on_phase)
    backup_app(ctx, app)
    assert seen["stopped"] == (False, True)  # worker stopped, web (no label) left running
    assert seen["read"] == (False, True)
    assert seen["restarted"] == (True, True)
    assert _running(docker_client, compose.container("worker"))
    assert not list((tmp_path / "state").glob("stopped-*.json"))

    # a failing read: no snapshot, and the container runs again
    snapshots_before = len(local_repo.list_snapshots())

    def broken_read(*args, **kwargs):
        assert not _running(docker_client, compose.container("worker"))
        raise BackupCreateFailed("simulated read failure")

    ctx.volume_access.back_up = broken_read
    with pytest.raises(BackupCreateFailed, match="simulated read failure"):
        backup_app(ctx, app)
    assert _running(docker_client, compose.container("worker"))
    assert len(local_repo.list_snapshots()) == snapshots_before


def test_failing_post_hook_with_on_error_fail_restarts_and_records_nothing(
    compose, registry, docker_client, local_repo, tmp_path
):
    _two_container_app(
        compose,
        worker_labels={"websoft9.backup.stop": "true"},
        web_labels={"websoft9.backup.post": "echo flush failed >&2; exit 4", "websoft9.backup.post.on_error": "fail"},
    )
    registry.inventory(docker_client)
    app = registry.require(compose.name)
    with pytest.raises(BackupCreateFailed, match=r"post hook in .*web.* exited 4: flush failed"):
        backup_app(job_context(docker_client, local_repo, tmp_path / "state"), app)
    assert _running(docker_client, compose.container("worker"))
    assert local_repo.list_snapshots() == []


def test_failing_pre_hook_gives_no_snapshot_a_clear_error_and_post_hooks_still_run(
    compose, registry, docker_client, local_repo, tmp_path
):
    _two_container_app(
        compose,
        worker_labels={"websoft9.backup.stop": "true"},
        web_labels={
            "websoft9.backup.pre": "echo maintenance mode refused; exit 3",
            "websoft9.backup.post": "touch /var/www/html/post-ran",
        },
    )
    registry.inventory(docker_client)
    app = registry.require(compose.name)
    started_at = docker_client.api.inspect_container(compose.container("worker"))["State"]["StartedAt"]
    with pytest.raises(BackupCreateFailed) as failure:
        backup_app(job_context(docker_client, local_repo, tmp_path / "state"), app)
    message = str(failure.value)
    assert "pre hook in" in message and "exited 3" in message and "maintenance mode refused" in message
    assert local_repo.list_snapshots() == []
    compose.exec("web", "test -f /var/www/html/post-ran")
    # nothing was stopped: the pre hook failed first
    assert docker_client.api.inspect_container(compose.container("worker"))["State"]["StartedAt"] == started_at

    result = run_cli(
        "backup", "--repo", tmp_path / "cli", "--app", compose.name, env={"BACKUP_DATA_DIR": str(tmp_path / "d")}
    )
    assert result.code == 1 or "not a websoft9-backup repository" in result.err


def test_hook_over_its_timeout_is_killed_and_hook_user_and_output(
    compose, registry, docker_client, local_repo, tmp_path
):
    _two_container_app(
        compose,
        web_labels={
            "websoft9.backup.pre": "id -u; sleep 300; echo never",
            "websoft9.backup.pre.timeout": "2s",
            "websoft9.backup.pre.on_error": "continue",
            "websoft9.backup.pre.user": "33",
        },
    )
    registry.inventory(docker_client)
    app = registry.require(compose.name)
    t0 = time.monotonic()
    result = backup_app(job_context(docker_client, local_repo, tmp_path / "state"), app)
    assert time.monotonic() - t0 < 30
    [hook] = result.hooks
    assert hook.timed_out and hook.exit_code is None
    assert hook.output.splitlines()[0] == "33"  # ran as the hook's user
    assert "never" not in hook.output
    assert 1.9 <= hook.duration_s < 10
    assert result.snapshot.warnings and "timeout" in result.snapshot.warnings[0]["error"]
    time.sleep(0.5)
    processes = compose.exec("web", "cat /proc/[0-9]*/cmdline 2>/dev/null | tr '\\0' ' '")
    assert "sleep 300" not in processes, processes


def test_containers_left_stopped_by_a_crashed_backup_are_started_by_the_next_one(
    compose, registry, docker_client, tmp_path
):
    _two_container_app(compose, worker_labels={"websoft9.backup.stop": "true"})
    data = tmp_path / "data"
    state = data / "state"
    # what a backup killed between stopping and restarting leaves behind
    worker_id = docker_client.api.inspect_container(compose.container("worker"))["Id"]
    StoppedLedger(state, compose.name).add(worker_id)
    docker_client.api.stop(worker_id, timeout=2)
    assert not _running(docker_client, worker_id)

    env = {"BACKUP_DATA_DIR": str(data)}
    assert run_cli("init", "--repo", tmp_path / "repo", env=env).code == 0
    result = run_cli("backup", "--repo", tmp_path / "repo", "--app", compose.name, "--json", env=env)
    assert result.code == 0, result.err
    assert _running(docker_client, worker_id)
    assert not list(state.glob("stopped-*.json"))
    doc = result.json()
    assert {v["source"] for v in doc["volumes"]} == {"volume:html", "volume:queue"}
