"""Orphaned job containers on the real Docker engine, swept by real `worker-entry` processes.

The orphans are made the way the launcher makes job containers (``JobLauncher.policy`` and
``job_create_args``, then the SDK's ``create_container_from_config``), and left as a kill would leave them:
exited, created but never started, or still running.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import docker
import docker.errors
import pytest
from testkit import DockerCleanup, Images
from testkit.workers import ShardHome, WorkerFactory, WorkerProcess, wait_until

from agent import config as config_mod
from agent.jobs import JobLauncher, job_create_args
from agent.reconcile import ORPHAN_REASON, JobReconciler

pytestmark = [pytest.mark.docker, pytest.mark.codex, pytest.mark.broker]


@pytest.fixture
def broker_url(rabbitmq_url: str) -> str:
    """One broker is enough: the sweep does not depend on it."""
    return rabbitmq_url


class Orphans:
    """Makes labelled job containers of one shard volume, as the launcher would."""

    def __init__(self, client: docker.DockerClient, images: Images, cleanup: DockerCleanup, volume: str) -> None:
        self.client, self.images, self.cleanup, self.volume = client, images, cleanup, volume

    def make(self, worker: str, task_id: str, command: list[str], *, start: bool = True, exit_wait: bool = False) -> Any:
        config = config_mod.load({"CODEX_SHARD_INDEX": "0", "AGENT_WORKER_NAME": worker})
        context = {"queue": "codex-0", "shard": 0, "volume": self.volume, "worker": worker,
                   "run_id": f"run-{task_id}", "task_id": task_id}
        policy = JobLauncher(self.client, config, self.volume, context).policy(list_auth_volumes=False)
        create = job_create_args(policy, self.images.busybox, command)
        container = self.client.containers.get(self.client.api.create_container_from_config(create.body, create.name)["Id"])
        self.cleanup.container(container)
        if start:
            container.start()
        if exit_wait:
            container.wait(timeout=60)
        return container


@pytest.fixture
def orphans(
    docker_client: docker.DockerClient, images: Images, docker_cleanup: DockerCleanup,
    shard_homes: Callable[..., ShardHome],
) -> tuple[ShardHome, Orphans]:
    home = shard_homes()
    return home, Orphans(docker_client, images, docker_cleanup, home.volume)


def _gone(client: docker.DockerClient, container: Any) -> bool:
    try:
        client.containers.get(container.id)
    except docker.errors.NotFound:
        return True
    return False


def _finished(worker: WorkerProcess, container: Any) -> dict[str, Any]:
    lines = worker.events("codex.job.finished", container_id=container.id)
    assert len(lines) == 1, lines
    return lines[0]


class TestStartupSweep:
    def test_a_restarted_worker_removes_and_audits_its_orphans_only(
        self, workers: WorkerFactory, orphans: tuple[ShardHome, Orphans], docker_client: docker.DockerClient,
    ) -> None:
        """Exited, never-started and still-running job containers of this shard and worker are removed,
        each with a reconciled codex.job.finished line; another worker's container is left alone."""
        home, make = orphans
        name = f"rw-{uuid.uuid4().hex[:6]}"
        exited = make.make(name, "task-exited", ["sh", "-c", "sleep 2; exit 3"], exit_wait=True)
        created = make.make(name, "task-created", ["true"], start=False)
        running = make.make(name, "task-running", ["sleep", "300"])
        someone_elses = make.make(f"other-{name}", "task-other", ["true"], exit_wait=True)

        worker = workers(shard=0, home=home, AGENT_WORKER_NAME=name)
        done = worker.wait_for("codex.reconcile.done", timeout=60)[0]
        assert (done["trigger"], done["found"], done["removed"], done["left"]) == ("startup", 3, 3, 0)

        for container in (exited, created, running):
            assert _gone(docker_client, container)
        assert not _gone(docker_client, someone_elses)
        assert not worker.events("codex.job.finished", container_id=someone_elses.id)

        line = _finished(worker, exited)
        assert line["reason"] == ORPHAN_REASON and line["reconciled"] is True and line["trigger"] == "startup"
        assert (line["exit_code"], line["found_status"], line["killed"]) == (3, "exited", False)
        assert line["duration_s"] >= 1.0  # StartedAt..FinishedAt of `sleep 2` (docker-init starts first)
        assert {k: line[k] for k in ("queue", "shard", "volume", "worker", "run_id", "task_id", "image")} == {
            "queue": "codex-0", "shard": 0, "volume": home.volume, "worker": name,
            "run_id": "run-task-exited", "task_id": "task-exited", "image": make.images.busybox,
        }
        line = _finished(worker, created)
        assert (line["exit_code"], line["duration_s"], line["found_status"]) == (None, None, "created")
        assert line["task_id"] == "task-created"
        line = _finished(worker, running)
        assert (line["found_status"], line["killed"], line["exit_code"]) == ("running", True, 137)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def private_redis() -> Iterator[str]:
    """A Redis of this test's own: dropping its clients disturbs no other test on the shared brokers."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("Redis absent: no redis-server binary for a private broker")
    port = _free_port()
    server = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True).returncode == 0,
                   15, what="the private redis-server")
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        server.terminate()
        server.wait(timeout=10)


class TestReconnectSweep:
    def test_after_a_broker_reconnect_the_worker_sweeps_again(
        self, workers: WorkerFactory, orphans: tuple[ShardHome, Orphans], docker_client: docker.DockerClient,
        private_redis: str,
    ) -> None:
        """An orphan appearing while the worker runs (its pool child died) is swept once the consumer reconnects."""
        home, make = orphans
        name = f"rw-{uuid.uuid4().hex[:6]}"
        worker = workers(shard=0, home=home, AGENT_WORKER_NAME=name, CELERY_BROKER_URL=private_redis)
        worker.wait_for("codex.reconcile.done", timeout=60, trigger="startup")
        orphan = make.make(name, "task-lost", ["sh", "-c", "exit 5"], exit_wait=True)
        # The consumer must have started once (its bootsteps all ran) before the connection drops.
        wait_until(lambda: any(str(line.get("event", "")).endswith(" ready.") for line in worker.lines()), 60,
                   what="the worker ready")

        port = private_redis.rsplit(":", 1)[1].split("/")[0]
        for kind in ("normal", "pubsub"):
            subprocess.run(["redis-cli", "-p", port, "CLIENT", "KILL", "TYPE", kind], check=True, capture_output=True)
        done = worker.wait_for("codex.reconcile.done", timeout=60, trigger="reconnect")[0]
        assert done["removed"] == 1
        assert _gone(docker_client, orphan)
        line = _finished(worker, orphan)
        assert (line["trigger"], line["exit_code"], line["task_id"]) == ("reconnect", 5, "task-lost")


class TestLiveTasksAreLeftAlone:
    @pytest.mark.parametrize("task_is_live", [True, False], ids=["live-task-kept", "without-the-check-removed"])
    def test_a_running_job_of_a_task_this_process_holds_is_never_removed(
        self, orphans: tuple[ShardHome, Orphans], docker_client: docker.DockerClient, task_is_live: bool,
    ) -> None:
        """A job created after this process started, whose task is held here, keeps running; the same
        container with its task not held (the protection off) is killed and removed."""
        _, make = orphans
        name = f"rw-{uuid.uuid4().hex[:6]}"
        config = config_mod.load({"CODEX_SHARD_INDEX": "0", "AGENT_WORKER_NAME": name})
        live = make.make(name, "task-live", ["sleep", "300"])
        reconciler = JobReconciler(config, active=lambda task_id: task_is_live and task_id == "task-live")
        removed = reconciler.sweep("reconnect")
        if task_is_live:
            live.reload()
            assert removed == [] and live.status == "running"
        else:
            assert [job.container_id for job in removed] == [live.id] and _gone(docker_client, live)
