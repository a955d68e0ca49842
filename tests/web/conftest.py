"""The browser test needs the integration tests' real Docker engine and compose projects."""

from tests.integration.conftest import compose, docker_client  # noqa: F401 - fixtures
