"""The compose profile's PostgreSQL image (``images/build.sh --postgres``), built with no registry,
as Celery's result backend: it refuses to start without a password, initialises its volume once,
and keeps the results across a restart."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from celery.result import AsyncResult

from agent.settings.config import load
from testkit import REPO_ROOT
from testkit.dockerkit import TEST_LABEL, TEST_PREFIX
from testkit.workers import wait_until
from worker_entry.app import create_app

pytestmark = [pytest.mark.docker, pytest.mark.broker]

IMAGE = "codex-worker-agent/postgres:dev"
PASSWORD = "codex-test-only"  # a public test value


@pytest.fixture(scope="module")
def postgres_image(images: Any) -> str:
    """Built by the project's own script (cached layers after the first time)."""
    done = subprocess.run(
        [str(REPO_ROOT / "images" / "build.sh"), "--postgres"], capture_output=True, text=True, timeout=900, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return IMAGE


@pytest.fixture
def made(docker_client: Any) -> Iterator[list[Any]]:
    things: list[Any] = []
    yield things
    for thing in reversed(things):
        try:
            thing.remove(force=True)
        except Exception:  # noqa: BLE001  (already gone)
            pass


def test_the_profiles_postgres_keeps_celery_results_across_a_restart(
    postgres_image: str,
    docker_client: Any,
    redis_url: str,
    made: list[Any],
) -> None:
    refused = docker_client.containers.run(postgres_image, detach=True, labels=dict(TEST_LABEL))
    made.append(refused)
    assert refused.wait(timeout=60)["StatusCode"] == 2
    assert b"POSTGRES_PASSWORD is empty" in refused.logs()

    volume = docker_client.volumes.create(name=f"{TEST_PREFIX}pgdata_{uuid.uuid4().hex[:8]}", labels=dict(TEST_LABEL))
    server = docker_client.containers.run(
        postgres_image,
        detach=True,
        labels=dict(TEST_LABEL),
        environment={"POSTGRES_PASSWORD": PASSWORD},
        volumes={volume.name: {"bind": "/var/lib/postgresql/data", "mode": "rw"}},
        ports={"5432/tcp": ("127.0.0.1", None)},
    )
    made.extend([volume, server])

    def healthy() -> bool:
        server.reload()
        return bool(server.attrs["State"].get("Health", {}).get("Status") == "healthy")

    def backend() -> str:
        """The backend URL at the container's published port (a new one after each start)."""
        return f"db+postgresql://codex:{PASSWORD}@127.0.0.1:{server.ports['5432/tcp'][0]['HostPort']}/codex_results"

    wait_until(healthy, 90, what="the PostgreSQL container healthy")
    app = create_app(load({"CELERY_BROKER_URL": redis_url}), result_backend=backend())
    task_id = f"cwa-pg-{uuid.uuid4().hex}"
    app.backend.store_result(task_id, {"phase": "plan", "shard": 0}, "SUCCESS")

    server.restart(timeout=30)
    wait_until(healthy, 90, what="the PostgreSQL container healthy again")
    reader = create_app(load({"CELERY_BROKER_URL": redis_url}), result_backend=backend())
    assert AsyncResult(task_id, app=reader).get(timeout=30) == {"phase": "plan", "shard": 0}
    assert server.logs().count(b"codex-postgres: initialised") == 1, "the volume was initialised again"
