"""The configuration file: the epic's shape, ${VAR}, the environment winning, every
error on a line of its own naming the key, `config show` masking secrets, and the
file's values reaching the commands (repository, compression, limits, defaults)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from sidecar.configfile import apply, effective, load
from sidecar.errors import InvalidRequest
from tests.conftest import PASSWORD, ROOT, run_cli

EPIC = """
# config/backup.yaml, as the epic has it
backup:
  storage:
    local_path: "/var/websoft9/backups"
    s3_bucket: "${BACKUP_S3_BUCKET}"
    s3_region: "us-east-1"

  encryption:
    enabled: true
    key: "${BACKUP_ENCRYPTION_KEY}"

  compression:
    enabled: true
    algorithm: "gzip"
    level: 6

  defaults:
    backup_type: "full"
    retention_days: 30
    storage_location: "local"

  limits:
    max_concurrent_backups: 2
    max_backup_size_gb: 50
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "backup.yaml"
    path.write_text(text)
    return path


def test_the_epics_file_is_read_as_it_is(tmp_path):
    env = {"BACKUP_ENCRYPTION_KEY": "k" * 20}  # BACKUP_S3_BUCKET unset: empty, as in a shell
    config = load(write(tmp_path, EPIC), env)
    assert config.applied == {
        "BACKUP_S3_REGION": "us-east-1",
        "BACKUP_ENCRYPTION_KEY": "k" * 20,
        "BACKUP_DEFAULT_BACKUP_TYPE": "full",
        "BACKUP_MAX_CONCURRENT_BACKUPS": "2",
        "BACKUP_MAX_BACKUP_SIZE_GB": "50",
        "BACKUP_REPOSITORY": "/var/websoft9/backups",
        "BACKUP_COMPRESSION_LEVEL": "3",
        "BACKUP_RETENTION": "days=30",
    }
    assert "storage.s3_bucket" not in config.values
    assert any("gzip" in note and "zstd at level 3" in note for note in config.notes)


def test_the_shipped_example_is_valid():
    env = {"BACKUP_ENCRYPTION_KEY": "x" * 20, "BACKUP_S3_BUCKET": "my-backups"}
    config = load(ROOT / "config" / "backup.yaml", env)
    assert config.applied["BACKUP_REPOSITORY"] == "/var/lib/websoft9-backup/repository"
    assert config.applied["BACKUP_COMPRESSION_LEVEL"] == "3" and config.notes == []
    s3 = load(ROOT / "config" / "backup.yaml", {**env, "X": "1"})
    assert s3.values["storage.s3_bucket"] == "my-backups"


def test_s3_storage_location_makes_the_repository_url(tmp_path):
    text = """
backup:
  storage: {s3_bucket: "${BUCKET}", s3_prefix: "/hosts/web1/", s3_endpoint_url: "http://minio:9000"}
  defaults: {storage_location: s3}
"""
    config = load(write(tmp_path, text), {"BUCKET": "team-backups"})
    assert config.applied["BACKUP_REPOSITORY"] == "s3://team-backups/hosts/web1"
    assert config.applied["BACKUP_S3_ENDPOINT_URL"] == "http://minio:9000"


def test_the_environment_wins_over_the_file(tmp_path):
    config = load(write(tmp_path, "backup:\n  limits:\n    max_concurrent_backups: 4\n"), {})
    environ = {"BACKUP_MAX_CONCURRENT_BACKUPS": "1"}
    assert apply(config, environ) == ["BACKUP_MAX_CONCURRENT_BACKUPS"]
    assert environ["BACKUP_MAX_CONCURRENT_BACKUPS"] == "1"
    rows = {k: (v, s) for k, v, s in effective(config, environ)}
    assert rows["limits.max_concurrent_backups"] == (1, "env BACKUP_MAX_CONCURRENT_BACKUPS")
    environ = {}
    assert apply(config, environ) == [] and environ == {"BACKUP_MAX_CONCURRENT_BACKUPS": "4"}


def test_every_problem_is_one_line_naming_its_key(tmp_path):
    text = """
backup:
  storage:
    s3_buckett: x
  limits:
    max_concurrent_backups: 0
    max_backup_size_gb: lots
  compression:
    level: high
    algorithm: brotli
  encryption:
    enabled: false
  defaults:
    storage_location: s3
    backup_type: weekly
  scheduler:
    timezone: Mars/Olympus
    jitter: soon
  prune:
    schedule: sometimes
  colour: blue
"""
    with pytest.raises(InvalidRequest) as err:
        load(write(tmp_path, text), {})
    lines = err.value.message.splitlines()
    assert lines[0].endswith("backup.yaml:")
    expected = [
        "backup.storage.s3_buckett: unknown key (known here: local_path, s3_bucket,",
        "backup.limits.max_concurrent_backups: must be from 1 to 64, got 0",
        "backup.limits.max_backup_size_gb: must be a whole number, got 'lots'",
        "backup.compression.level: must be a whole number, got 'high'",
        "backup.compression.algorithm: must be one of zstd, gzip, got 'brotli'",
        "backup.encryption.enabled: false is not supported",
        "backup.defaults.backup_type: must be one of incremental, full, differential, got 'weekly'",
        "backup.storage.s3_bucket: needed with defaults.storage_location s3",
        "backup.scheduler.timezone: unknown time zone 'Mars/Olympus'",
        "backup.scheduler.jitter: not a duration: 'soon'",
        "backup.prune.schedule: schedule 'sometimes' is not a valid cron expression",
        "backup.colour: unknown key",
    ]
    for want in expected:
        assert sum(line.strip().startswith(want) for line in lines[1:]) == 1, (want, lines)
    assert len(lines) == 1 + len(expected)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("backup:\n  storage: [1\n", "(line 3): expected ',' or ']'"),
        ("- just\n- a list\n", "one top-level key, backup:"),
        ("backup:\n  limits: 5\n", "backup.limits: unknown key"),
    ],
)
def test_a_file_that_is_not_a_configuration(tmp_path, text, message):
    with pytest.raises(InvalidRequest) as err:
        load(write(tmp_path, text), {})
    assert message in err.value.message


def test_the_commands_use_the_file_and_show_it_with_secrets_masked(tmp_path):
    repo = tmp_path / "from-file"
    secret_api_key = "api-" + "s" * 30
    text = f"""
backup:
  data_dir: "{tmp_path / "data"}"
  storage:
    local_path: "{repo}"
  encryption:
    key: "${{MY_KEY}}"
  compression:
    level: 9
  api:
    key: "{secret_api_key}"
  catalog:
    url: "postgresql://w9:hunter2@db:5432/backups"
"""
    path = write(tmp_path, text)
    env = {"MY_KEY": PASSWORD}
    assert run_cli("init", "--config", path, password=None, env=env).code == 0
    assert (repo / "config").exists()  # the repository the file names
    src = tmp_path / "src"
    src.mkdir()
    (src / "f.txt").write_text("configured\n" * 1000)
    done = run_cli("backup", "--config", path, "--path", src, "--app-id", "cfg", "--json", password=None, env=env)
    assert done.code == 0, done.err
    shown = run_cli("config", "show", "--config", path, password=None, env={**env, "BACKUP_COMPRESSION_LEVEL": "5"})
    assert shown.code == 0, shown.err
    for secret in (PASSWORD, secret_api_key, "hunter2"):
        assert secret not in shown.out + shown.err
    assert 'key: "***"' in shown.out and "postgresql://w9:***@db:5432/backups" in shown.out
    assert 'level: "5"  # env BACKUP_COMPRESSION_LEVEL overrides it' in shown.out
    as_json = json.loads(
        run_cli("config", "show", "--config", path, "--json", password=None, env=env).out
    )  # fmt: skip
    assert as_json["settings"]["compression.level"] == {"value": 9, "from": "file"}
    assert as_json["settings"]["storage.local_path"]["value"] == str(repo)
    # BACKUP_CONFIG finds it too; a file that is not there is an error, not a silent default
    listed = run_cli("snapshots", "--json", password=None, env={**env, "BACKUP_CONFIG": str(path)})
    assert listed.code == 0 and len(json.loads(listed.out)) == 1
    missing = run_cli("snapshots", "--config", tmp_path / "nope.yaml")
    assert missing.code == 1 and "nope.yaml: No such file or directory" in missing.err


def test_a_backup_over_max_backup_size_gb_is_refused(tmp_path, repo):
    src = tmp_path / "big"
    src.mkdir()
    with open(src / "sparse.img", "wb") as f:  # 1.2 GB of zeros, no disk used
        f.truncate(1_200_000_000)
    config = write(tmp_path, "backup:\n  limits:\n    max_backup_size_gb: 1\n")
    result = run_cli("backup", "--config", config, "--repo", repo, "--path", src, "--app-id", "big")
    assert result.code == 1 and "BACKUP_QUOTA_EXCEEDED" in result.err and "max_backup_size_gb (1 GB)" in result.err
    assert json.loads(run_cli("snapshots", "--repo", repo, "--json").out) == []


def test_defaults_backup_type_is_the_type_of_apps_whose_labels_say_none(monkeypatch):
    from sidecar.labels import parse_labels

    monkeypatch.setenv("BACKUP_DEFAULT_BACKUP_TYPE", "full")
    assert parse_labels({"web": {"websoft9.backup.enable": "true"}}).backup_type == "full"
    assert parse_labels({"web": {"websoft9.backup.type": "differential"}}).backup_type == "differential"
    monkeypatch.delenv("BACKUP_DEFAULT_BACKUP_TYPE")
    assert parse_labels({"web": {"websoft9.backup.enable": "true"}}).backup_type == "incremental"
    assert os.environ.get("BACKUP_DEFAULT_BACKUP_TYPE") is None
