"""Fixtures for tests that run real `worker-entry` processes against real brokers and mounts."""

from __future__ import annotations

import os
import secrets
import shutil
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import pytest
from celery import Celery

from agent.settings.config import load
from openai_standin import StandIn
from testkit.components import REPO_ROOT
from testkit.phases import PhaseLab
from testkit.rabbit import rabbitmqctl
from testkit.workers import BrokerView, ShardHome, WorkerFactory, WorkerProcess
from worker_entry.app import create_app

RESULTS_DB = 1  # the Redis database for task results (brokers use db 0)


@pytest.fixture(params=["rabbitmq", "redis"])
def broker_url(request: pytest.FixtureRequest) -> str:
    """Every gate test runs once on RabbitMQ and once on Redis."""
    url: str = request.getfixturevalue(f"{request.param}_url")
    return url


@pytest.fixture
def backend_url(redis_url: str) -> str:
    return redis_url.rsplit("/", 1)[0] + f"/{RESULTS_DB}"


@pytest.fixture
def broker(broker_url: str) -> Iterator[BrokerView]:
    view = BrokerView(broker_url)
    view.purge()
    yield view
    view.purge()


@pytest.fixture
def publisher(broker_url: str, backend_url: str) -> Celery:
    """The platform's side: an app that routes and sends Codex tasks."""
    import worker_entry.tasks  # noqa: F401  (registers the shared tasks)

    return create_app(load({"CELERY_BROKER_URL": broker_url}), result_backend=backend_url)


@pytest.fixture
def shard_homes(docker_client: Any, tmp_path: Path) -> Iterator[Callable[..., ShardHome]]:
    """Make real volumes bind-mounted at a worker's CODEX_HOME; unmount and remove them after."""
    if os.geteuid() != 0:
        pytest.skip("mount privileges absent: the gate tests bind-mount volumes and need root")
    made: list[ShardHome] = []

    def make(share: ShardHome | None = None) -> ShardHome:
        """A new volume, or with ``share`` the same volume mounted at a second home."""
        home = share.bind_again(tmp_path) if share else ShardHome.create(docker_client, tmp_path)
        made.append(home)
        return home

    yield make
    for home in made:
        home.unmount()
    for name in {h.volume for h in made}:
        try:
            docker_client.volumes.get(name).remove(force=True)
        except Exception:
            pass


@pytest.fixture
def workers(broker_url: str, backend_url: str, codex_bin: str, tmp_path: Path) -> Iterator[WorkerFactory]:
    """Start `worker-entry` processes; stop them all at teardown."""
    started: list[WorkerProcess] = []

    def start(
        shard: int | None = None,
        home: ShardHome | None = None,
        extra: list[str] | None = None,
        volume: str | None = None,
        app: str | None = None,
        **env: str,
    ) -> WorkerProcess:
        name = f"w{len(started)}-{uuid.uuid4().hex[:6]}"
        environ = {
            "PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin",
            "HOME": str(home.home if home else tmp_path / name),
            "CELERY_BROKER_URL": broker_url,
            "CELERY_RESULT_BACKEND": backend_url,
            "CELERY_VISIBILITY_TIMEOUT": "8",
            "AGENT_STATE_DIR": str(tmp_path / name / "state"),
            "AGENT_RECHECK_INTERVAL": "1",
            "AGENT_WORKER_NAME": name,
            "CODEX_BIN": codex_bin,
            "CODEX_LOGIN_TIMEOUT": "10",
            "CODEX_JOB_IMAGE": "none",  # the gate tests run no job containers (see tests/e2e)
            "PYTHONPATH": str(REPO_ROOT),  # this checkout's code, whichever one the venv was installed from
            **env,
        }
        if shard is not None:
            environ["CODEX_SHARD_INDEX"] = str(shard)
            environ["CODEX_VOLUME_NAME"] = volume or (home.volume if home else f"codex_auth_{shard}")
        entry_args = ["--app", app] if app else []
        worker = WorkerProcess(environ, tmp_path / f"{name}.log", extra or [], entry_args).start()
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()
        worker.kill_group()


@pytest.fixture
def standin() -> Iterator[StandIn]:
    """The local OpenAI stand-in (token endpoint + Responses API) on a loopback port."""
    with StandIn() as server:
        yield server


@pytest.fixture
def lab(docker_client: Any, standin: StandIn, images: Any) -> Iterator[PhaseLab]:
    """Volumes with stand-in logins and worker containers for real Codex phases; removed after."""
    made = PhaseLab(docker_client, standin, images.worker, images.job)
    yield made
    made.close()


@pytest.fixture
def rabbitmq_vhost(rabbitmq_url: str) -> Iterator[str]:
    """A fresh vhost on the real RabbitMQ for this test only; deleted afterwards."""
    if shutil.which("rabbitmqctl") is None:
        pytest.skip("RabbitMQ absent: rabbitmqctl not found (needed for a private vhost)")
    vhost = f"cwa_test_{secrets.token_hex(4)}"
    user = rabbitmq_url.split("://", 1)[1].split(":", 1)[0]
    rabbitmqctl("add_vhost", vhost)
    rabbitmqctl("set_permissions", "-p", vhost, user, ".*", ".*", ".*")
    try:
        parts = urlsplit(rabbitmq_url)
        yield f"{parts.scheme}://{parts.netloc}/{quote(vhost, safe='')}"
    finally:
        rabbitmqctl("delete_vhost", vhost)
