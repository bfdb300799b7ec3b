"""Sharded mode, ``CODEX_MOVE_FIRST_PHASE=1`` (issue 19, item 4): real ``worker-entry`` processes for
shards 0 and 1 on real mounts and the real broker; shard 1's login is held at its usage limit (the
marker in its volume, as a 429 leaves it), so its gate is closed with CODEX-E036 and the fleet board
shows ``limited_until``.

* Protected: a publisher with the option sends a run's first phase whose key routes to shard 1; it
  moves to shard 0, pinned, runs there, and its next phase follows (pinned by the phase) to shard 0.
  A pinned later phase of a run of shard 1 stays in ``codex-1`` and waits.
* Unprotected (the option off, the default): the same first phase goes to ``codex-1`` and waits there
  (with the option off the protected part fails at once: the first phase carries no pin).

Both brokers: their fleet boards differ (a shared queue in RabbitMQ, keys in Redis); ~8 s each.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from structlog.testing import capture_logs

from agent.fleet.roster import read_fleet
from agent.login import usage
from agent.routing.first_move import ROUTE_MOVED
from agent.settings.config import load
from agent.settings.topology import PIN_ARG
from testkit import make_api_key_login
from testkit.workers import BrokerView, ShardHome, WorkerFactory, keys_for_shard, wait_until
from worker_entry.app import create_app

pytestmark = [pytest.mark.broker, pytest.mark.timeout(300)]

SHARDS = {"CODEX_SHARDS": "2"}


@pytest.mark.parametrize("broker_url", ["rabbitmq", "redis"], indirect=True)
def test_a_first_phase_leaves_a_limited_shard_pinned_and_a_pinned_phase_waits(
    workers: WorkerFactory,
    shard_homes: Callable[..., ShardHome],
    codex_bin: str,
    broker: BrokerView,
    broker_url: str,
    backend_url: str,
) -> None:
    homes = [shard_homes(), shard_homes()]
    for home in homes:
        make_api_key_login(codex_bin, home.codex_home)
    reset = time.time() + 900
    usage.record(homes[1].codex_home, usage.UsageLimit("usage", "usage_limit_reached", reset, True, 300, time.time()))
    open_worker = workers(shard=0, home=homes[0], **SHARDS)
    limited = workers(shard=1, home=homes[1], **SHARDS)
    assert open_worker.wait_for("codex.agent.ready", timeout=60)[0]["gate"] == "open"
    assert limited.wait_for("codex.agent.ready", timeout=60)[0]["gate"] == "closed"
    names = {open_worker.env["AGENT_WORKER_NAME"]: "open", limited.env["AGENT_WORKER_NAME"]: "limited"}

    def board_ready() -> bool:
        mine = {names[e.worker]: e for e in read_fleet(broker_url, 2).entries if e.worker in names}
        return (
            set(mine) == {"open", "limited"} and mine["open"].gate == "open" and mine["limited"].limited_until == reset
        )

    wait_until(board_ready, 30, what="the board showing shard 1 limited and shard 0 open")

    tag = uuid.uuid4().hex[:6]
    key = keys_for_shard(1, 1, shards=2, prefix=f"move-{tag}")[0]

    def first(run_id: str, publisher: Any) -> tuple[Any, dict[str, Any]]:
        kwargs: dict[str, Any] = {"affinity_key": key, "run_id": run_id, "phase": "plan", "next_phases": ["build"]}
        return publisher.send_task("codex.phase", kwargs=kwargs), kwargs

    mover = create_app(
        load({"CELERY_BROKER_URL": broker_url, "CODEX_MOVE_FIRST_PHASE": "1", **SHARDS}), result_backend=backend_url
    )
    moved_run = f"cwa-move-{tag}"
    with capture_logs() as logs:
        result, sent = first(moved_run, mover)
    assert sent[PIN_ARG] == 0, "the move pins the run"
    moved = [line for line in logs if line["event"] == ROUTE_MOVED]
    assert [(m["from_queue"], m["queue"], m["run_id"]) for m in moved] == [("codex-1", "codex-0", moved_run)]
    assert moved[0]["limited_until"] == usage.utc(reset)
    done = result.get(timeout=60)
    assert (done["shard"], done["queue"]) == (0, "codex-0")
    audits = open_worker.wait_for("codex.run.audit", timeout=60, count=2, run_id=moved_run)
    assert [a["queue"] for a in audits] == ["codex-0", "codex-0"], "the run's next phase followed it"

    # A pinned later phase of a run of shard 1 stays there and waits (its session lives there).
    pinned_run = f"cwa-pinned-{tag}"
    pinned = mover.send_task(
        "codex.phase", kwargs={"affinity_key": key, "run_id": pinned_run, "phase": "build", PIN_ARG: 1}
    )
    wait_until(lambda: broker.count("codex-1") == 1, 30, what="the pinned phase waiting in codex-1")

    # Unprotected: with the option off the first phase goes to its limited shard and waits there too.
    plain = create_app(load({"CELERY_BROKER_URL": broker_url, **SHARDS}), result_backend=backend_url)
    waiting_run = f"cwa-stay-{tag}"
    waiting, sent = first(waiting_run, plain)
    wait_until(lambda: broker.count("codex-1") == 2, 30, what="the first phase waiting in codex-1")
    print(f"option off: first phase of {waiting_run} waits in codex-1 ({broker.count('codex-1')} queued there)")
    assert PIN_ARG not in sent and not waiting.ready() and not pinned.ready()
    assert not open_worker.events("codex.run.audit", run_id=waiting_run)
    assert not open_worker.events("codex.run.audit", run_id=pinned_run)
