"""The event-driven watch with real `worker-entry` processes on real mounts (a Docker volume
bind-mounted at CODEX_HOME), the real Codex CLI and RabbitMQ.

Re-checks are slowed to ``AGENT_RECHECK_INTERVAL=300`` (an open gate would re-check after 20
minutes), so only the watch's events can explain a reaction. Each test has its own queue
(``CODEX_QUEUE``), so nothing else on the shared broker touches its tasks.
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from celery import Celery
from kombu import Connection, Queue

from testkit import make_api_key_login
from testkit.workers import BrokerView, ShardHome, WorkerFactory, WorkerProcess, agent_status, wait_until

SLOW = "300"

pytestmark = [pytest.mark.docker, pytest.mark.codex, pytest.mark.broker]


@pytest.fixture
def broker_url(rabbitmq_url: str) -> str:
    """One broker is enough: the watch does not depend on it (the gate tests cover both)."""
    return rabbitmq_url


@pytest.fixture
def queue(broker_url: str) -> Iterator[str]:
    """A shard queue of this test's own."""
    name = f"cwa-watch-{uuid.uuid4().hex[:8]}"
    yield name
    with Connection(broker_url, connect_timeout=5) as connection:
        Queue(name, durable=True)(connection.default_channel).delete()


def _open_worker(workers: WorkerFactory, home: ShardHome, codex_bin: str, queue: str, **env: str) -> WorkerProcess:
    make_api_key_login(codex_bin, home.codex_home)
    worker = workers(shard=0, home=home, CODEX_QUEUE=queue, AGENT_RECHECK_INTERVAL=SLOW, **env)
    worker.wait_for("codex.gate.consuming", timeout=30)
    return worker


def _publish(publisher: Celery, queue: str) -> Any:
    return publisher.send_task(
        "codex.phase",
        kwargs={"affinity_key": "watch", "run_id": f"run-{uuid.uuid4().hex[:6]}", "phase": "plan"},
        queue=queue,
    )


def _waits(worker: WorkerProcess, broker_url: str, queue: str) -> None:
    """The task is back in (or never left) the shard queue, and no phase ran."""
    wait_until(lambda: BrokerView(broker_url).count(queue) == 1, 20, what=f"the task waiting in {queue}")
    assert not worker.events("codex.run.audit")


def _reason_codes(worker: WorkerProcess) -> set[str]:
    state = agent_status(worker)["state"]
    assert state["gate"] == "closed", state
    return {r["code"] for r in state["reason"]}


def _runs_once_after_the_fix(worker: WorkerProcess, task: Any, queue: str) -> None:
    worker.wait_for("codex.gate.consuming", timeout=20, count=2)
    assert task.get(timeout=30)["queue"] == queue
    assert [a["task_id"] for a in worker.events("codex.run.audit")] == [task.id]


class TestEventWatch:
    def test_chmod_of_an_open_volume_closes_the_gate_before_a_task_starts(
        self,
        workers: WorkerFactory,
        shard_homes: Callable[..., ShardHome],
        codex_bin: str,
        publisher: Celery,
        broker_url: str,
        queue: str,
    ) -> None:
        """chmod 0755 while open, a task published right after: it never runs; chmod 0700 runs it once."""
        home = shard_homes()
        worker = _open_worker(workers, home, codex_bin, queue)
        assert worker.wait_for("codex.watch.started", timeout=30, mode="events")

        os.chmod(home.codex_home, 0o755)
        task = _publish(publisher, queue)
        worker.wait_for("codex.gate.closed", timeout=20)
        _waits(worker, broker_url, queue)
        assert any("home" in line["what"] for line in worker.events("codex.watch.changed"))
        assert "CODEX-E023" in _reason_codes(worker)

        os.chmod(home.codex_home, 0o700)
        _runs_once_after_the_fix(worker, task, queue)

    def test_a_volume_mounted_over_closes_the_gate_and_unmounting_it_reopens(
        self,
        workers: WorkerFactory,
        shard_homes: Callable[..., ShardHome],
        codex_bin: str,
        publisher: Celery,
        broker_url: str,
        queue: str,
    ) -> None:
        """Another volume mounted over CODEX_HOME: closed (E021), tasks wait; the shard's own volume back: they run."""
        home, other = shard_homes(), shard_homes()
        worker = _open_worker(workers, home, codex_bin, queue)

        subprocess.run(["mount", "--bind", str(other.source), str(home.codex_home)], check=True)
        try:
            worker.wait_for("codex.gate.closed", timeout=20)
            task = _publish(publisher, queue)
            _waits(worker, broker_url, queue)
            assert any("mount" in line["what"] for line in worker.events("codex.watch.changed"))
            assert "CODEX-E021" in _reason_codes(worker)
        finally:
            subprocess.run(["umount", str(home.codex_home)], check=True)  # the shard's own volume is back on top
        _runs_once_after_the_fix(worker, task, queue)


class TestWithoutTheEventWatch:
    def test_poll_mode_leaves_the_gate_open_and_only_the_preflight_refuses(
        self,
        workers: WorkerFactory,
        shard_homes: Callable[..., ShardHome],
        codex_bin: str,
        publisher: Celery,
        broker_url: str,
        queue: str,
    ) -> None:
        """The test of the test: with AGENT_WATCH=poll the same chmod leaves the gate open, and the
        per-task volume guard is what refuses the phase (CODEX-E023), requeueing it."""
        home = shard_homes()
        worker = _open_worker(workers, home, codex_bin, queue, AGENT_WATCH="poll")
        assert worker.wait_for("codex.watch.started", timeout=30, mode="poll")

        os.chmod(home.codex_home, 0o755)
        time.sleep(3)  # bounded: six rounds of the stat loop
        assert not worker.events("codex.gate.closed")
        assert agent_status(worker)["state"]["gate"] == "open"

        task = _publish(publisher, queue)
        refused = worker.wait_for("codex.preflight.failed", timeout=20)
        assert refused[0]["code"] == "CODEX-E023" and refused[0]["task_id"] == task.id
        _waits(worker, broker_url, queue)

        os.chmod(home.codex_home, 0o700)
        os.utime(home.codex_home / "auth.json")  # poll mode re-checks on an auth.json change
        _runs_once_after_the_fix(worker, task, queue)
