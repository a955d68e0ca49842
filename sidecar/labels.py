"""Backup policy of an app from its Docker labels (DESIGN.md §4).

An app is a compose project: the ``websoft9.backup.*`` labels of all its
containers merge into one :class:`AppPolicy`.  App-wide keys (enable,
schedule, type, retention, storage, volumes, exclude) must agree across
containers; per-container keys (stop, db, db.*, hooks) belong to the
container that carries them.

Parsing never raises: every problem becomes a :class:`LabelError` in
``AppPolicy.errors`` and the other keys still parse.  An unknown
``websoft9.backup.*`` key is an error too, so a typo cannot silently turn a
backup off.  Labels only *name* the environment variable holding a database
password; this module never reads it, and never echoes a value given to a
key that looks like it holds a secret.
"""

from __future__ import annotations

import difflib
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from croniter import croniter

LABEL_PREFIX = "websoft9.backup."
BACKUP_TYPES = ("incremental", "full", "differential")
DB_ENGINES = ("mysql", "mariadb", "postgres", "mongodb", "redis")
HOOK_PHASES = ("pre", "post", "restore.pre", "restore.post")
HOOK_ON_ERROR = ("fail", "continue")
CRON_ALIASES = ("@hourly", "@daily", "@weekly", "@monthly", "@yearly", "@annually", "@midnight")
DEFAULT_HOOK_TIMEOUT_S = 300.0
MAX_HOOK_TIMEOUT_S = 24 * 3600.0

_DEFAULT_ON_ERROR = {"pre": "fail", "post": "continue", "restore.pre": "fail", "restore.post": "continue"}
_HOOK_OPTIONS = ("on_error", "timeout", "user")
_DB_OPTIONS = ("db.user", "db.password_env", "db.databases")
_DB_ALIASES = {"postgresql": "postgres"}
_SECRET_HINTS = ("pass", "secret", "token")
_MAX_SHOWN = 100  # characters of a value shown by str(LabelError)

_STORAGE_RE = re.compile(r"[a-z0-9][a-z0-9_-]*")
_VOLUME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_EXEC_USER_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*(?::[A-Za-z0-9_][A-Za-z0-9_.-]*)?")
_NUMBER = r"\d{1,9}(?:\.\d{1,9})?"
_DURATION_RE = re.compile(rf"(?:(?P<h>{_NUMBER})h)?(?:(?P<m>{_NUMBER})m)?(?:(?P<s>{_NUMBER})s)?")
_RETENTION_KEYS = ("days", "last", "hourly", "daily", "weekly", "monthly", "yearly")


def _shorten(value: str) -> str:
    return value if len(value) <= _MAX_SHOWN else value[:_MAX_SHOWN] + "..."


@dataclass(frozen=True)
class LabelError:
    key: str
    value: str
    why: str
    container: str | None = None

    def __str__(self) -> str:
        text = f"{self.key}={_shorten(self.value)!r}" if self.value else self.key
        if self.container is not None:
            text += f" on {self.container}"
        return f"{text}: {self.why}"

    def to_dict(self) -> dict:
        return {"key": self.key, "value": self.value, "why": self.why, "container": self.container}


@dataclass(frozen=True)
class Hook:
    phase: str
    container: str
    command: str
    user: str | None
    timeout_s: float
    on_error: str

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class DbSpec:
    container: str
    engine: str
    user: str | None
    password_env: str | None
    databases: tuple[str, ...] | None

    def to_dict(self) -> dict:
        out = asdict(self)
        out["databases"] = None if self.databases is None else list(self.databases)
        return out


@dataclass(frozen=True)
class Retention:
    days: int | None = None
    last: int | None = None
    hourly: int | None = None
    daily: int | None = None
    weekly: int | None = None
    monthly: int | None = None
    yearly: int | None = None

    def to_dict(self) -> dict[str, int]:
        return {f.name: value for f in fields(self) if (value := getattr(self, f.name)) is not None}


def default_backup_type() -> str:
    """`defaults.backup_type` of the configuration (BACKUP_DEFAULT_BACKUP_TYPE), else incremental."""
    value = os.environ.get("BACKUP_DEFAULT_BACKUP_TYPE", "").strip().lower()
    return value if value in BACKUP_TYPES else "incremental"


@dataclass(frozen=True)
class AppPolicy:
    enabled: bool = False
    schedule: str | None = None
    backup_type: str = field(default_factory=default_backup_type)
    retention: Retention | None = None
    storage: str | None = None
    volumes: tuple[str, ...] | None = None
    exclude: tuple[str, ...] = ()
    stop: tuple[str, ...] = ()
    databases: tuple[DbSpec, ...] = ()
    hooks: tuple[Hook, ...] = ()
    errors: tuple[LabelError, ...] = ()

    @property
    def valid(self) -> bool:
        return not self.errors

    @property
    def managed(self) -> bool:
        return self.enabled and self.valid

    def hooks_for(self, phase: str) -> tuple[Hook, ...]:
        if phase not in HOOK_PHASES:
            raise ValueError(f"unknown hook phase {phase!r}; expected one of {', '.join(HOOK_PHASES)}")
        return tuple(hook for hook in self.hooks if hook.phase == phase)

    def db_containers(self) -> frozenset[str]:
        return frozenset(db.container for db in self.databases)

    def to_dict(self) -> dict:
        return {
            "enabled": self.enabled,
            "valid": self.valid,
            "managed": self.managed,
            "schedule": self.schedule,
            "backup_type": self.backup_type,
            "retention": None if self.retention is None else self.retention.to_dict(),
            "storage": self.storage,
            "volumes": None if self.volumes is None else list(self.volumes),
            "exclude": list(self.exclude),
            "stop": list(self.stop),
            "databases": [db.to_dict() for db in self.databases],
            "hooks": [hook.to_dict() for hook in self.hooks],
            "errors": [error.to_dict() for error in self.errors],
        }


# -- value parsers: str -> value, raising ValueError(why) -------------------------------------------------------


def parse_duration(text: str) -> float:
    """Seconds in ``30s``, ``5m``, ``1h``, ``1h30m`` or a bare number of seconds (``90``)."""
    value = text.strip().lower()
    match = _DURATION_RE.fullmatch(value)
    if re.fullmatch(_NUMBER, value):
        seconds = float(value)
    elif value and match:
        seconds = sum(float(match[unit] or 0) * scale for unit, scale in (("h", 3600), ("m", 60), ("s", 1)))
    else:
        raise ValueError(f"not a duration: {_shorten(text)!r} (e.g. 30s, 5m, 1h, 1h30m or 90 for seconds)")
    if not math.isfinite(seconds):
        raise ValueError(f"duration out of range: {_shorten(text)!r}")
    return seconds


def parse_retention(text: str) -> Retention:
    """``days=30`` or ``last=3,daily=7,weekly=4,monthly=6,yearly=1``: positive counts, at least one."""
    if not text.strip():
        raise ValueError("empty retention (expected e.g. days=30 or last=3,daily=7,weekly=4)")
    counts: dict[str, int] = {}
    for item in text.split(","):
        name, sep, number = (part.strip() for part in item.partition("="))
        if not sep or not name:
            raise ValueError(f"retention item {_shorten(item.strip())!r} is not key=count (e.g. daily=7)")
        if name not in _RETENTION_KEYS:
            raise ValueError(f"unknown retention key {_shorten(name)!r} (expected {', '.join(_RETENTION_KEYS)})")
        if name in counts:
            raise ValueError(f"retention key {name!r} given twice")
        if not re.fullmatch(r"[0-9]{1,9}", number) or int(number) <= 0:
            raise ValueError(f"retention {name}={_shorten(number)!r} is not a positive integer")
        counts[name] = int(number)
    return Retention(**counts)


def _parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value not in ("true", "false"):
        raise ValueError("must be true or false")
    return value == "true"


def _choice(what: str, choices: tuple[str, ...], aliases: Mapping[str, str] | None = None) -> Callable[[str], str]:
    def parse(text: str) -> str:
        value = text.strip().lower()
        value = (aliases or {}).get(value, value)
        if value not in choices:
            raise ValueError(f"{what} must be one of {', '.join(choices)}")
        return value

    return parse


def _parse_schedule(text: str) -> str:
    value = " ".join(text.split())
    if value.lower() in CRON_ALIASES:
        return value.lower()
    try:
        ok = value.isascii() and len(value.split(" ")) == 5 and bool(croniter.is_valid(value))
    except Exception:  # croniter is third-party: whatever it raises means "not valid"
        ok = False
    if not ok:
        raise ValueError("not a valid cron expression (5 fields, or @hourly, @daily, @weekly, @monthly, @yearly)")
    return value


def _parse_storage(text: str) -> str:
    value = text.strip()
    if not _STORAGE_RE.fullmatch(value):
        raise ValueError("not a repository name (lowercase letters, digits, '_' and '-', e.g. local or s3)")
    return value


def _split_list(text: str, what: str) -> tuple[str, ...]:
    items = [item.strip() for item in text.split(",")]
    if not all(items):
        raise ValueError(f"empty {what} in the comma list")
    return tuple(dict.fromkeys(items))


def _parse_volumes(text: str) -> tuple[str, ...] | None:
    if text.strip().lower() == "all":
        return None
    names = _split_list(text, "volume name")
    for name in names:
        if not _VOLUME_RE.fullmatch(name):
            raise ValueError(f"{_shorten(name)!r} is not a volume name or compose volume key")
    return names


def _parse_exclude(text: str) -> tuple[str, ...]:
    globs = _split_list(text, "glob")
    for glob in globs:
        if glob.startswith("/"):
            raise ValueError(f"exclude glob {_shorten(glob)!r} must be relative to the volume root")
        if ".." in glob.split("/") or "\0" in glob:
            raise ValueError(f"exclude glob {_shorten(glob)!r} must not contain '..' segments")
    return globs


def _parse_text(text: str) -> str:
    value = text.strip()
    if not value:
        raise ValueError("must not be empty")
    return value


def _parse_password_env(text: str) -> str:
    value = text.strip()
    if not _ENV_NAME_RE.fullmatch(value):
        raise ValueError("must name an environment variable ([A-Za-z_][A-Za-z0-9_]*), not hold the password")
    return value


def _parse_databases(text: str) -> tuple[str, ...] | None:
    return None if text.strip().lower() == "all" else _split_list(text, "database name")


def _parse_command(text: str) -> str:
    value = text.strip()
    if not value:
        raise ValueError("empty hook command")
    return value


def _parse_timeout(text: str) -> float:
    seconds = parse_duration(text)
    if not 0 < seconds <= MAX_HOOK_TIMEOUT_S:
        raise ValueError("hook timeout must be more than 0 and at most 24h")
    return seconds


def _parse_exec_user(text: str) -> str:
    value = text.strip()
    if not _EXEC_USER_RE.fullmatch(value):
        raise ValueError("not a user (name, uid, uid:gid or name:group)")
    return value


# -- key tables ------------------------------------------------------------------------------------------------

# label suffix -> (AppPolicy field, parser); these merge across the containers of the app
_APP_KEYS: dict[str, tuple[str, Callable[[str], Any]]] = {
    "enable": ("enabled", _parse_bool),
    "schedule": ("schedule", _parse_schedule),
    "type": ("backup_type", _choice("backup type", BACKUP_TYPES)),
    "retention": ("retention", parse_retention),
    "storage": ("storage", _parse_storage),
    "volumes": ("volumes", _parse_volumes),
    "exclude": ("exclude", _parse_exclude),
}

# label suffix -> parser; these belong to the container carrying them
_CONTAINER_KEYS: dict[str, Callable[[str], Any]] = {
    "stop": _parse_bool,
    "db": _choice("database engine", DB_ENGINES, _DB_ALIASES),
    "db.user": _parse_text,
    "db.password_env": _parse_password_env,
    "db.databases": _parse_databases,
    **{phase: _parse_command for phase in HOOK_PHASES},
    **{f"{phase}.on_error": _choice("on_error", HOOK_ON_ERROR) for phase in HOOK_PHASES},
    **{f"{phase}.timeout": _parse_timeout for phase in HOOK_PHASES},
    **{f"{phase}.user": _parse_exec_user for phase in HOOK_PHASES},
}

KNOWN_KEYS = frozenset(LABEL_PREFIX + suffix for suffix in (*_APP_KEYS, *_CONTAINER_KEYS))


def _shown(suffix: str, value: str) -> str:
    """The value to put in an error: hidden when the key looks like it could hold a secret."""
    return "<hidden>" if any(hint in suffix.lower() for hint in _SECRET_HINTS) else value


def _unknown(suffix: str, value: str, container: str) -> LabelError:
    why = "unknown label"
    if len(suffix) <= 64:
        close = difflib.get_close_matches(suffix.lower(), [*_APP_KEYS, *_CONTAINER_KEYS], n=1, cutoff=0.7)
        if close:
            why += f"; did you mean {LABEL_PREFIX}{close[0]}?"
    return LabelError(LABEL_PREFIX + suffix, _shown(suffix, value), why, container)


# -- merging ---------------------------------------------------------------------------------------------------


def parse_labels(containers: Mapping[str, Mapping[str, str]]) -> AppPolicy:
    """The backup policy of one app from ``{container name: its labels}``; never raises."""
    try:
        return _parse(containers)
    except Exception as exc:  # the contract is "errors are values"; this is only a safety net
        return AppPolicy(errors=(LabelError(LABEL_PREFIX, "", f"labels could not be parsed: {exc!r}"),))


def _parse(containers: Mapping[str, Mapping[str, str]]) -> AppPolicy:
    if not isinstance(containers, Mapping):
        return AppPolicy(errors=(LabelError(LABEL_PREFIX, "", "expected a mapping of container name to labels"),))
    errors: list[LabelError] = []
    # app-wide suffix -> stripped value -> (value as first given, containers carrying it)
    app_values: dict[str, dict[str, tuple[str, list[str]]]] = {}
    per_container: dict[str, dict[str, str]] = {}
    seen = False
    for name, labels in sorted(((str(name), labels) for name, labels in containers.items()), key=lambda x: x[0]):
        if not isinstance(labels, Mapping):
            errors.append(LabelError(LABEL_PREFIX, "", "the labels of this container are not a mapping", name))
            continue
        own: dict[str, str] = {}
        for key, value in labels.items():
            if not isinstance(key, str) or not key.startswith(LABEL_PREFIX):
                continue
            seen = True
            suffix = key[len(LABEL_PREFIX) :]
            if not isinstance(value, str):
                errors.append(LabelError(key, "", "label value is not a string", name))
            elif suffix in _APP_KEYS:
                app_values.setdefault(suffix, {}).setdefault(value.strip(), (value, []))[1].append(name)
            elif suffix in _CONTAINER_KEYS:
                own[suffix] = value
            else:
                errors.append(_unknown(suffix, value, name))
        if own:
            per_container[name] = own
    if not seen:
        return AppPolicy(errors=tuple(errors))

    app: dict[str, Any] = {"enabled": True}  # any websoft9.backup.* label makes a backup app
    for suffix, (attr, parser) in _APP_KEYS.items():
        variants = app_values.get(suffix)
        if not variants:
            continue
        key = LABEL_PREFIX + suffix
        if len(variants) > 1:
            detail = "; ".join(f"{_shorten(v)!r} on {', '.join(names)}" for v, (_, names) in variants.items())
            errors.append(LabelError(key, "", f"conflicting values across containers: {detail}"))
            continue
        ((raw, names),) = variants.values()
        try:
            app[attr] = parser(raw)
        except ValueError as exc:
            errors.append(LabelError(key, raw, str(exc), names[0] if len(names) == 1 else None))

    stop: list[str] = []
    databases: list[DbSpec] = []
    hooks: list[Hook] = []
    for name, own in per_container.items():
        ok: dict[str, Any] = {}
        bad: set[str] = set()
        for suffix in sorted(own):
            try:
                ok[suffix] = _CONTAINER_KEYS[suffix](own[suffix])
            except ValueError as exc:
                bad.add(suffix)
                errors.append(LabelError(LABEL_PREFIX + suffix, _shown(suffix, own[suffix]), str(exc), name))
        if ok.get("stop"):
            stop.append(name)
        if "db" in ok:
            databases.append(
                DbSpec(name, ok["db"], ok.get("db.user"), ok.get("db.password_env"), ok.get("db.databases"))
            )
        elif "db" not in bad:
            errors.extend(
                LabelError(LABEL_PREFIX + opt, _shown(opt, own[opt]), f"needs {LABEL_PREFIX}db on this container", name)
                for opt in _DB_OPTIONS
                if opt in own
            )
        for phase in HOOK_PHASES:
            if phase in ok:
                hooks.append(
                    Hook(
                        phase=phase,
                        container=name,
                        command=ok[phase],
                        user=ok.get(f"{phase}.user"),
                        timeout_s=ok.get(f"{phase}.timeout", DEFAULT_HOOK_TIMEOUT_S),
                        on_error=ok.get(f"{phase}.on_error", _DEFAULT_ON_ERROR[phase]),
                    )
                )
            elif phase not in bad:
                errors.extend(
                    LabelError(
                        f"{LABEL_PREFIX}{phase}.{opt}",
                        own[f"{phase}.{opt}"],
                        f"needs the hook command {LABEL_PREFIX}{phase} on this container",
                        name,
                    )
                    for opt in _HOOK_OPTIONS
                    if f"{phase}.{opt}" in own
                )

    return AppPolicy(
        **app,
        stop=tuple(sorted(stop)),
        databases=tuple(sorted(databases, key=lambda db: db.container)),
        hooks=tuple(sorted(hooks, key=lambda hook: (HOOK_PHASES.index(hook.phase), hook.container))),
        errors=tuple(errors),
    )
