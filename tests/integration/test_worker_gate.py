"""The queue gate with real `worker-entry` processes on RabbitMQ and on Redis.

Each worker is a real process on a real mount (a Docker named volume bind-mounted at its
CODEX_HOME), running the real Codex CLI; tasks go through a real broker.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from celery import Celery
from celery import exceptions as celery_exceptions

from testkit import make_api_key_login
from testkit.workers import (
    BrokerView,
    ShardHome,
    WorkerFactory,
    WorkerProcess,
    agent_status,
    copy_cli_wrapper,
    keys_for_shard,
    wait_until,
)


def _send_phases(publisher: Celery, keys: list[str], **kwargs: Any) -> list[Any]:
    return [
        publisher.send_task(
            "codex.phase", kwargs={"affinity_key": key, "run_id": f"run-{key}", "phase": "plan", **kwargs}
        )
        for key in keys
    ]


class TestHealthyWorker:
    def test_consumes_its_own_shard_only_and_default_work_runs_elsewhere(
        self,
        workers: WorkerFactory,
        shard_homes: Callable[..., ShardHome],
        codex_bin: str,
        publisher: Celery,
        broker: BrokerView,
    ) -> None:
        """Shard 0's worker runs shard-0 tasks only; shard-1 tasks wait; the default worker runs the rest."""
        home = shard_homes()
        make_api_key_login(codex_bin, home.codex_home)
        codex0 = workers(shard=0, home=home)
        default = workers()
        codex0.wait_for("codex.gate.consuming", timeout=30)
        default.wait_for("codex.agent.ready", timeout=30)

        mine = _send_phases(publisher, keys_for_shard(0, 3))
        theirs = _send_phases(publisher, keys_for_shard(1, 2))
        plain = publisher.send_task("housekeeping", kwargs={"label": "x"})

        results = [r.get(timeout=30) for r in mine]
        assert {r["queue"] for r in results} == {"codex-0"}
        assert {r["shard"] for r in results} == {0}
        assert {r["volume"] for r in results} == {home.volume}
        assert {r["worker"] for r in results} == {codex0.env["AGENT_WORKER_NAME"]}
        assert plain.get(timeout=30)["queue"] == "default"
        audits = codex0.events("codex.run.audit")
        assert {a["task_id"] for a in audits} == {r.id for r in mine}
        for line in audits:
            assert {"queue", "shard", "volume", "worker", "run_id", "task_id"} <= set(line)
            assert line["run_id"].startswith("run-repo-")
        assert broker.count("codex-1") == len(theirs)
        status = agent_status(codex0)
        assert status["healthy"] is True and status["state"]["gate"] == "open"


class TestLoggedOutVolume:
    def test_tasks_wait_then_all_run_once_after_login(
        self,
        workers: WorkerFactory,
        shard_homes: Callable[..., ShardHome],
        codex_bin: str,
        publisher: Celery,
        broker: BrokerView,
    ) -> None:
        """Logged out: shard tasks stay queued while other queues flow; a real login opens the gate."""
        home = shard_homes()
        worker = workers(shard=2, home=home, extra=["-Q", "default"])
        worker.wait_for("codex.agent.ready", timeout=30)
        worker.wait_for("codex.gate.closed", timeout=30)

        pending = _send_phases(publisher, keys_for_shard(2, 4))
        plain = publisher.send_task("housekeeping", kwargs={"label": "while-closed"})
        assert plain.get(timeout=30)["hostname"].startswith("codex-2@")  # other queues keep flowing
        wait_until(lambda: broker.count("codex-2") == 4, 10, what="4 tasks waiting in codex-2")
        status = agent_status(worker)
        assert status["exit_code"] == 1 and status["state"]["gate"] == "closed"
        assert [r["code"] for r in status["state"]["reason"]] == ["CODEX-E030"]
        assert "login" in status["state"]["reason"][0]["remediation"]
        checked_at = status["state"]["checks"]["checked_at"]
        wait_until(
            lambda: agent_status(worker)["state"]["checks"]["checked_at"] > checked_at + 1.5,
            10,
            what="two more re-checks of the closed gate",
        )
        assert len(worker.events("codex.check.failed", code="CODEX-E030")) == 1  # logged on change, not per re-check

        make_api_key_login(codex_bin, home.codex_home)
        worker.wait_for("codex.gate.consuming", timeout=10)
        assert len(worker.events("codex.check.passed")) == 1
        results = [r.get(timeout=30) for r in pending]
        assert {r["queue"] for r in results} == {"codex-2"}
        audits = worker.events("codex.run.audit")
        assert sorted(a["task_id"] for a in audits) == sorted(r.id for r in pending)  # each exactly once
        assert broker.count("codex-2") == 0

    def test_fail_fast_exits_with_the_error(
        self, workers: WorkerFactory, shard_homes: Callable[..., ShardHome]
    ) -> None:
        """AGENT_FAIL_FAST=1 on a logged-out volume: exit non-zero, naming the code."""
        worker = workers(shard=0, home=shard_homes(), AGENT_FAIL_FAST="1")
        assert worker.process is not None
        assert worker.process.wait(timeout=60) != 0
        failed = worker.events("codex.agent.fail_fast")
        assert failed and failed[0]["code"] == "CODEX-E030"


class TestLoginLostWhileRunning:
    def test_preflight_failure_requeues_and_closes_the_gate(
        self,
        workers: WorkerFactory,
        shard_homes: Callable[..., ShardHome],
        codex_bin: str,
        publisher: Celery,
        broker: BrokerView,
        tmp_path: Path,
    ) -> None:
        """The CLI starts saying "Not logged in": the task is requeued once, the gate closes, nothing is lost."""
        home = shard_homes()
        make_api_key_login(codex_bin, home.codex_home)
        flag = tmp_path / "logged-out"
        wrapper = copy_cli_wrapper(codex_bin, tmp_path / "bin", flag)
        # Slow re-checks, so the task's own pre-flight is what notices (auth.json is unchanged).
        worker = workers(shard=1, home=home, CODEX_BIN=wrapper, AGENT_RECHECK_INTERVAL="60")
        worker.wait_for("codex.gate.consuming", timeout=30)

        flag.touch()
        victim = _send_phases(publisher, keys_for_shard(1, 1, prefix="victim"))[0]
        failed = worker.wait_for("codex.preflight.failed", timeout=30)
        assert failed[0]["code"] == "CODEX-E030" and failed[0]["task_id"] == victim.id
        worker.wait_for("codex.gate.cancelled", timeout=10)
        wait_until(lambda: broker.count("codex-1") == 1, 15, what="the victim back in codex-1")
        time.sleep(3)  # bounded: with the gate closed it is not redelivered
        relevant = [
            (line.get("event"), line.get("timestamp"))
            for line in worker.lines()
            if str(line.get("event", "")).startswith(("codex.gate", "codex.preflight", "Task ", "Started", "Canceling"))
        ]
        assert len(worker.events("codex.preflight.failed")) == 1, relevant
        assert broker.count("codex-1") == 1
        status = agent_status(worker)
        assert status["state"]["gate"] == "closed" and status["state"]["reason"][0]["code"] == "CODEX-E030"

        flag.unlink()
        os.utime(home.codex_home / "auth.json")  # the operator logs in again
        worker.wait_for("codex.gate.consuming", timeout=15, count=2)
        result = victim.get(timeout=30)
        assert result["shard"] == 1
        assert [a["task_id"] for a in worker.events("codex.run.audit")].count(victim.id) == 1


class TestBrokerReconnect:
    def test_gate_state_survives_a_broker_connection_loss(
        self,
        workers: WorkerFactory,
        shard_homes: Callable[..., ShardHome],
        codex_bin: str,
        publisher: Celery,
        broker: BrokerView,
        broker_url: str,
    ) -> None:
        """After the broker drops every connection, the open gate stays open and the closed one closed."""
        open_home, closed_home = shard_homes(), shard_homes()
        make_api_key_login(codex_bin, open_home.codex_home)
        opened = workers(shard=0, home=open_home)
        closed = workers(shard=1, home=closed_home)
        opened.wait_for("codex.gate.consuming", timeout=30)
        closed.wait_for("codex.gate.closed", timeout=30)
        closed.wait_for("codex.agent.ready", timeout=30)
        for worker in (opened, closed):
            wait_until(lambda w=worker: _connections(w) >= 1, 30, what="first broker connection")

        consuming = len(opened.events("codex.gate.consuming"))
        _drop_broker_connections(broker_url)
        for worker in (opened, closed):
            wait_until(lambda w=worker: _connections(w) >= 2, 90, what="reconnect after the broker dropped us")
        # The restarted consumer applies the open gate again before it consumes.
        opened.wait_for("codex.gate.consuming", timeout=90, count=consuming + 1)

        runs = _send_phases(publisher, keys_for_shard(0, 2))
        try:
            queues = {r.get(timeout=60)["queue"] for r in runs}
        except celery_exceptions.TimeoutError as e:
            raise AssertionError(
                f"{e!r}: {broker.count('codex-0')} left in codex-0; open worker's log:\n{opened.tail(60)}"
            ) from None
        assert queues == {"codex-0"}
        waiting = _send_phases(publisher, keys_for_shard(1, 2))
        wait_until(lambda: broker.count("codex-1") == len(waiting), 10, what="codex-1 still closed")
        assert not closed.events("codex.run.audit")


def _connections(worker: WorkerProcess) -> int:
    """How many times Celery logged "Connected to <broker>"."""
    return sum(1 for line in worker.lines() if str(line.get("event", "")).startswith("Connected to"))


def _drop_broker_connections(url: str) -> None:
    if url.startswith("redis"):
        subprocess.run(["redis-cli", "CLIENT", "KILL", "TYPE", "normal"], check=True, capture_output=True)
        subprocess.run(["redis-cli", "CLIENT", "KILL", "TYPE", "pubsub"], check=True, capture_output=True)
    else:
        subprocess.run(["rabbitmqctl", "stop_app"], check=True, capture_output=True, timeout=60)
        subprocess.run(["rabbitmqctl", "start_app"], check=True, capture_output=True, timeout=120)


class TestWorkerKilled:
    def test_kill_9_redelivers_and_the_next_worker_claims_cleanly(
        self,
        workers: WorkerFactory,
        shard_homes: Callable[..., ShardHome],
        codex_bin: str,
        publisher: Celery,
        broker: BrokerView,
    ) -> None:
        """kill -9 mid-task: the task runs again on a new worker, which claims with no E010."""
        home = shard_homes()
        make_api_key_login(codex_bin, home.codex_home)
        first = workers(shard=0, home=home)
        first.wait_for("codex.gate.consuming", timeout=30)
        run = _send_phases(publisher, keys_for_shard(0, 1), hold_s=4)[0]
        first.wait_for("codex.run.audit", timeout=30, task_id=run.id)
        first.kill9()

        second = workers(shard=0, home=home)
        second.wait_for("codex.gate.consuming", timeout=30)
        assert not second.events("codex.check.failed", code="CODEX-E010")
        assert second.events("codex.claim.stale_replaced")
        try:
            result = run.get(timeout=60)
        except Exception as e:
            raise AssertionError(f"not redelivered: {e}\nfirst:\n{first.tail(15)}\nsecond:\n{second.tail(40)}") from e
        assert result["worker"] == second.env["AGENT_WORKER_NAME"]
        assert second.events("codex.run.audit", task_id=run.id)


class TestSharedVolume:
    def test_second_worker_on_a_claimed_volume_never_consumes(
        self,
        workers: WorkerFactory,
        shard_homes: Callable[..., ShardHome],
        codex_bin: str,
        publisher: Celery,
        broker: BrokerView,
        tmp_path: Path,
    ) -> None:
        """Two workers, one volume: the second reports CODEX-E010 naming the holder and runs nothing."""
        home = shard_homes()
        make_api_key_login(codex_bin, home.codex_home)
        holder = workers(shard=0, home=home)
        holder.wait_for("codex.gate.consuming", timeout=30)
        intruder = workers(shard=0, home=shard_homes(home))
        refused = intruder.wait_for("codex.check.failed", timeout=30, code="CODEX-E010")
        assert f"pid {holder.pid}" in refused[0]["error"]
        assert holder.env["AGENT_WORKER_NAME"] in refused[0]["error"]

        runs = _send_phases(publisher, keys_for_shard(0, 4))
        assert {r.get(timeout=30)["worker"] for r in runs} == {holder.env["AGENT_WORKER_NAME"]}
        assert not intruder.events("codex.run.audit")
        status = agent_status(intruder)
        assert status["healthy"] is False
        assert status["state"]["reason"][0]["code"] == "CODEX-E010"
