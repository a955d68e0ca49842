"""The drills use the integration tests' real Docker engine (failing, not skipping, under CI=true)."""

from tests.integration.conftest import docker_client  # noqa: F401 - a fixture
