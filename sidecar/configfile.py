"""The configuration file: `config/backup.yaml` in the epic's shape (storage,
encryption, compression, defaults, limits) plus the sidecar's own sections
(api, catalog, scheduler, prune, cache, data_dir).

Read from `--config FILE`, else `BACKUP_CONFIG`, else
/etc/websoft9-backup/backup.yaml when it exists. `${VAR}` in a value is
replaced by that environment variable (empty when unset, as in a shell). Every
key has an environment variable, and the environment wins: the file's values
become the defaults of those variables (so the job and worker processes a
command starts see them too). Every key is checked when the file is read; all
problems are reported, one line each, naming the key.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sidecar.errors import InvalidRequest

DEFAULT_PATH = Path("/etc/websoft9-backup/backup.yaml")
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
MASK = "***"


@dataclass(frozen=True)
class Key:
    path: str  # under `backup:`, e.g. storage.s3_bucket
    kind: type
    env: str | None  # the variable it sets; None: read by derive()
    secret: bool = False
    choices: tuple[str, ...] = ()
    low: int | None = None
    high: int | None = None


def _scheduler_check(name: str, value: str) -> None:
    from sidecar.jobs.scheduling import config_from_env

    config_from_env({name: value})


def _s3_check(name: str, value: str) -> None:
    from sidecar.repo.backends.s3 import S3Settings

    S3Settings.from_url("s3://bucket", {name: value})


KEYS: tuple[Key, ...] = (
    Key("data_dir", str, "BACKUP_DATA_DIR"),
    Key("storage.local_path", str, None),
    Key("storage.s3_bucket", str, None),
    Key("storage.s3_prefix", str, None),
    Key("storage.s3_region", str, "BACKUP_S3_REGION"),
    Key("storage.s3_endpoint_url", str, "BACKUP_S3_ENDPOINT_URL"),
    Key("storage.s3_addressing", str, "BACKUP_S3_ADDRESSING", choices=("auto", "path", "virtual")),
    Key("storage.s3_storage_class", str, "BACKUP_S3_STORAGE_CLASS"),
    Key("storage.s3_connections", int, "BACKUP_S3_CONNECTIONS", low=1, high=64),
    Key("encryption.enabled", bool, None),
    Key("encryption.key", str, "BACKUP_ENCRYPTION_KEY", secret=True),
    Key("compression.enabled", bool, None),
    Key("compression.algorithm", str, None, choices=("zstd", "gzip")),
    Key("compression.level", int, None, low=1, high=19),
    Key("defaults.backup_type", str, "BACKUP_DEFAULT_BACKUP_TYPE", choices=("incremental", "full", "differential")),
    Key("defaults.retention_days", int, None, low=1, high=36500),
    Key("defaults.storage_location", str, None, choices=("local", "s3")),
    Key("limits.max_concurrent_backups", int, "BACKUP_MAX_CONCURRENT_BACKUPS", low=1, high=64),
    Key("limits.max_backup_size_gb", int, "BACKUP_MAX_BACKUP_SIZE_GB", low=1, high=1_000_000),
    Key("api.listen", str, "BACKUP_API_LISTEN"),
    Key("api.key", str, "BACKUP_API_KEY", secret=True),
    Key("catalog.url", str, "BACKUP_CATALOG_URL", secret=True),
    Key("scheduler.timezone", str, "TZ"),
    Key("scheduler.jitter", str, "BACKUP_SCHEDULER_JITTER"),
    Key("scheduler.catch_up", str, "BACKUP_SCHEDULER_CATCH_UP"),
    Key("scheduler.retries", int, "BACKUP_SCHEDULER_RETRIES", low=0, high=10),
    Key("scheduler.retry_backoff", str, "BACKUP_SCHEDULER_RETRY_BACKOFF"),
    Key("prune.schedule", str, "BACKUP_PRUNE_SCHEDULE"),
    Key("cache.max_mb", int, "BACKUP_CACHE_MAX_MB", low=16, high=10_000_000),
    Key("log.format", str, "BACKUP_LOG_FORMAT", choices=("text", "json")),
)
BY_PATH = {k.path: k for k in KEYS}
# keys that stand for a variable together with others (see _derive)
DERIVED = {
    "compression.level": "BACKUP_COMPRESSION_LEVEL",
    "storage.local_path": "BACKUP_REPOSITORY",
    "defaults.retention_days": "BACKUP_RETENTION",
}
_CHECKED_BY = {
    "TZ": _scheduler_check,
    "BACKUP_SCHEDULER_JITTER": _scheduler_check,
    "BACKUP_SCHEDULER_CATCH_UP": _scheduler_check,
    "BACKUP_SCHEDULER_RETRY_BACKOFF": _scheduler_check,
    "BACKUP_PRUNE_SCHEDULE": _scheduler_check,
    "BACKUP_S3_STORAGE_CLASS": _s3_check,
}


def find_file(explicit: str | None, env: Mapping[str, str]) -> Path | None:
    if explicit:
        return Path(explicit)
    if env.get("BACKUP_CONFIG"):
        return Path(env["BACKUP_CONFIG"])
    return DEFAULT_PATH if DEFAULT_PATH.is_file() else None


def _expand(value: Any, env: Mapping[str, str]) -> Any:
    if isinstance(value, str):
        return _VAR.sub(lambda m: env.get(m.group(1), ""), value)
    return value


def _flatten(doc: Any, prefix: str, out: dict[str, Any], errors: list[str]) -> None:
    if not isinstance(doc, dict):
        errors.append(f"{prefix or 'backup'}: must be a mapping of keys, got {type(doc).__name__}")
        return
    for key, value in doc.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict):
            _flatten(value, path, out, errors)
        elif path in BY_PATH:
            out[path] = value
        else:
            near = [p for p in BY_PATH if p.split(".")[0] == path.split(".")[0]]
            hint = f" (known here: {', '.join(p.split('.')[-1] for p in near)})" if near else ""
            shown = path if path.isprintable() else path.encode("unicode_escape").decode()  # one line per problem
            errors.append(f"backup.{shown}: unknown key{hint}")


def _typed(key: Key, value: Any) -> tuple[Any, str | None]:
    """The value as the key's type, or an error."""
    where = f"backup.{key.path}"
    if value is None:
        return None, None
    if key.kind is bool:
        if isinstance(value, bool):
            return value, None
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true", None
        return None, f"{where}: must be true or false, got {value!r}"
    if key.kind is int:
        if isinstance(value, bool) or not isinstance(value, int | str):
            return None, f"{where}: must be a whole number, got {value!r}"
        text = str(value).strip()
        if not re.fullmatch(r"-?\d+", text):
            return None, f"{where}: must be a whole number, got {value!r}"
        if len(text) > 30:  # far out of every range (and int() refuses more than 4300 digits)
            return None, f"{where}: must be from {key.low} to {key.high}, got {text[:30]}..."
        number = int(text)
        if (key.low is not None and number < key.low) or (key.high is not None and number > key.high):
            return None, f"{where}: must be from {key.low} to {key.high}, got {number}"
        return number, None
    if isinstance(value, bool | int | float):
        value = str(value).lower() if isinstance(value, bool) else str(value)
    if not isinstance(value, str):
        return None, f"{where}: must be text, got {type(value).__name__}"
    if key.choices and value.strip().lower() not in key.choices:
        return None, f"{where}: must be one of {', '.join(key.choices)}, got {value!r}"
    return (value.strip().lower() if key.choices else value), None


@dataclass
class LoadedConfig:
    path: Path | None
    values: dict[str, Any]  # key path -> value from the file (after ${VAR})
    applied: dict[str, str]  # variable -> value the file set (not overridden by the environment)
    notes: list[str]


def load(path: Path | None, env: Mapping[str, str]) -> LoadedConfig:
    """Read and check the file; InvalidRequest with every problem, one line each."""
    if path is None:
        return LoadedConfig(None, {}, {}, [])
    import yaml

    try:
        text = path.read_text()
    except OSError as exc:
        raise InvalidRequest(f"configuration file {path}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise InvalidRequest(f"configuration file {path}: not UTF-8 text (byte {exc.start})") from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "not valid YAML"
        raise InvalidRequest(f"configuration file {path}{where}: {problem}") from None
    except RecursionError:
        raise InvalidRequest(f"configuration file {path}: not valid YAML (nested too deeply)") from None
    except ValueError as exc:  # a value YAML recognises but cannot build: a date 2024-13-01, a 5000-digit number
        raise InvalidRequest(f"configuration file {path}: not valid YAML ({str(exc)[:100]})") from None
    errors: list[str] = []
    flat: dict[str, Any] = {}
    if doc is None:
        doc = {"backup": {}}
    if not isinstance(doc, dict) or set(doc) != {"backup"}:
        errors.append("the file must have one top-level key, backup:")
    else:
        _flatten(doc["backup"] or {}, "", flat, errors)
    values: dict[str, Any] = {}
    for path_, raw in flat.items():
        value, error = _typed(BY_PATH[path_], _expand(raw, env))
        if error:
            errors.append(error)
        elif value is not None and value != "":
            values[path_] = value
    applied, notes = _derive(values, errors)
    for name, value in applied.items():  # the checks the variables get, naming the file's key
        check = _CHECKED_BY.get(name)
        if check is not None:
            try:
                check(name, value)
            except InvalidRequest as exc:
                errors.append(exc.message.replace(f"{name}:", f"backup.{_key_of(name)}:", 1))
    if errors:
        raise InvalidRequest(f"configuration file {path}:\n  " + "\n  ".join(errors))
    return LoadedConfig(path, values, applied, notes)


def _key_of(env_name: str) -> str:
    return next((k.path for k in KEYS if k.env == env_name), env_name)


def _derive(values: dict[str, Any], errors: list[str]) -> tuple[dict[str, str], list[str]]:
    """The environment variables the file's values stand for."""
    out: dict[str, str] = {}
    notes: list[str] = []
    for key in KEYS:
        if key.env and key.path in values:
            value = values[key.path]
            out[key.env] = str(value).lower() if isinstance(value, bool) else str(value)
    if values.get("encryption.enabled") is False:
        errors.append("backup.encryption.enabled: false is not supported: every backup is encrypted")
    location = values.get("defaults.storage_location", "local")
    if location == "s3":
        bucket = values.get("storage.s3_bucket")
        if not bucket:
            errors.append("backup.storage.s3_bucket: needed with defaults.storage_location s3 (empty or unset)")
        else:
            prefix = str(values.get("storage.s3_prefix", "")).strip("/")
            out["BACKUP_REPOSITORY"] = f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"
    elif values.get("storage.local_path"):
        out["BACKUP_REPOSITORY"] = str(values["storage.local_path"])
    if values.get("compression.enabled") is False:
        out["BACKUP_COMPRESSION_LEVEL"] = "0"
    else:
        algorithm = values.get("compression.algorithm", "zstd")
        if algorithm == "gzip":
            notes.append(
                "backup.compression.algorithm gzip: compressing with zstd at level 3 instead "
                "(gzip -6 manages about 20 MB/s here, zstd -3 over 200 MB/s per core)"
            )
            out["BACKUP_COMPRESSION_LEVEL"] = "3"
        elif "compression.level" in values:
            out["BACKUP_COMPRESSION_LEVEL"] = str(values["compression.level"])
    if "defaults.retention_days" in values:
        out["BACKUP_RETENTION"] = f"days={values['defaults.retention_days']}"
    return out, notes


def apply(config: LoadedConfig, environ: MutableMapping[str, str]) -> list[str]:
    """Set the file's values as defaults of their variables; returns the variables the
    environment overrode (the environment wins)."""
    overridden = []
    for name, value in config.applied.items():
        if name in environ and environ[name] != value:
            overridden.append(name)
        else:
            environ[name] = value
    return overridden


def effective(config: LoadedConfig, env: Mapping[str, str]) -> list[tuple[str, Any, str]]:
    """(key, value, where it comes from) for `config show`; secrets masked."""
    from sidecar.catalog.db import safe_url

    rows: list[tuple[str, Any, str]] = []
    for key in KEYS:
        name = key.env
        value: Any
        derived = DERIVED.get(key.path)
        if derived and env.get(derived) and env[derived] != config.applied.get(derived):
            rows.append((key.path, env[derived], f"env {derived} overrides it"))
            continue
        if name and env.get(name):
            typed, error = _typed(key, env[name])
            value = env[name] if error else typed
            source = "file" if config.applied.get(name) == env[name] else f"env {name}"
        elif key.path in config.values:
            value, source = config.values[key.path], "file"
        else:
            continue
        if key.secret:
            value = safe_url(value) if key.path == "catalog.url" and "://" in str(value) else MASK
        rows.append((key.path, value, source))
    repository = env.get("BACKUP_REPOSITORY")
    if repository:
        source = "file" if config.applied.get("BACKUP_REPOSITORY") == repository else "env BACKUP_REPOSITORY"
        rows.append(("(repository)", repository, source))
    return rows


__all__ = ["KEYS", "LoadedConfig", "apply", "effective", "find_file", "load"]


def load_into_environment(explicit: str | None, environ: MutableMapping[str, str] = os.environ) -> LoadedConfig:
    """What the CLI does at start: find, read, check and apply the file."""
    config = load(find_file(explicit, environ), environ)
    apply(config, environ)
    return config
