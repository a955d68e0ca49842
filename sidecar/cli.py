"""The `websoft9-backup` command line. The only place that prints and exits.

Each command is a small function: parse, call the engine, report. Errors are
`BackupError`s carrying their own exit code; anything else is a bug and is
reported in one line (with the traceback under --debug).
"""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from sidecar import __version__
from sidecar.config import Settings
from sidecar.errors import EXIT_FAILED, EXIT_OK, EXIT_WARNINGS, BackupError, InvalidRequest
from sidecar.progress import TerminalProgress, human_bytes
from sidecar.repo.backends.base import open_backend
from sidecar.repo.crypto import MasterKey
from sidecar.repo.memory import limit_arenas
from sidecar.repo.repository import Repository

if TYPE_CHECKING:
    from sidecar.catalog import RepositoryInfo

Handler = Callable[[argparse.Namespace, Settings], int]


# ---- shared helpers -------------------------------------------------------------------


def _passphrase(args: argparse.Namespace, *, confirm: bool = False) -> bytes:
    if getattr(args, "password_file", None):
        try:
            data = Path(args.password_file).read_bytes()
        except OSError as exc:
            raise InvalidRequest(f"cannot read --password-file {args.password_file}: {exc.strerror}") from None
        return data.rstrip(b"\r\n")
    env = os.environ.get("BACKUP_ENCRYPTION_KEY")
    if env:
        return env.encode()
    from_file = _secret_file("BACKUP_ENCRYPTION_KEY_FILE")
    if from_file:
        return from_file.encode()
    return _prompt("encryption key: ", confirm)


def _secret_file(name: str) -> str | None:
    """A secret from the file a `<NAME>_FILE` variable names (Docker/compose secrets)."""
    path = os.environ.get(name)
    if not path:
        return None
    try:
        value = Path(path).read_text().rstrip("\r\n")
    except OSError as exc:
        raise InvalidRequest(f"{name}: cannot read {path}: {exc.strerror}") from None
    if not value:
        raise InvalidRequest(f"{name}: {path} is empty")
    return value


def _prompt(label: str, confirm: bool) -> bytes:
    if not sys.stdin.isatty():
        raise InvalidRequest("no encryption key: set BACKUP_ENCRYPTION_KEY or use --password-file")
    first = getpass.getpass(label)
    if confirm and getpass.getpass("again: ") != first:
        raise InvalidRequest("the two entries differ")
    if not first:
        raise InvalidRequest("the encryption key must not be empty")
    return first.encode()


def _repo_url(args: argparse.Namespace, settings: Settings) -> str:
    return args.repo or settings.repository


def _open(args: argparse.Namespace, settings: Settings) -> Repository:
    backend = open_backend(_repo_url(args, settings))
    master_file = getattr(args, "master_key_file", None)
    if master_file:
        try:
            master = MasterKey.from_export(json.loads(Path(master_file).read_text()))
        except (OSError, ValueError) as exc:
            raise InvalidRequest(f"cannot read --master-key-file {master_file}: {exc}") from None
        return Repository.open(backend, master=master, compression_level=settings.compression_level)
    return Repository.open(backend, _passphrase(args), compression_level=settings.compression_level)


def _problems(repo: Repository) -> bool:
    """Whether damaged objects were skipped while reading (each was logged on stderr)."""
    return bool(repo.problems)


def _print_json(doc: object) -> None:
    json.dump(doc, sys.stdout, indent=1, ensure_ascii=False)
    sys.stdout.write("\n")


def _progress(verb: str, args: argparse.Namespace) -> TerminalProgress | None:
    if getattr(args, "json", False) or not sys.stderr.isatty():
        return None
    return TerminalProgress(verb).start()


# ---- commands -----------------------------------------------------------------------------


def cmd_init(args: argparse.Namespace, settings: Settings) -> int:
    backend = open_backend(_repo_url(args, settings))
    if hasattr(backend, "create_bucket") and backend.create_bucket():
        print(f"created bucket for {backend.location}")
    repo = Repository.init(backend, _passphrase(args, confirm=True), compression_level=settings.compression_level)
    print(f"created repository {repo.config['id'][:8]} at {backend.location}")
    print("keep the encryption key safe: without it the backups cannot be read (see `key export`)")
    return EXIT_OK


def cmd_backup(args: argparse.Namespace, settings: Settings) -> int:
    from sidecar.repo.backup import BackupOptions, BackupSession

    if args.app:
        if args.path or args.stdin:
            raise InvalidRequest("give either --app APP_ID or --path/--stdin, not both")
        return cmd_backup_app(args, settings)
    if not args.path and not args.stdin:
        raise InvalidRequest("give --path DIR (or --stdin NAME), or --app APP_ID")
    paths = [os.path.abspath(p) for p in args.path]
    app_id = args.app_id or (paths[0] if paths else args.stdin)
    repo = _open(args, settings)
    options = BackupOptions(
        app_id=app_id,
        app_name=args.app_name,
        backup_type=args.type or "incremental",
        tags=args.tag,
        description=args.description,
        lock_wait=args.lock_wait,
    )
    progress = _progress("backup", args)
    try:
        with BackupSession(repo, options, progress) as session:
            if progress:
                for p in paths:
                    progress.scan_totals(p)
            for p in paths:
                session.add_tree(p, p, kind="path", excludes=tuple(args.exclude))
            if args.stdin:
                session.add_stream(args.stdin, sys.stdin.buffer, args.stdin)
            snap = session.commit()
    finally:
        if progress:
            progress.finish()
    return _report_backup(args, repo, snap)


def _report_backup(args: argparse.Namespace, repo: Repository, snap, extra: dict | None = None) -> int:
    totals = snap.totals
    summary = {
        "snapshot_id": snap.id,
        "backup_id": snap.backup_id,
        "app_id": snap.app_id,
        "backup_type": snap.backup_type,
        "parent": snap.parent,
        "files": totals.files,
        "bytes": totals.bytes,
        "added_bytes": totals.added_bytes,
        "stored_bytes": totals.stored_bytes,
        "reused_files": totals.reused_files,
        "duration_s": round(snap.duration_s, 3),
        "warnings": snap.warnings,
        **(extra or {}),
    }
    if args.json:
        _print_json(summary)
    else:
        for w in snap.warnings:
            print(f"warning: {w['source']}: {w['path']}: {w['error']} (skipped)", file=sys.stderr)
        print(f"snapshot {snap.id[:8]} ({snap.backup_id}) saved: app {snap.app_id}, {snap.backup_type}")
        print(
            f"  {totals.files} files ({totals.reused_files} unchanged), {human_bytes(totals.bytes)} in,"
            f" {human_bytes(totals.added_bytes)} new, {human_bytes(totals.stored_bytes)} stored,"
            f" {snap.duration_s:.1f} s"
        )
    damaged = _problems(repo)
    return EXIT_WARNINGS if snap.warnings or damaged else EXIT_OK


def _docker_app(args: argparse.Namespace, settings: Settings, check: Callable | None = None):
    """The app `args.app` as the engine has it now, the repository and a job context.
    `check(app)` runs before the repository is opened (no passphrase work for a refused app)."""
    from sidecar.docker.apps import Registry
    from sidecar.docker.client import connect
    from sidecar.docker.volumes import VolumeAccess, access_mode
    from sidecar.jobs.backup import JobContext

    mode = access_mode()
    client = connect()
    registry = Registry(log_changes=False)
    registry.inventory(client)
    app = registry.require(args.app)
    if check is not None:
        check(app)
    repo = _open(args, settings)
    ctx = JobContext(client, repo, settings.data_dir / "state", VolumeAccess(client, mode), lock_wait=args.lock_wait)
    return app, repo, ctx


def cmd_backup_app(args: argparse.Namespace, settings: Settings) -> int:
    from sidecar.jobs.backup import backup_app, check_backupable

    app, repo, ctx = _docker_app(args, settings, check_backupable)
    progress = _progress("backup", args)
    try:
        result = backup_app(
            ctx,
            app,
            backup_type=args.type,
            tags=args.tag,
            description=args.description,
            progress=progress,
            include_database=not args.no_database,
        )
    finally:
        if progress:
            progress.finish()
    extra = {"volumes": result.volumes, "hooks": [h.to_dict() for h in result.hooks]}
    return _report_backup(args, repo, result.snapshot, extra)


def cmd_restore_app(args: argparse.Namespace, settings: Settings) -> int:
    from sidecar.jobs.restore import RestoreOptions, restore_app

    app, repo, ctx = _docker_app(args, settings)
    snap = repo.find_snapshot(args.snapshot, args.app)
    options = RestoreOptions(
        safety=not args.no_safety,
        restore_database=not args.no_database,
        stop_app=not args.no_stop,
        volumes=[v.strip() for v in args.volumes.split(",") if v.strip()] if args.volumes else None,
        verify_data=args.verify_data,
        wait_timeout=args.wait_timeout,
    )

    def show(phase: str, done: int, total: int) -> None:
        if not args.json and sys.stderr.isatty():
            print(f"  {phase}...", file=sys.stderr)

    result = restore_app(ctx, app, snap, options, show)
    if args.json:
        _print_json({"backup_id": snap.backup_id, "app_id": app.app_id, **result.to_json()})
    else:
        for w in result.warnings:
            print(f"warning: {w}", file=sys.stderr)
        safety = f"; safety snapshot {result.safety_snapshot_id[:8]}" if result.safety_snapshot_id else ""
        print(
            f"restored app {app.app_id} to snapshot {snap.id[:8]} ({snap.backup_id}): "
            f"{len(result.volumes)} volumes, {len(result.databases)} databases, {result.duration_s:.1f} s{safety}"
        )
    return EXIT_WARNINGS if result.warnings else EXIT_OK


def cmd_snapshots(args: argparse.Namespace, settings: Settings) -> int:
    repo = _open(args, settings)
    snaps = repo.list_snapshots(args.app_id)
    damaged = _problems(repo)
    if args.json:
        _print_json(
            [
                {
                    "id": s.id,
                    "backup_id": s.backup_id,
                    "app_id": s.app_id,
                    "app_name": s.app_name,
                    "time": s.to_json()["time"],
                    "backup_type": s.backup_type,
                    "parent": s.parent,
                    "tags": s.tags,
                    "description": s.description,
                    "hostname": s.hostname,
                    "sources": [
                        {
                            "name": x.name,
                            "kind": x.kind,
                            **({"engine": x.engine} if x.engine else {}),
                            **({"reused_from": x.reused_from} if x.reused_from else {}),
                        }
                        for x in s.sources
                    ],
                    "totals": s.to_json()["totals"],
                    "warnings": len(s.warnings),
                }
                for s in snaps
            ]
        )
        return EXIT_WARNINGS if damaged else EXIT_OK
    print(f"{'ID':8}  {'TIME (UTC)':19}  {'TYPE':12}  {'FILES':>7}  {'SIZE':>10}  {'ADDED':>10}  APP")
    for s in snaps:
        t = s.totals
        print(
            f"{s.id[:8]}  {s.time:%Y-%m-%d %H:%M:%S}  {s.backup_type:12}  {t.files:7}  "
            f"{human_bytes(t.bytes):>10}  {human_bytes(t.added_bytes):>10}  {s.app_id}"
            + (f"  [{', '.join(s.tags)}]" if s.tags else "")
        )
    print(f"{len(snaps)} snapshots")
    return EXIT_WARNINGS if damaged else EXIT_OK


def cmd_restore(args: argparse.Namespace, settings: Settings) -> int:
    from sidecar.repo.restore import restore_snapshot

    if args.app:
        if args.target or args.source:
            raise InvalidRequest("give either --app APP_ID or --target DIR, not both")
        return cmd_restore_app(args, settings)
    if not args.target:
        raise InvalidRequest("give --target DIR (or --app APP_ID to restore a Docker app)")
    repo = _open(args, settings)
    snap = repo.find_snapshot(args.snapshot, args.app_id)
    progress = _progress("restore", args)
    if progress:
        sources = [s for s in snap.sources if args.source in (None, s.name)]
        progress.set_total(sum(s.stats.files for s in sources), sum(s.stats.bytes for s in sources))
    try:
        result = restore_snapshot(
            repo,
            snap,
            args.target,
            source=args.source,
            delete=not args.no_delete,
            progress=progress,
            lock_wait=args.lock_wait,
        )
    finally:
        if progress:
            progress.finish()
    if args.json:
        _print_json(
            {
                "snapshot_id": snap.id,
                "backup_id": snap.backup_id,
                "files": result.files,
                "bytes": result.bytes,
                "errors": result.errors,
                "warnings": result.warnings,
            }
        )
    else:
        for w in result.warnings:
            print(f"warning: {w['path']}: {w['error']}", file=sys.stderr)
        for e in result.errors:
            print(f"error: {e['path']}: {e['error']}", file=sys.stderr)
        print(
            f"restored snapshot {snap.id[:8]} ({snap.backup_id}) to {args.target}:"
            f" {result.files} files, {human_bytes(result.bytes)}"
        )
    if result.errors:
        print(
            f"error: BACKUP_CORRUPTED: {len(result.errors)} entries could not be restored (listed above)",
            file=sys.stderr,
        )
        return EXIT_FAILED
    damaged = _problems(repo)
    return EXIT_WARNINGS if result.warnings or damaged else EXIT_OK


def cmd_check(args: argparse.Namespace, settings: Settings) -> int:
    from sidecar.repo.check import check_repository

    repo = _open(args, settings)
    with repo.lock("shared", "check", args.lock_wait):
        report = check_repository(repo, args.read_data)
    if args.json:
        _print_json(report.to_json())
    else:
        for note in report.notes:
            print(f"note: {note}")
        for err in report.errors:
            print(f"error: {err}")
        for sid, entries in sorted(report.affected.items()):
            for e in entries[:20]:
                print(f"  snapshot {sid[:8]}: {e['source']}: {e['path']}: {e['reason']}")
            if len(entries) > 20:
                print(f"  snapshot {sid[:8]}: ... and {len(entries) - 20} more")
        what = f", {report.packs_read} packs read" if args.read_data is not None else ""
        print(
            f"{report.snapshots} snapshots, {report.packs} packs, {report.blobs} blobs{what}: "
            + ("no errors" if report.ok else f"{len(report.errors)} errors")
        )
    if not report.ok:
        print("error: BACKUP_CORRUPTED: the repository has damage (see above)", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def cmd_forget(args: argparse.Namespace, settings: Settings) -> int:
    from sidecar.repo.forget import plan_forget, remove_snapshots
    from sidecar.repo.retention import RetentionPolicy

    repo = _open(args, settings)
    policy = RetentionPolicy(
        days=args.keep_days,
        last=args.keep_last,
        hourly=args.keep_hourly,
        daily=args.keep_daily,
        weekly=args.keep_weekly,
        monthly=args.keep_monthly,
        yearly=args.keep_yearly,
    )
    if args.snapshots:
        if not policy.empty:
            raise InvalidRequest("give snapshot ids or --keep-* rules, not both")
        doomed = [repo.find_snapshot(ref, args.app_id) for ref in args.snapshots]
        report: dict = {"removed": [s.id for s in doomed]}
        if not args.dry_run:
            remove_snapshots(repo, [s.id for s in doomed], args.lock_wait)
    else:
        plan = plan_forget(repo, policy, app_id=args.app_id, allow_empty=args.allow_empty)
        report = {"policy": policy.describe(), "apps": {}, "removed": []}
        for app, decisions in plan.items():
            report["apps"][app] = [
                {"id": d.snapshot.id, "time": d.snapshot.to_json()["time"], "keep": d.keep, "reasons": list(d.reasons)}
                for d in decisions
            ]
            report["removed"] += [d.snapshot.id for d in decisions if not d.keep]
        if not args.dry_run:
            remove_snapshots(repo, report["removed"], args.lock_wait)
    prune_report = None
    if args.prune and not args.dry_run and report["removed"]:
        from sidecar.repo.prune import prune_repository

        prune_report = prune_repository(repo, lock_wait=args.lock_wait).to_json()
    if args.json:
        _print_json({**report, "dry_run": args.dry_run, "prune": prune_report})
        return EXIT_OK
    for app, decisions in report.get("apps", {}).items():
        print(f"app {app}:")
        for d in decisions:
            print(f"  {'keep  ' if d['keep'] else 'forget'} {d['id'][:8]} {d['time']}  {', '.join(d['reasons'])}")
    verb = "would remove" if args.dry_run else "removed"
    print(f"{verb} {len(report['removed'])} snapshots")
    if prune_report:
        print(f"prune: freed {human_bytes(prune_report['bytes_freed'])}")
    return EXIT_OK


def cmd_prune(args: argparse.Namespace, settings: Settings) -> int:
    from sidecar.repo.prune import prune_repository

    repo = _open(args, settings)
    report = prune_repository(repo, max_unused_percent=args.max_unused, dry_run=args.dry_run, lock_wait=args.lock_wait)
    if args.json:
        _print_json(report.to_json())
        return EXIT_OK
    for note in report.notes:
        print(f"note: {note}")
    verb = "would free" if args.dry_run else "freed"
    print(
        f"{report.used_blobs} blobs in use; {report.packs_deleted} packs deleted, {report.packs_repacked}"
        f" repacked into {report.packs_written}, {report.packs_kept} kept; {verb} {human_bytes(report.bytes_freed)}"
    )
    return EXIT_OK


def cmd_repair(args: argparse.Namespace, settings: Settings) -> int:
    from sidecar.repo.repair import repair_index

    repo = _open(args, settings)
    report = repair_index(repo, read_all_packs=args.read_all_packs, dry_run=args.dry_run, lock_wait=args.lock_wait)
    if args.json:
        _print_json(report.to_json())
    else:
        for index_id in report.damaged_index_files:
            print(f"damaged index file {index_id}: replaced")
        for pack_id in report.missing_packs:
            print(f"indexed pack {pack_id} is not stored: its entries are dropped")
        for problem in report.damaged_packs:
            print(f"error: pack {problem}")
        verb = "would write" if args.dry_run else "wrote"
        what = f"{verb} a new index" if report.changed or args.read_all_packs else "the index is complete"
        print(
            f"{report.packs} packs, {report.packs_read} headers read, {report.packs_added} packs added to the"
            f" index, {report.blobs} blobs: {what}" + (f" {report.new_index[:12]}" if report.new_index else "")
        )
    if report.damaged_packs:
        print(
            f"error: BACKUP_CORRUPTED: {len(report.damaged_packs)} packs have unreadable headers;"
            " run `check` to see which snapshots and files are affected",
            file=sys.stderr,
        )
        return EXIT_FAILED
    return EXIT_OK


def cmd_export(args: argparse.Namespace, settings: Settings) -> int:
    from sidecar.repo.export import export_snapshot

    repo = _open(args, settings)
    snap = repo.find_snapshot(args.snapshot, args.app_id)
    warnings: list[str] = []
    if args.output == "-":
        count = export_snapshot(repo, snap, sys.stdout.buffer, source=args.source, warn=warnings.append)
    else:
        tmp = args.output + ".part"
        try:
            out_file = open(tmp, "wb")  # noqa: SIM115 - closed by the with below
        except OSError as exc:
            raise InvalidRequest(f"cannot write --output {args.output}: {exc.strerror}") from None
        try:
            with out_file as out:
                count = export_snapshot(repo, snap, out, source=args.source, warn=warnings.append)
            os.replace(tmp, args.output)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)
    print(f"exported snapshot {snap.id[:8]}: {count} entries to {args.output}", file=sys.stderr)
    return EXIT_WARNINGS if warnings else EXIT_OK


def cmd_key(args: argparse.Namespace, settings: Settings) -> int:
    repo = _open(args, settings)
    if args.key_command == "list":
        keys = repo.list_keys()
        if args.json:
            _print_json(keys)
        else:
            for k in keys:
                print(f"{'*' if k['current'] else ' '} {k['id'][:8]}  {k['created']}  {k['username']}@{k['hostname']}")
    elif args.key_command == "add":
        if args.new_password_file:
            try:
                new = Path(args.new_password_file).read_bytes().rstrip(b"\r\n")
            except OSError as exc:
                message = f"cannot read --new-password-file {args.new_password_file}: {exc.strerror}"
                raise InvalidRequest(message) from None
        elif os.environ.get("BACKUP_NEW_ENCRYPTION_KEY"):
            new = os.environ["BACKUP_NEW_ENCRYPTION_KEY"].encode()
        else:
            new = _prompt("new encryption key: ", confirm=True)
        if not new:
            raise InvalidRequest("the new encryption key must not be empty")
        print(f"added key {repo.add_key(new)[:8]}")
    elif args.key_command == "remove":
        repo.remove_key(args.key_id)
        print(f"removed key {args.key_id}")
    elif args.key_command == "export":
        print("# the master key of this repository: anyone with it can read every backup", file=sys.stderr)
        _print_json({"repository": repo.config["id"], **repo.key.export()})
    return EXIT_OK


def cmd_unlock(args: argparse.Namespace, settings: Settings) -> int:
    from sidecar.repo.locks import remove_stale_locks

    repo = _open(args, settings)
    removed = remove_stale_locks(repo.backend, repo.codec, remove_all=args.remove_all)
    print(f"removed {len(removed)} lock(s)")
    return EXIT_OK


def cmd_catalog(args: argparse.Namespace, settings: Settings) -> int:
    from sidecar.catalog import Catalog, open_catalog
    from sidecar.catalog.db import safe_url
    from sidecar.catalog.rebuild import rebuild_catalog

    url = args.catalog or settings.catalog_url
    repo = _open(args, settings)
    open_catalog(url)
    report = rebuild_catalog(Catalog(), repo, repository_info(_repo_url(args, settings), repo))
    if args.json:
        _print_json({"catalog": safe_url(url), **report.to_json()})
    else:
        print(
            f"catalog {safe_url(url)}: {report.snapshots} snapshots in the repository; "
            f"{report.added} backups added, {report.updated} updated, {report.removed} removed"
        )
    return EXIT_WARNINGS if report.problems else EXIT_OK


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    from sidecar.daemon import Daemon, ServeOptions, parse_listen

    if not args.debug:
        logging.getLogger().setLevel(logging.INFO)  # a daemon tells what it does
    from sidecar.jobs.scheduling import config_from_env

    host, port = parse_listen(args.listen or os.environ.get("BACKUP_API_LISTEN") or "0.0.0.0:8080")
    schedule = config_from_env(os.environ)  # a bad TZ or scheduler variable refuses to start, naming it
    options = ServeOptions(
        host=host,
        port=port,
        api_key=os.environ.get("BACKUP_API_KEY") or _secret_file("BACKUP_API_KEY_FILE"),
        insecure_no_auth=args.insecure_no_auth,
        max_concurrent=schedule.max_concurrent,
        grace=args.grace,
        docker=not args.no_docker,
        scheduler=None if args.no_scheduler else schedule,
    )
    url = _repo_url(args, settings)
    if args.init:  # a container's first start: make the repository the settings name
        backend = open_backend(url)
        if not backend.exists("config"):
            if hasattr(backend, "create_bucket"):
                backend.create_bucket()
            made = Repository.init(backend, _passphrase(args), compression_level=settings.compression_level)
            logging.getLogger("sidecar.serve").warning(
                "created repository %s at %s; keep the encryption key safe: without it no backup can be read",
                made.config["id"][:8],
                backend.location,
            )
    first = _open(args, settings)  # unlocks the key once; each job opens the repository with it
    master = first.key

    def open_repo() -> Repository:
        return Repository.open(open_backend(url), master=master, compression_level=settings.compression_level)

    from sidecar.docker.volumes import access_mode
    from sidecar.jobs.child import ChildSpec

    state_dir = settings.data_dir / "state"
    child = ChildSpec(url, master.export(), settings.compression_level, str(state_dir), access_mode())
    daemon = Daemon(options, open_repo, repository_info(url, first), settings.catalog_url, state_dir, child)
    daemon.serve()
    return EXIT_OK


def cmd_config_show(args: argparse.Namespace, settings: Settings) -> int:
    from sidecar.configfile import effective

    config = args.loaded_config
    rows = effective(config, os.environ)
    if args.json:
        _print_json(
            {
                "file": str(config.path) if config.path else None,
                "settings": {k: {"value": v, "from": s} for k, v, s in rows},
            }
        )
        return EXIT_OK
    print(f"# configuration file: {config.path or 'none'}; secrets masked; the environment overrides the file")
    print("backup:")
    section = None
    for key, value, source in rows:
        if key == "(repository)":
            print(f"# repository in use: {value}  ({source})")
            continue
        head, _, leaf = key.rpartition(".")
        if head != section:
            if head:
                print(f"  {head}:")
            section = head
        indent = "    " if head else "  "
        print(f"{indent}{leaf}: {json.dumps(value)}" + ("" if source == "file" else f"  # {source}"))
    return EXIT_OK


def repository_info(url: str, repo: Repository) -> RepositoryInfo:
    from sidecar.catalog import RepositoryInfo

    name = "s3" if url.startswith("s3://") else "local"
    return RepositoryInfo(repo.backend.location, name, repo.codec.level > 0)


# ---- parser ---------------------------------------------------------------------------------


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--repo", help="repository: a path (default: BACKUP_REPOSITORY or <data dir>/repository)")
    p.add_argument("--password-file", help="file holding the encryption key (default: BACKUP_ENCRYPTION_KEY)")
    p.add_argument(
        "--config", help="configuration file (default: BACKUP_CONFIG, else /etc/websoft9-backup/backup.yaml if present)"
    )
    p.add_argument("--debug", action="store_true", help="show tracebacks")


def _exclusive_options(p: argparse.ArgumentParser) -> None:
    """The options of the commands that take the exclusive lock (prune, repair)."""
    p.add_argument("--dry-run", action="store_true")
    p.add_argument(
        "--lock-wait",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="wait this long for running backups (default: refuse at once)",
    )
    p.add_argument("--json", action="store_true")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="websoft9-backup", description="Back up and restore the apps of a Docker host."
    )
    parser.add_argument("--version", action="version", version=f"websoft9-backup {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, handler: Handler, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        _common(p)
        p.set_defaults(handler=handler)
        return p

    command("init", cmd_init, "create a repository")

    p = command("config", cmd_config_show, "show the effective configuration (file and environment; secrets masked)")
    p.add_argument("config_command", choices=["show"], help="show")
    p.add_argument("--json", action="store_true")

    p = command("backup", cmd_backup, "back up directories (or stdin) into one snapshot")
    p.add_argument("--path", action="append", default=[], help="directory to back up (repeatable)")
    p.add_argument("--stdin", metavar="NAME", help="also back up standard input as file NAME")
    p.add_argument("--app", metavar="APP_ID", help="back up a Docker app (its labels decide what and how)")
    p.add_argument("--no-database", action="store_true", help="with --app: skip the database dumps")
    p.add_argument(
        "--type",
        choices=["incremental", "full", "differential"],
        default=None,
        help="default: incremental, or the app's websoft9.backup.type",
    )
    p.add_argument("--app-id", help="app the snapshot belongs to (default: the first path)")
    p.add_argument("--app-name", help="display name of the app (default: the app id)")
    p.add_argument("--tag", action="append", default=[], help="tag (repeatable)")
    p.add_argument("--description")
    p.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="GLOB",
        help="skip entries matching GLOB (a name, or a path relative to the directory)",
    )
    p.add_argument("--lock-wait", type=float, default=600.0, metavar="SECONDS")
    p.add_argument("--json", action="store_true", help="print one JSON summary")

    p = command("snapshots", cmd_snapshots, "list snapshots")
    p.add_argument("--app-id")
    p.add_argument("--json", action="store_true")

    p = command("restore", cmd_restore, "restore a snapshot into a directory")
    p.add_argument("snapshot", help="snapshot id (or prefix), backup_id, or 'latest'")
    p.add_argument("--target", help="directory to restore into (made exact unless --no-delete)")
    p.add_argument("--app", metavar="APP_ID", help="restore a Docker app (volumes and databases) to the snapshot")
    p.add_argument("--no-safety", action="store_true", help="with --app: no safety snapshot first (no rollback)")
    p.add_argument("--no-database", action="store_true", help="with --app: leave the databases as they are")
    p.add_argument("--no-stop", action="store_true", help="with --app: do not stop the app's containers")
    p.add_argument("--volumes", metavar="A,B", help="with --app: only these volumes (compose keys or names)")
    p.add_argument("--verify-data", action="store_true", help="with --app: read and check all its data first")
    p.add_argument("--wait-timeout", type=float, default=120.0, metavar="SECONDS")
    p.add_argument("--source", help="restore only this source of the snapshot")
    p.add_argument("--app-id", help="with 'latest': the latest snapshot of this app")
    p.add_argument("--no-delete", action="store_true", help="keep files in the target that the snapshot lacks")
    p.add_argument("--lock-wait", type=float, default=600.0, metavar="SECONDS")
    p.add_argument("--json", action="store_true")

    p = command("check", cmd_check, "verify the repository")
    p.add_argument(
        "--read-data",
        nargs="?",
        const=100.0,
        type=float,
        metavar="PERCENT",
        help="also read and verify data (all, or PERCENT of the packs)",
    )
    p.add_argument("--lock-wait", type=float, default=600.0, metavar="SECONDS")
    p.add_argument("--json", action="store_true")

    p = command("forget", cmd_forget, "remove snapshots by retention policy or id")
    p.add_argument("snapshots", nargs="*", help="snapshot ids to remove (instead of --keep-* rules)")
    p.add_argument("--app-id", help="only this app's snapshots")
    for rule in ("days", "last", "hourly", "daily", "weekly", "monthly", "yearly"):
        p.add_argument(f"--keep-{rule}", type=int, default=0, metavar="N")
    p.add_argument("--allow-empty", action="store_true", help="allow removing an app's last snapshot")
    p.add_argument("--dry-run", action="store_true")
    p.add_argument("--prune", action="store_true", help="run prune afterwards")
    p.add_argument("--lock-wait", type=float, default=600.0, metavar="SECONDS")
    p.add_argument("--json", action="store_true")

    p = command("prune", cmd_prune, "free data no snapshot uses (exclusive lock)")
    p.add_argument(
        "--max-unused",
        type=float,
        default=50.0,
        metavar="PERCENT",
        help="repack a pack when more than PERCENT of it is unused (default 50)",
    )
    _exclusive_options(p)

    p = command("repair", cmd_repair, "rebuild a lost or damaged index from the packs' headers (exclusive lock)")
    p.add_argument("repair_command", choices=["index"])
    p.add_argument("--read-all-packs", action="store_true", help="read every pack's header, not only unindexed ones")
    _exclusive_options(p)

    p = command("export", cmd_export, "write a snapshot as a portable tar")
    p.add_argument("snapshot")
    p.add_argument("--output", required=True, help="FILE.tar, or - for standard output")
    p.add_argument("--source")
    p.add_argument("--app-id")

    p = command("key", cmd_key, "manage encryption keys")
    p.add_argument("key_command", choices=["list", "add", "remove", "export"])
    p.add_argument("key_id", nargs="?", help="key id (prefix) for remove")
    p.add_argument("--new-password-file", help="file with the new key (add; default BACKUP_NEW_ENCRYPTION_KEY)")
    p.add_argument("--master-key-file", help="open the repository with an exported master key instead")
    p.add_argument("--json", action="store_true")

    p = command("catalog", cmd_catalog, "re-create the catalog's backup records from the repository")
    p.add_argument("catalog_command", choices=["rebuild"])
    p.add_argument("--catalog", metavar="URL", help="sqlite:///PATH or postgresql://... (default: BACKUP_CATALOG_URL)")
    p.add_argument("--json", action="store_true")

    p = command("serve", cmd_serve, "the daemon: Docker watcher, jobs, REST API and /metrics")
    p.add_argument("--listen", metavar="HOST:PORT", help="default: BACKUP_API_LISTEN or 0.0.0.0:8080")
    p.add_argument("--insecure-no-auth", action="store_true", help="serve the API without a key (local use only)")
    p.add_argument("--no-docker", action="store_true", help="no Docker: the API serves backups only, no apps")
    p.add_argument("--grace", type=float, default=60.0, metavar="SECONDS", help="for running jobs at shutdown")
    p.add_argument("--no-scheduler", action="store_true", help="run no scheduled backups or prunes (API only)")
    p.add_argument("--init", action="store_true", help="create the repository first if there is none (containers)")

    p = command("unlock", cmd_unlock, "remove stale locks")
    p.add_argument("--remove-all", action="store_true", help="remove every lock, not only stale ones")
    return parser


def _on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt("terminated")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from sidecar import logs

    logs.setup(logging.DEBUG if args.debug else logging.WARNING, debug=args.debug)
    signal.signal(signal.SIGTERM, _on_sigterm)
    limit_arenas(mmap_threshold=1 << 20)
    # what this program creates is its owner's alone: repository objects and directories (0600/0700),
    # the catalog, caches, exports; restored files get the modes the snapshot holds
    os.umask(0o077)
    if args.command == "key" and args.key_command == "remove" and not args.key_id:
        parser.error("key remove needs a key id")
    try:
        from sidecar.configfile import load_into_environment

        config = load_into_environment(args.config)  # its values become the defaults of the variables
        if config.applied.get("BACKUP_LOG_FORMAT"):
            logs.setup(logging.DEBUG if args.debug else logging.WARNING, debug=args.debug)  # the file's format
        for note in config.notes:
            logging.getLogger("sidecar.config").warning("%s", note)
        args.loaded_config = config
        settings = Settings.from_env()
        return args.handler(args, settings)
    except BackupError as exc:
        print(f"error: {exc.code}: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("error: interrupted; nothing was recorded for the unfinished operation", file=sys.stderr)
        return 130
    except Exception as exc:
        if args.debug:
            raise
        print(f"error: unexpected {exc.__class__.__name__}: {exc} (run with --debug for details)", file=sys.stderr)
        return EXIT_FAILED


__all__ = ["main"]
