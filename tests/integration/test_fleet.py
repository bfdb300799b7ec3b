"""``codex-agent fleet`` reads every worker's state from the broker, on real RabbitMQ and Redis.

Real ``worker-entry`` processes post their state; the command, run as a separate process with the
broker URL only (no state directory, no Docker), reads it back. Other engineers' workers post to
the same shared brokers, so the assertions look at this test's workers by name.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from agent.fleet.board import board_for
from agent.fleet.roster import FLEET_TTL, FleetPublisher
from agent.fleet.state import AgentState
from testkit import make_api_key_login
from testkit.workers import ShardHome, WorkerFactory, WorkerProcess, wait_until

CODEX_AGENT = Path(sys.executable).parent / "codex-agent"


def fleet(broker_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``codex-agent fleet`` with nothing but the broker URL in its environment."""
    env = {"PATH": "/usr/bin:/bin", "CELERY_BROKER_URL": broker_url}
    return subprocess.run([str(CODEX_AGENT), "fleet", *args], env=env, capture_output=True, text=True, timeout=30)


def entries(broker_url: str) -> dict[str, dict[str, Any]]:
    """Every posted entry by worker name, from ``codex-agent fleet --json``."""
    done = fleet(broker_url, "--json", "--shards", "2")
    report = json.loads(done.stdout)
    assert done.returncode in (0, 1), done.stderr
    assert report["ok"] is (done.returncode == 0)
    found = {e["worker"]: {**e, "row": row["status"]} for row in report["shards"] for e in row["workers"]}
    found.update({e["worker"]: e for e in report["others"]})
    return found


def name(worker: WorkerProcess) -> str:
    return worker.env["AGENT_WORKER_NAME"]


def test_fleet_shows_open_closed_stopped_and_drops_a_dead_worker(
    workers: WorkerFactory, shard_homes: Callable[..., ShardHome], codex_bin: str, broker_url: str
) -> None:
    """Shard 0 logged in (open), shard 1 not (closed, CODEX-E030); a clean stop shows ``stopped``,
    a ``kill -9`` drops off the board once its entry's TTL passes."""
    home_a, home_b = shard_homes(), shard_homes()
    key = make_api_key_login(codex_bin, home_a.codex_home)
    opened = workers(shard=0, home=home_a)
    closed = workers(shard=1, home=home_b)
    opened.wait_for("codex.gate.consuming", timeout=30)
    closed.wait_for("codex.gate.closed", timeout=30)

    def both_posted() -> dict[str, dict[str, Any]] | None:
        found = entries(broker_url)
        return found if {name(opened), name(closed)} <= found.keys() else None

    found = wait_until(both_posted, timeout=20, interval=0.5, what="both workers on the board")
    first, second = found[name(opened)], found[name(closed)]
    assert (first["shard"], first["gate"], first["codes"], first["row"]) == (0, "open", [], "open")
    assert first["volume"] == home_a.volume and first["queue"] == "codex-0"
    assert (second["shard"], second["gate"], second["codes"]) == (1, "closed", ["CODEX-E030"])
    assert first["host"] and first["pid"] == opened.pid

    text = fleet(broker_url, "--shards", "2")
    assert name(opened) in text.stdout and name(closed) in text.stdout, text.stdout
    line = next(li for li in text.stdout.splitlines() if name(closed) in li)
    assert "closed" in line and "CODEX-E030" in line
    assert key not in text.stdout + text.stderr  # no secret on the board

    closed.stop()

    def stopped() -> dict[str, Any] | None:
        entry = entries(broker_url).get(name(closed), {})
        return entry if entry.get("gate") == "stopped" else None

    assert wait_until(stopped, timeout=10, interval=0.5, what="the stopped entry")["shard"] == 1

    opened.kill9()
    opened.kill_group()  # its pool child too: nothing of the worker is left to renew
    assert name(opened) in entries(broker_url)  # a kill -9 posts nothing: the entry lives on for now

    def dropped() -> dict[str, dict[str, Any]] | None:
        found = entries(broker_url)
        return found if name(opened) not in found else None

    found = wait_until(dropped, timeout=FLEET_TTL * 2 + 10, interval=1, what="the dead worker's entry expiring")
    assert found[name(closed)]["gate"] == "stopped"  # a stopped worker stays on the board longer


@pytest.mark.parametrize(
    "url", ["redis://127.0.0.1:1/0", "amqp://guest:guest@127.0.0.1:1//"], ids=["redis", "rabbitmq"]
)
def test_an_unreachable_broker_is_codex_e070(url: str) -> None:
    """Nothing listens on the port: the command says so with its code and exits non-zero."""
    done = fleet(url, "--json")
    assert done.returncode == 1
    error = json.loads(done.stdout)["error"]
    assert error["code"] == "CODEX-E070" and "127.0.0.1:1" in error["message"]


def test_a_worker_posting_to_an_unreachable_broker_logs_once_and_carries_on() -> None:
    """The publisher's thread meets a dead port: publish() still returns, one warning, no post, a clean close."""
    publisher = FleetPublisher(board_for("redis://127.0.0.1:1/0", name="t"), broker="redis://127.0.0.1:1/0", ttl=0.3)
    state = AgentState(
        worker="t",
        pid=os.getpid(),
        process_start=0.0,
        codex_worker=True,
        gate="open",
        gate_since=0.0,
        shard=0,
        queue="codex-0",
        volume="v",
        codex_home="/x",
    )
    publisher.start()
    with capture_logs() as logs:
        for _ in range(3):
            publisher.publish(state)
        wait_until(lambda: sum(e["event"] == "codex.fleet.unreachable" for e in logs), 30, what="the warning")
        time.sleep(0.5)  # a few more rounds, all failing
        publisher.stop()
    assert [e["event"] for e in logs].count("codex.fleet.unreachable") == 1 and publisher.posts == 0


def test_publish_never_waits_for_a_post_in_flight() -> None:
    """A check publishes its state under the agent's check lock: it must not wait for a slow broker."""
    publisher = FleetPublisher(board_for("redis://127.0.0.1:1/0", name="t"), broker="redis://127.0.0.1:1/0")
    state = AgentState(
        worker="t",
        pid=os.getpid(),
        process_start=0.0,
        codex_worker=True,
        gate="open",
        gate_since=0.0,
        shard=0,
        queue="codex-0",
        volume="v",
        codex_home="/x",
    )
    with publisher._posting:  # a post in flight, stuck on the broker
        caller = threading.Thread(target=publisher.publish, args=(state,))
        caller.start()
        caller.join(30)
        assert not caller.is_alive()  # returned while the post is still in flight
    publisher.stop()
