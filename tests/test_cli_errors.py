"""Bad input through the command line: a clear one-line error, the right exit code,
no traceback, no passphrase in the output, and nothing lost in the repository."""

from __future__ import annotations

import json
import os
import shutil
import site
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from sidecar.repo.backends.local import LocalBackend
from sidecar.repo.repository import Repository
from tests.conftest import PASSWORD, ROOT, CliResult, copy_tree

NOBODY = 65534


# ---- helpers ------------------------------------------------------------------------------


def clean(result: CliResult) -> CliResult:
    """No traceback and no passphrase in anything the program printed."""
    assert "Traceback" not in result.err, result.err
    assert "Traceback" not in result.out, result.out
    assert PASSWORD not in result.out and PASSWORD not in result.err
    return result


def ok(result: CliResult) -> CliResult:
    clean(result)
    assert result.code == 0, f"exit {result.code}\nstdout: {result.out}\nstderr: {result.err}"
    return result


def fails(result: CliResult, *words: str, code: int = 1) -> CliResult:
    """Exit `code`, one clear line on stderr that names the problem (no "unexpected" bug report)."""
    clean(result)
    assert result.code == code, f"exit {result.code}\nstdout: {result.out}\nstderr: {result.err}"
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    assert lines[0].startswith("error: "), result.err
    assert "unexpected" not in lines[0], result.err
    for w in words:
        assert w in lines[0], f"{w!r} not in {lines[0]!r}"
    return result


def repo_state(repo: Path) -> dict:
    """Every object of the repository: name -> bytes (it is small in these tests)."""
    return {str(p.relative_to(repo)): p.read_bytes() for p in sorted(repo.rglob("*")) if p.is_file()}


@pytest.fixture
def repo_with_snapshot(cli, repo, tmp_path) -> tuple[Path, str]:
    app = tmp_path / "app"
    (app / "sub").mkdir(parents=True)
    (app / "a.txt").write_text("hello\n")
    (app / "sub" / "b.bin").write_bytes(os.urandom(3000))
    snap = ok(cli("backup", "--repo", repo, "--path", app, "--json")).json()["snapshot_id"]
    return repo, snap


def assert_repo_intact(cli, repo: Path, before: dict, snapshots: int = 1) -> None:
    assert repo_state(repo) == before
    listed = ok(cli("snapshots", "--repo", repo, "--json")).json()
    assert len(listed) == snapshots
    r = ok(cli("check", "--repo", repo, "--read-data"))
    assert "no errors" in r.out


# ---- passphrases -----------------------------------------------------------------------------


def test_wrong_passphrase(cli, repo_with_snapshot, tmp_path):
    repo, snap = repo_with_snapshot
    before = repo_state(repo)
    for args in (
        ("snapshots",),
        ("backup", "--path", tmp_path / "app"),
        ("restore", snap, "--target", tmp_path / "t"),
        ("check",),
        ("prune",),
        ("forget", snap),
        ("key", "list"),
        ("key", "export"),
        ("unlock",),
    ):
        r = fails(cli(*args, "--repo", repo, password="not the passphrase"), "wrong encryption key")
        assert "WRONG_KEY" in r.err
        assert "not the passphrase" not in r.out + r.err
        assert r.out == ""
    assert not (tmp_path / "t").exists()
    assert_repo_intact(cli, repo, before)


def test_no_passphrase(cli, repo_with_snapshot, tmp_path):
    repo, _snap = repo_with_snapshot
    before = repo_state(repo)
    for args in (("snapshots",), ("backup", "--path", tmp_path / "app"), ("check",)):
        r = fails(cli(*args, "--repo", repo, password=None, input=b""), "no encryption key", "BACKUP_ENCRYPTION_KEY")
        assert r.out == ""
    fails(cli("init", "--repo", tmp_path / "new", password=None, input=b""), "no encryption key")
    fails(cli("snapshots", "--repo", repo, password="", input=b""), "no encryption key")
    assert not (tmp_path / "new").exists()
    assert_repo_intact(cli, repo, before)


def test_password_file(cli, repo_with_snapshot, tmp_path):
    repo, snap = repo_with_snapshot
    pw_file = tmp_path / "pw"
    pw_file.write_text(PASSWORD + "\n")  # as `echo` writes it: the newline is not part of the key
    r = ok(cli("snapshots", "--repo", repo, "--json", "--password-file", pw_file, password=None, input=b""))
    assert [s["id"] for s in r.json()] == [snap]
    crlf = tmp_path / "pw-crlf"
    crlf.write_bytes(PASSWORD.encode() + b"\r\n")
    ok(cli("snapshots", "--repo", repo, "--password-file", crlf, password=None, input=b""))
    # the file wins over the environment
    ok(cli("snapshots", "--repo", repo, "--password-file", pw_file, password="something else"))
    wrong = tmp_path / "wrong"
    wrong.write_text("something else\n")
    fails(cli("snapshots", "--repo", repo, "--password-file", wrong), "wrong encryption key")
    missing = fails(cli("snapshots", "--repo", repo, "--password-file", tmp_path / "nope"), "--password-file")
    assert str(tmp_path / "nope") in missing.err

    new_repo = tmp_path / "new-repo"
    ok(cli("init", "--repo", new_repo, "--password-file", pw_file, password=None, input=b""))
    ok(cli("snapshots", "--repo", new_repo))  # same key from the environment


def test_passphrase_is_never_printed(cli, repo_with_snapshot, tmp_path):
    repo, _snap = repo_with_snapshot
    results = [
        cli("snapshots", "--repo", repo),
        cli("snapshots", "--repo", repo, "--json"),
        cli("backup", "--repo", repo, "--path", tmp_path / "app", "--debug"),
        cli("restore", "latest", "--repo", repo, "--target", tmp_path / "t", "--json"),
        cli("check", "--repo", repo, "--read-data", "--json"),
        cli("key", "list", "--repo", repo, "--json"),
        cli("key", "export", "--repo", repo),
        cli("forget", "--repo", repo, "--keep-last", "1", "--dry-run", "--json", "--debug"),
        cli("prune", "--repo", repo, "--dry-run", "--debug"),
        cli("init", "--repo", repo),
        cli("snapshots", "--repo", repo, password=PASSWORD + "x"),
        cli("snapshots", "--repo", repo, "--debug", password=PASSWORD + "x"),
    ]
    for r in results:
        assert PASSWORD not in r.out and PASSWORD not in r.err, r
        assert PASSWORD.encode().hex() not in r.out + r.err
        assert "Traceback" not in r.err


# ---- not a repository ----------------------------------------------------------------------------


def test_not_a_repository(cli, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    r = fails(cli("snapshots", "--repo", empty), "not a websoft9-backup repository", str(empty))
    assert "init" in r.err
    assert list(empty.iterdir()) == []  # nothing was written into it
    fails(cli("snapshots", "--repo", tmp_path / "does-not-exist"), "not a websoft9-backup repository")
    assert not (tmp_path / "does-not-exist").exists()

    for content in (os.urandom(200), b'{"format": "something-else", "version": 1}', b"[1, 2]", b"not json"):
        other = tmp_path / "other"
        other.mkdir(exist_ok=True)
        (other / "config").write_bytes(content)
        before = repo_state(other)
        fails(cli("snapshots", "--repo", other), "not a websoft9-backup repository")
        fails(cli("backup", "--repo", other, "--path", empty), "not a websoft9-backup repository")
        assert repo_state(other) == before


def test_newer_repository_format(cli, repo_with_snapshot):
    repo, _snap = repo_with_snapshot
    config = json.loads((repo / "config").read_text())
    config["version"] = 99
    (repo / "config").write_text(json.dumps(config))
    before = repo_state(repo)
    for args in (("snapshots",), ("check",), ("prune",), ("init",)):
        r = clean(cli(*args, "--repo", repo))
        assert r.code == 1, r
        if args != ("init",):
            assert "99" in r.err and "newer" in r.err and "upgrade" in r.err, r.err
    assert repo_state(repo) == before


def test_init_on_an_existing_repository_is_refused(cli, repo_with_snapshot):
    repo, snap = repo_with_snapshot
    before = repo_state(repo)
    fails(cli("init", "--repo", repo), "already holds a repository", "REPOSITORY_EXISTS")
    fails(cli("init", "--repo", repo, password="another passphrase"), "already holds a repository")
    assert_repo_intact(cli, repo, before)
    ok(cli("restore", snap, "--repo", repo, "--target", repo.parent / "t"))


# ---- bad paths -------------------------------------------------------------------------------------


def run_concurrently(calls: dict[str, tuple], deadline: float) -> dict[str, CliResult | None]:
    """Run several CLI commands at once; None for those still running after `deadline` seconds
    (they are killed, and their store workers exit when their parent is gone)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BACKUP_")}
    env["BACKUP_ENCRYPTION_KEY"] = PASSWORD
    procs = {}
    for name, (args, stdin) in calls.items():
        procs[name] = subprocess.Popen(
            [sys.executable, "-m", "sidecar", *map(str, args)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=ROOT,
        )
        assert procs[name].stdin is not None
        procs[name].stdin.write(stdin)
        procs[name].stdin.close()
        procs[name].stdin = None
    end = time.monotonic() + deadline
    results: dict[str, CliResult | None] = {}
    for name, proc in procs.items():
        try:
            out, err = proc.communicate(timeout=max(0.1, end - time.monotonic()))
            results[name] = CliResult(proc.returncode, out.decode(errors="replace"), err.decode(errors="replace"))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            results[name] = None
    return results


def test_backup_no_source_given(cli, repo_with_snapshot):
    repo, _snap = repo_with_snapshot
    before = repo_state(repo)
    fails(cli("backup", "--repo", repo), "INVALID_REQUEST", "--path")
    assert_repo_intact(cli, repo, before)


def test_bad_backup_sources_fail_promptly_and_clearly(cli, repo_with_snapshot, tmp_path):
    repo, _snap = repo_with_snapshot
    before = repo_state(repo)
    missing = tmp_path / "no-such-dir"
    a_file = tmp_path / "a-file"
    a_file.write_text("x\n")
    results = run_concurrently(
        {
            "missing": (("backup", "--repo", repo, "--path", missing), b""),
            "file": (("backup", "--repo", repo, "--path", a_file), b""),
            "second missing": (("backup", "--repo", repo, "--path", tmp_path / "app", "--path", missing), b""),
            "stream ..": (("backup", "--repo", repo, "--stdin", "../escape.sql"), b"data\n"),
            "stream /": (("backup", "--repo", repo, "--stdin", "/abs.sql"), b"data\n"),
        },
        deadline=10,
    )
    slow = [name for name, r in results.items() if r is None]
    assert not slow, f"still running after 10 s (a failing backup should take about a second): {slow}"
    fails(results["missing"], "BACKUP_CREATE_FAILED", str(missing), "No such file")
    fails(results["file"], str(a_file), "is not a directory")
    fails(results["second missing"], str(missing))  # the first path was read, but nothing is recorded
    fails(results["stream .."], "../escape.sql")
    fails(results["stream /"], "/abs.sql")
    assert not list((repo / "locks").iterdir())
    unchanged = {k for k in before if not k.startswith(("data/", "index/"))}
    assert {k for k in repo_state(repo) if not k.startswith(("data/", "index/"))} == unchanged
    assert len(ok(cli("snapshots", "--repo", repo, "--json")).json()) == 1
    assert "no errors" in ok(cli("check", "--repo", repo, "--read-data")).out


def test_repo_path_is_a_regular_file(cli, tmp_path):
    a_file = tmp_path / "a-file"
    a_file.write_text("x\n")
    fails(cli("snapshots", "--repo", a_file), str(a_file))


def test_restore_target_is_a_regular_file(cli, repo_with_snapshot, tmp_path):
    repo, snap = repo_with_snapshot
    a_file = tmp_path / "a-file"
    a_file.write_text("precious\n")
    fails(cli("restore", snap, "--repo", repo, "--target", a_file), str(a_file))
    assert a_file.read_text() == "precious\n"


def test_export_into_a_missing_directory(cli, repo_with_snapshot, tmp_path):
    repo, snap = repo_with_snapshot
    out = tmp_path / "no-such-dir" / "x.tar"
    fails(cli("export", snap, "--repo", repo, "--output", out), str(out))


def test_key_add_with_a_missing_new_password_file(cli, repo_with_snapshot, tmp_path):
    repo, _snap = repo_with_snapshot
    fails(cli("key", "add", "--repo", repo, "--new-password-file", tmp_path / "nope"), "--new-password-file")


def test_stream_name_error_is_an_invalid_request(repo_with_snapshot):
    repo, _snap = repo_with_snapshot
    # (with a deadline: this error also goes through the slow abort of the test above)
    result = run_concurrently({"stream": (("backup", "--repo", repo, "--stdin", "../escape.sql"), b"data\n")}, 10)
    assert result["stream"] is not None, "still running after 10 s"
    fails(result["stream"], "INVALID_REQUEST", "../escape.sql")


# ---- unreadable files (as an unprivileged user) ----------------------------------------------------


def _setpriv() -> str:
    path = shutil.which("setpriv")
    if path is None:
        pytest.fail("setpriv is needed to run the backup as an unprivileged user (Debian: apt-get install util-linux)")
    return path


def _nobody_env(cwd: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BACKUP_")}
    # this checkout and our site-packages, in case the interpreter is not the venv's own
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *site.getsitepackages()])
    env.update(BACKUP_ENCRYPTION_KEY=PASSWORD, HOME=str(cwd))
    return env


def _nobody_python(cwd: Path) -> str:
    """An interpreter uid 65534 can start *itself* (the backup starts its store workers
    with sys.executable): the venv's, unless it lives under a directory nobody can enter
    (e.g. a pyenv build in /root), then the real file or the system's python of our version."""
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    candidates = [sys.executable, os.path.realpath(sys.executable), shutil.which(version), f"/usr/bin/{version}"]
    tried = []
    for python in dict.fromkeys(c for c in candidates if c):
        # exec through sh: setpriv itself may still exec with root's capabilities
        cmd = [_setpriv(), f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--", "/bin/sh", "-c"]
        cmd += ['exec "$0" -c "import sidecar.cli, sidecar.repo.storeworker"', python]
        probe = subprocess.run(cmd, capture_output=True, text=True, env=_nobody_env(cwd), cwd=cwd, timeout=60)
        if probe.returncode == 0:
            return python
        tried.append(f"{python}: {probe.stderr.strip()[-200:]}")
    pytest.fail(f"no Python interpreter that uid {NOBODY} can run with this package: " + "; ".join(tried))


def _as_nobody(python: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    cmd = [_setpriv(), f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--", python, *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=_nobody_env(cwd), cwd=cwd, timeout=300)


def test_unreadable_files_are_skipped_with_warnings(cli, dataset_template, same_tree):
    assert os.geteuid() == 0, "this test makes files unreadable for another user: run it as root (CI does)"
    base = Path(tempfile.mkdtemp(prefix="sidecar-cli-unreadable-"))  # under /tmp: reachable by nobody
    try:
        os.chmod(base, 0o755)
        python = _nobody_python(base)
        data = copy_tree(dataset_template, base / "data")
        repo = base / "repo"
        ok(cli("init", "--repo", repo))
        subprocess.run(["chown", "-R", f"{NOBODY}:{NOBODY}", "--", str(data), str(repo)], check=True)

        secret_file = data / "html" / "plugins" / "p00" / "inc0" / "file00003.php"
        secret_dir = data / "html" / "plugins" / "p00" / "inc1"
        assert secret_file.is_file() and len(os.listdir(secret_dir)) > 3
        os.chmod(secret_file, 0)
        os.chmod(secret_dir, 0)

        # what a restore must give: everything but the unreadable file and the unlistable directory's content
        expected = copy_tree(data, base / "expected")
        exp_file = expected / secret_file.relative_to(data)
        exp_dir = expected / secret_dir.relative_to(data)
        exp_file.unlink()
        for child in exp_dir.iterdir():
            child.unlink()
        for src, dst in ((secret_file.parent, exp_file.parent), (secret_dir, exp_dir)):
            st = os.stat(src)
            os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))

        r = _as_nobody(python, "-m", "sidecar", "backup", "--repo", str(repo), "--path", str(data), cwd=base)
        assert "Traceback" not in r.stderr and PASSWORD not in r.stdout + r.stderr
        assert r.returncode == 3, f"exit {r.returncode}\n{r.stdout}\n{r.stderr}"
        warnings = [line for line in r.stderr.splitlines() if line.startswith("warning:")]
        assert len(warnings) == 2, r.stderr
        file_rel = str(secret_file.relative_to(data))
        dir_rel = str(secret_dir.relative_to(data))
        assert any(file_rel in w and "Permission denied" in w for w in warnings), warnings
        assert any(dir_rel in w and "Permission denied" in w for w in warnings), warnings
        assert "saved" in r.stdout

        listed = ok(cli("snapshots", "--repo", repo, "--json")).json()
        assert len(listed) == 1 and listed[0]["warnings"] == 2
        assert listed[0]["totals"]["skipped"] >= 1
        recorded = Repository.open(LocalBackend(repo), PASSWORD.encode()).load_snapshot(listed[0]["id"]).warnings
        assert sorted(w["path"] for w in recorded) == sorted([dir_rel, file_rel])
        assert all(w["source"] == str(data) and "Permission denied" in w["error"] for w in recorded)

        target = base / "restored"
        ok(cli("restore", "latest", "--repo", repo, "--target", target))
        same_tree(expected, target)
        assert stat.S_IMODE(os.stat(target / dir_rel).st_mode) == 0
        assert "no errors" in ok(cli("check", "--repo", repo, "--read-data")).out
    finally:
        shutil.rmtree(base, ignore_errors=True)
