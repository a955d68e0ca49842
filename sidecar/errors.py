"""Errors that carry their own code, HTTP status and exit code.

Every error the program reports on purpose is a `BackupError`. Only `cli.main()`
turns one into an exit status and the API layer into an HTTP response; the core
raises and never prints. Messages never contain secrets.
"""

from __future__ import annotations

import errno

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_WARNINGS = 3


class BackupError(Exception):
    """Base of every expected error: `code` for the API, `exit_code` for the CLI."""

    code = "INTERNAL_ERROR"
    http_status = 500
    exit_code = EXIT_FAILED

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class InvalidRequest(BackupError):
    code = "INVALID_REQUEST"
    http_status = 400


class RepositoryNotFound(BackupError):
    code = "REPOSITORY_NOT_FOUND"
    http_status = 500


class RepositoryExists(BackupError):
    code = "REPOSITORY_EXISTS"
    http_status = 409


class UnsupportedFormat(BackupError):
    code = "UNSUPPORTED_FORMAT"
    http_status = 500


class WrongKey(BackupError):
    code = "WRONG_KEY"
    http_status = 500


class RepositoryLocked(BackupError):
    code = "OPERATION_IN_PROGRESS"
    http_status = 409


class BackupNotFound(BackupError):
    code = "BACKUP_NOT_FOUND"
    http_status = 404


class BackupCreateFailed(BackupError):
    code = "BACKUP_CREATE_FAILED"
    http_status = 500


class BackupCorrupted(BackupError):
    code = "BACKUP_CORRUPTED"
    http_status = 500


class RestoreFailed(BackupError):
    code = "RESTORE_FAILED"
    http_status = 500


class QuotaExceeded(BackupError):
    code = "BACKUP_QUOTA_EXCEEDED"
    http_status = 507


class IntegrityError(BackupCorrupted):
    """A sealed object failed authentication or its content does not match its id."""


def disk_full(exc: OSError, where: str) -> QuotaExceeded | None:
    """The quota error for a full disk (ENOSPC, EDQUOT), else None."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return QuotaExceeded(f"no space left writing {where}: {exc.strerror}")
    return None


class DockerUnavailable(BackupError):
    code = "DOCKER_UNAVAILABLE"
    http_status = 503


class AppNotFound(BackupError):
    code = "APP_NOT_FOUND"
    http_status = 404


class AppPolicyInvalid(BackupError):
    code = "APP_POLICY_INVALID"
    http_status = 409


class AppBusy(BackupError):
    code = "OPERATION_IN_PROGRESS"
    http_status = 409


class CatalogUnavailable(BackupError):
    code = "CATALOG_UNAVAILABLE"
    http_status = 503


class JobNotFound(BackupError):
    code = "JOB_NOT_FOUND"
    http_status = 404
