"""Storage back ends behind one small protocol (`base.Backend`)."""

from sidecar.repo.backends.base import Backend, ObjectNotFound, open_backend

__all__ = ["Backend", "ObjectNotFound", "open_backend"]
