"""Orphaned job containers on the real Docker engine, swept by real `worker-entry` processes.

The orphans are made the way the launcher makes job containers (``JobLauncher.policy`` and
``job_create_args``, then the SDK's ``create_container_from_config``), and left as a kill would leave them:
exited, created but never started, or still running.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest

from agent.jobs.artifacts import ATTEMPTS_FILE, RunArtifacts
from agent.jobs.launcher import JobLauncher, job_create_args
from agent.jobs.reconcile import ORPHAN_REASON, JobReconciler
from agent.settings import config as config_mod
from testkit import DockerCleanup, Images
from testkit.workers import ShardHome, WorkerFactory, WorkerProcess, wait_until

pytestmark = [pytest.mark.docker, pytest.mark.codex, pytest.mark.broker]


@pytest.fixture
def broker_url(rabbitmq_url: str) -> str:
    """One broker is enough: the sweep does not depend on it."""
    return rabbitmq_url


class Orphans:
    """Makes labelled job containers of one shard volume, as the launcher would."""

    def __init__(self, client: docker.DockerClient, images: Images, cleanup: DockerCleanup, volume: str) -> None:
        self.client, self.images, self.cleanup, self.volume = client, images, cleanup, volume

    def make(
        self, worker: str, task_id: str, command: list[str], *, start: bool = True, exit_wait: bool = False
    ) -> Any:
        config = config_mod.load({"CODEX_SHARD_INDEX": "0", "AGENT_WORKER_NAME": worker})
        context = {
            "queue": "codex-0",
            "shard": 0,
            "volume": self.volume,
            "worker": worker,
            "run_id": f"run-{task_id}",
            "task_id": task_id,
        }
        policy = JobLauncher(self.client, config, self.volume, context).policy(list_auth_volumes=False)
        create = job_create_args(policy, self.images.busybox, command)
        container = self.client.containers.get(
            self.client.api.create_container_from_config(create.body, create.name)["Id"]
        )
        self.cleanup.container(container)
        if start:
            container.start()
        if exit_wait:
            container.wait(timeout=60)
        return container


@pytest.fixture
def orphans(
    docker_client: docker.DockerClient,
    images: Images,
    docker_cleanup: DockerCleanup,
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
        self,
        workers: WorkerFactory,
        orphans: tuple[ShardHome, Orphans],
        docker_client: docker.DockerClient,
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
            "queue": "codex-0",
            "shard": 0,
            "volume": home.volume,
            "worker": name,
            "run_id": "run-task-exited",
            "task_id": "task-exited",
            "image": make.images.busybox,
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
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(
            lambda: subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True).returncode == 0,
            15,
            what="the private redis-server",
        )
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        server.terminate()
        server.wait(timeout=10)


class TestReconnectSweep:
    def test_after_a_broker_reconnect_the_worker_sweeps_again(
        self,
        workers: WorkerFactory,
        orphans: tuple[ShardHome, Orphans],
        docker_client: docker.DockerClient,
        private_redis: str,
    ) -> None:
        """An orphan appearing while the worker runs (its pool child died) is swept once the consumer reconnects."""
        home, make = orphans
        name = f"rw-{uuid.uuid4().hex[:6]}"
        worker = workers(shard=0, home=home, AGENT_WORKER_NAME=name, CELERY_BROKER_URL=private_redis)
        worker.wait_for("codex.reconcile.done", timeout=60, trigger="startup")
        orphan = make.make(name, "task-lost", ["sh", "-c", "exit 5"], exit_wait=True)
        # The consumer must have started once (its bootsteps all ran) before the connection drops.
        wait_until(
            lambda: any(str(line.get("event", "")).endswith(" ready.") for line in worker.lines()),
            60,
            what="the worker ready",
        )

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
        self,
        orphans: tuple[ShardHome, Orphans],
        docker_client: docker.DockerClient,
        task_is_live: bool,
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


def _jsonl_job(session: str, message: str, code: int, *, sleep_s: float = 0) -> list[str]:
    """A job printing a codex exec --json stream (session, final message, usage) and exiting ``code``."""
    events = [
        {"type": "thread.started", "thread_id": session},
        {"type": "item.completed", "item": {"type": "agent_message", "text": message}},
        {"type": "turn.completed", "usage": {"input_tokens": 7, "output_tokens": 3}},
    ]
    lines = " ".join(f"'{json.dumps(e)}'" for e in events)
    return ["sh", "-c", f"sleep {sleep_s}; printf '%s\\n' {lines}; exit {code}"]


class TestHarvest:
    """A Codex phase's job found by the sweep becomes the phase's record (agent.jobs.harvest)."""

    @staticmethod
    def reconciler(name: str, artifacts: Path, **env: str) -> JobReconciler:
        config = config_mod.load(
            {"CODEX_SHARD_INDEX": "0", "AGENT_WORKER_NAME": name, "CODEX_ARTIFACTS_ROOT": str(artifacts), **env}
        )
        return JobReconciler(config, active=lambda _task_id: False)

    @staticmethod
    def pending(artifacts: Path, task_id: str) -> RunArtifacts:
        run = RunArtifacts(artifacts, f"run-{task_id}")
        run.begin(
            "plan",
            {"task_id": task_id, "run_id": run.run_id, "phase": "plan", "resumed_session": None, "started_at": 1.0},
        )
        return run

    def test_an_exited_phase_job_becomes_the_phase_outcome(
        self,
        orphans: tuple[ShardHome, Orphans],
        docker_client: docker.DockerClient,
        tmp_path: Path,
    ) -> None:
        """Exit 0: outcome.json, events and final message written as a live phase writes them; removed."""
        _, make = orphans
        name = f"rw-{uuid.uuid4().hex[:6]}"
        run = self.pending(tmp_path, "task-done")
        job = make.make(name, "task-done", _jsonl_job("sess-1", "the plan", 0), exit_wait=True)
        removed = self.reconciler(name, tmp_path).sweep("startup")
        assert [j.container_id for j in removed] == [job.id] and _gone(docker_client, job)
        outcome = run.outcome("plan")
        assert outcome is not None
        assert {
            k: outcome[k]
            for k in ("status", "phase", "task_id", "container_id", "exit_code", "session_id", "usage", "harvested")
        } == {
            "status": "completed",
            "phase": "plan",
            "task_id": "task-done",
            "container_id": job.id,
            "exit_code": 0,
            "session_id": "sess-1",
            "usage": {"input_tokens": 7, "output_tokens": 3},
            "harvested": "reconcile",
        }
        assert (run.phase_dir("plan") / "last_message.txt").read_text() == "the plan"
        assert len((run.phase_dir("plan") / "events.jsonl").read_text().splitlines()) == 3
        assert run.session_id() == "sess-1"

    @pytest.mark.parametrize("harvested", [True, False], ids=["phase-job-awaited", "plain-job-killed"])
    def test_a_running_phase_job_is_awaited_then_harvested(
        self,
        orphans: tuple[ShardHome, Orphans],
        docker_client: docker.DockerClient,
        tmp_path: Path,
        harvested: bool,
    ) -> None:
        """A still-running phase job is not killed: it ends, then is harvested and removed. The same job
        without its pending record (no Codex phase, as before the harvest) is killed and nothing recorded."""
        _, make = orphans
        name = f"rw-{uuid.uuid4().hex[:6]}"
        run = self.pending(tmp_path, "task-busy") if harvested else RunArtifacts(tmp_path, "run-task-busy")
        job = make.make(name, "task-busy", _jsonl_job("sess-2", "built", 0, sleep_s=4))
        removed = self.reconciler(name, tmp_path).sweep("startup")
        if not harvested:
            assert [j.exit_code for j in removed] == [137] and run.outcome("plan") is None
            return
        assert removed == []
        wait_until(lambda: _gone(docker_client, job), 60, what="the awaited job removed")
        outcome = run.outcome("plan")
        assert outcome is not None and (outcome["container_id"], outcome["session_id"]) == (job.id, "sess-2")

    @pytest.mark.parametrize("cut_off", [False, True], ids=["non-zero", "cut-off-at-the-limit"])
    def test_a_failed_or_cut_off_phase_job_is_noted_and_the_phase_runs_again(
        self,
        orphans: tuple[ShardHome, Orphans],
        docker_client: docker.DockerClient,
        tmp_path: Path,
        cut_off: bool,
    ) -> None:
        """Non-zero, or killed past CODEX_PHASE_TIMEOUT: an attempt line, no outcome (the phase runs again)."""
        _, make = orphans
        name = f"rw-{uuid.uuid4().hex[:6]}"
        run = self.pending(tmp_path, "task-bad")
        command = ["sleep", "300"] if cut_off else _jsonl_job("sess-3", "half", 2)
        job = make.make(name, "task-bad", command, exit_wait=not cut_off)
        self.reconciler(name, tmp_path, CODEX_PHASE_TIMEOUT="2").sweep("startup")
        wait_until(lambda: _gone(docker_client, job), 60, what="the job removed")
        assert run.outcome("plan") is None
        attempts = [json.loads(line) for line in (run.phase_dir("plan") / ATTEMPTS_FILE).read_text().splitlines()]
        assert [(a["status"], a["container_id"]) for a in attempts] == [("cut_off" if cut_off else "failed", job.id)]
