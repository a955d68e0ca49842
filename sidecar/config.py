"""Settings from embedded defaults and the environment.

The YAML configuration file of DESIGN.md §7 builds on this; for now the
engine needs the data directory, the repository location and the
compression level.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from sidecar.errors import InvalidRequest


def env_int(env: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    """A whole-number setting from the environment; InvalidRequest naming the variable."""
    text = (env.get(name) or "").strip()
    if not text:
        return default
    if not text.isdigit() or not low <= int(text) <= high:
        raise InvalidRequest(f"{name}: must be a whole number from {low} to {high}, got {text!r}")
    return int(text)


def env_flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    text = (env.get(name) or "").strip().lower()
    if not text:
        return default
    if text not in ("true", "false", "1", "0", "yes", "no"):
        raise InvalidRequest(f"{name}: must be true or false, got {text!r}")
    return text in ("true", "1", "yes")


def default_data_dir(env: Mapping[str, str]) -> Path:
    if os.geteuid() == 0:
        return Path("/var/lib/websoft9-backup")
    base = env.get("XDG_DATA_HOME") or os.path.join(env.get("HOME", "/tmp"), ".local", "share")
    return Path(base) / "websoft9-backup"


@dataclass(frozen=True)
class Settings:
    data_dir: Path
    repository: str
    compression_level: int = 3
    catalog_url: str = ""  # BACKUP_CATALOG_URL, default sqlite:///<data dir>/catalog.db

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Settings:
        data_dir = Path(env.get("BACKUP_DATA_DIR") or default_data_dir(env))
        repository = env.get("BACKUP_REPOSITORY") or str(data_dir / "repository")
        level_text = env.get("BACKUP_COMPRESSION_LEVEL", "3")
        try:
            level = int(level_text)
        except ValueError:
            raise InvalidRequest(f"BACKUP_COMPRESSION_LEVEL must be a whole number, got {level_text!r}") from None
        if not 0 <= level <= 19:
            raise InvalidRequest(f"BACKUP_COMPRESSION_LEVEL must be 0 (off) to 19, got {level}")
        catalog_url = env.get("BACKUP_CATALOG_URL") or f"sqlite:///{(data_dir / 'catalog.db').absolute()}"
        return cls(data_dir, repository, level, catalog_url)
