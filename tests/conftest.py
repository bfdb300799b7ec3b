"""Shared fixtures: the real Docker engine, Codex CLI, brokers and images, or a named skip.

A fixture skips only when its component is absent ("Docker engine absent", "Codex CLI absent",
"RabbitMQ absent", "Redis absent"); with ``CODEX_AGENT_REQUIRE_ALL=1`` (CI) each such skip fails.
Plain helpers live in the ``testkit`` package (in the repository, not the wheel: pytest's ``pythonpath`` puts the root on ``sys.path``; shared with ``bench``).
"""

from __future__ import annotations

from collections.abc import Iterator

import docker
import pytest

from testkit import (
    RABBITMQ_URL,
    REDIS_URL,
    DockerCleanup,
    Images,
    VolumeFactory,
    build_images,
    find_codex_bin,
    require_port,
)
from testkit.require_all import (  # noqa: F401  (hooks: pytest finds them by name here)
    pytest_make_collect_report,
    pytest_runtest_makereport,
)


@pytest.fixture(scope="session")
def codex_bin() -> str:
    """Absolute path of the real Codex CLI (``$CODEX_BIN``, PATH, or .cache/codex)."""
    path = find_codex_bin()
    if path is None:
        pytest.skip("Codex CLI absent: set CODEX_BIN or run scripts/provision.sh")
    return str(path)


@pytest.fixture(scope="session")
def docker_client() -> Iterator[docker.DockerClient]:
    """A client of the real Docker engine, API version negotiated with the daemon."""
    try:
        client = docker.from_env()
        client.ping()
    except Exception as exc:  # noqa: BLE001  (any failure here means: no usable engine)
        pytest.skip(f"Docker engine absent: {exc}")
    yield client
    client.close()


@pytest.fixture(scope="session")
def images(docker_client: docker.DockerClient) -> Images:
    """The worker, job and busybox image tags, built once per session by images/build.sh."""
    try:
        return build_images()
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="session")
def rabbitmq_url() -> str:
    """AMQP URL of a RabbitMQ that answers (default amqp://guest:guest@localhost:5672//)."""
    return require_port(RABBITMQ_URL, "RabbitMQ")


@pytest.fixture(scope="session")
def redis_url() -> str:
    """URL of a Redis that answers (default redis://localhost:6379/0)."""
    return require_port(REDIS_URL, "Redis")


@pytest.fixture
def docker_cleanup(docker_client: docker.DockerClient) -> Iterator[DockerCleanup]:
    """Records containers and volumes; removes them (and containers using them) at teardown."""
    cleanup = DockerCleanup(docker_client)
    yield cleanup
    cleanup.close()


@pytest.fixture
def volume_factory(docker_client: docker.DockerClient, images: Images, docker_cleanup: DockerCleanup) -> VolumeFactory:
    """``volume_factory(name=None, *, uid=1000, gid=1000, mode=0o700, labels=None)`` -> Volume."""
    return VolumeFactory(docker_client, docker_cleanup, images.busybox)


@pytest.fixture(autouse=True, scope="session")
def strict_error_facts() -> Iterator[None]:
    """An AgentError built without a fact its message needs fails the test (never a raw ``{name}``)."""
    from agent.errors import AgentError

    AgentError.strict_fields = True
    yield
    AgentError.strict_fields = False
