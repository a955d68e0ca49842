"""What the program creates is its owner's alone: the local repository (objects 0600,
directories 0700, key files included), the catalog and exports; restored files still
get exactly the modes their snapshot holds."""

from __future__ import annotations

import os
import stat

from tests.conftest import assert_same_tree, run_cli


def modes(root) -> set[tuple[str, int]]:
    out = set()
    for dirpath, dirs, files in os.walk(root):
        for name in dirs:
            out.add(("d", stat.S_IMODE(os.lstat(os.path.join(dirpath, name)).st_mode)))
        for name in files:
            out.add(("f", stat.S_IMODE(os.lstat(os.path.join(dirpath, name)).st_mode)))
    return out


def test_repository_catalog_and_exports_are_private_and_restores_exact(tmp_path):
    repo, data = tmp_path / "repo", tmp_path / "data"
    env = {"BACKUP_DATA_DIR": str(data)}
    assert run_cli("init", "--repo", repo, env=env).code == 0
    src = tmp_path / "src"
    (src / "public").mkdir(parents=True)
    (src / "public" / "index.html").write_text("hello\n")
    os.chmod(src / "public" / "index.html", 0o644)
    os.chmod(src / "public", 0o755)
    os.chmod(src, 0o755)
    assert run_cli("backup", "--repo", repo, "--path", src, "--app-id", "m", env=env).code == 0
    assert modes(repo) == {("d", 0o700), ("f", 0o600)}
    assert stat.S_IMODE(os.stat(repo).st_mode) == 0o700
    assert any(p.name for p in (repo / "keys").iterdir())
    rebuilt = run_cli("catalog", "rebuild", "--repo", repo, env=env)
    assert rebuilt.code == 0, rebuilt.err
    assert stat.S_IMODE(os.stat(data / "catalog.db").st_mode) == 0o600
    out = tmp_path / "export.tar"
    assert run_cli("export", "latest", "--repo", repo, "--output", out, env=env).code == 0
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600
    target = tmp_path / "restored"
    assert run_cli("restore", "latest", "--repo", repo, "--target", target, env=env).code == 0
    assert_same_tree(src, target)
    assert stat.S_IMODE(os.stat(target / "public" / "index.html").st_mode) == 0o644
