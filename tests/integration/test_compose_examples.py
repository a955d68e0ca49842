"""The compose examples an operator starts from: each passes `docker-compose config`,
and the websoft9.backup labels of each app parse without an error (the sidecar's
own service says enable=false)."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import yaml

from sidecar.labels import parse_labels
from tests.conftest import ROOT
from tests.integration.conftest import CI

EXAMPLES = sorted(p.parent for p in (ROOT / "compose-examples").glob("*/docker-compose.yml"))


def test_there_are_the_four_examples():
    assert [p.name for p in EXAMPLES] == ["catalog-postgres", "gitea-postgres", "s3-minio", "wordpress-mysql"]


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_an_example_is_valid_compose_with_valid_labels(example):
    if shutil.which("docker-compose") is None:
        if CI:
            pytest.fail("docker-compose is missing")
        pytest.skip("docker-compose is missing")
    checked = subprocess.run(["docker-compose", "config"], cwd=example, capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stderr
    doc = yaml.safe_load(checked.stdout)
    labels = {name: svc.get("labels") or {} for name, svc in doc["services"].items()}
    app = {name: lab for name, lab in labels.items() if lab.get("websoft9.backup.enable") != "false"}
    policy = parse_labels(app)
    assert policy.errors == (), [str(e) for e in policy.errors]
    assert policy.enabled is True
    assert labels["backup"].get("websoft9.backup.enable") == "false"
    backup = doc["services"]["backup"]
    mounts = " ".join(str(v) for v in backup["volumes"])
    assert "/var/run/docker.sock" in mounts and "/var/lib/docker/volumes" in mounts
    assert "BACKUP_ENCRYPTION_KEY" not in (backup.get("environment") or {})  # secrets from files, not inline
    assert (example / "README.md").read_text().startswith("# ")
