"""The main job, end to end, on this machine: what `scripts/dev run` does.

Creates a repository under .demo/ (the passphrase is generated once and kept
in .demo/passphrase, mode 0600) and 50 MiB of app-shaped data in .demo/data
(bench/dataset.py: text, media, a SQL dump and every awkward file type),
backs it up, restores the latest snapshot into .demo/restore, verifies the
repository and checks that the restore is identical. Run it again: the data
changes like a day of use and the backup is incremental.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import dataset  # noqa: E402
from bench.treecompare import compare  # noqa: E402

DEMO = ROOT / ".demo"


def cli(*args: str, password_file: Path) -> None:
    cmd = [sys.executable, "-m", "sidecar", *args, "--password-file", str(password_file)]
    print("$ websoft9-backup " + " ".join(args), flush=True)
    result = subprocess.run(cmd, cwd=ROOT)
    if result.returncode not in (0, 3):
        sys.exit(result.returncode)


def main() -> None:
    DEMO.mkdir(exist_ok=True)
    password = DEMO / "passphrase"
    if not password.exists():
        password.write_text(secrets.token_urlsafe(24) + "\n")
        password.chmod(0o600)
    repo = DEMO / "repository"
    if not (repo / "config").exists():
        cli("init", "--repo", str(repo), password_file=password)
    source = DEMO / "data"
    if source.exists():
        runs = len(list(DEMO.glob("run-*")))
        dataset.mutate(str(source), seed=100 + runs)
        (DEMO / f"run-{runs}").touch()
    else:
        dataset.create(str(source), size_mb=50)
    cli("backup", "--repo", str(repo), "--path", str(source), "--app-id", "demo", password_file=password)
    cli("snapshots", "--repo", str(repo), password_file=password)
    target = DEMO / "restore"
    cli("restore", "--repo", str(repo), "latest", "--app-id", "demo", "--target", str(target), password_file=password)
    cli("check", "--repo", str(repo), "--read-data", password_file=password)
    problems = compare(source, target)
    for line in problems[:20]:
        print(line)
    print("restore is identical to the source" if not problems else f"{len(problems)} differences")
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    os.umask(0o022)
    main()
