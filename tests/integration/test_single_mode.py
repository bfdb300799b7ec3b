"""Single-queue mode keeps each run on one login: new runs from the shared ``codex`` queue go to any
free Codex worker, and that worker's later phases come back through its own ``codex-N`` queue.
Real ``worker-entry`` processes, real mounts and the real Codex CLI, on RabbitMQ and on Redis.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable

from celery import Celery

import worker_entry.tasks  # noqa: F401  (the publisher knows the shared tasks)
from agent.settings.config import load
from testkit import make_api_key_login
from testkit.workers import BrokerView, ShardHome, WorkerFactory, wait_until
from worker_entry.app import create_app

RUNS = 8
PHASES = ("plan", "implement", "review")
SINGLE = {"CODEX_QUEUE_MODE": "single", "CODEX_SHARDS": "2"}


def test_single_mode_balances_new_runs_and_keeps_each_run_on_one_worker(
    workers: WorkerFactory,
    shard_homes: Callable[..., ShardHome],
    codex_bin: str,
    broker: BrokerView,
    broker_url: str,
    backend_url: str,
) -> None:
    """Every phase of a run on the worker (and volume) that took its first phase; both workers used."""
    publisher: Celery = create_app(load({"CELERY_BROKER_URL": broker_url, **SINGLE}), result_backend=backend_url)
    started = []
    for shard in (0, 1):
        home = shard_homes()
        make_api_key_login(codex_bin, home.codex_home)
        started.append(workers(shard=shard, home=home, **SINGLE))
    for worker in started:
        worker.wait_for("codex.gate.consuming", timeout=30, queue="codex")
        worker.wait_for("codex.gate.consuming", timeout=30, queue=f"codex-{worker.env['CODEX_SHARD_INDEX']}")

    for n in range(RUNS):
        publisher.send_task(
            "codex.phase",
            kwargs={
                "affinity_key": f"single-{n}",
                "run_id": f"run-single-{n}",
                "phase": PHASES[0],
                "next_phases": list(PHASES[1:]),
                "hold_s": 0.3,
            },
        )

    def audits() -> list[dict[str, object]]:
        return [
            line
            for w in started
            for line in w.events("codex.run.audit")
            if str(line["run_id"]).startswith("run-single-")
        ]

    wait_until(lambda: len(audits()) == RUNS * len(PHASES), 120, what="every phase of every run audited")
    where: dict[str, set[tuple[object, object]]] = defaultdict(set)
    for line in audits():
        where[str(line["run_id"])].add((line["worker"], line["volume"]))
    assert all(len(places) == 1 for places in where.values()), f"a run hopped between logins: {dict(where)}"
    per_worker = Counter(next(iter(places))[0] for places in where.values())
    assert len(per_worker) == 2, f"new runs were not balanced over both workers: {per_worker}"
    queues = Counter(line["queue"] for line in audits())
    assert queues["codex"] == RUNS, "only a run's first phase comes from the shared queue"
    assert queues["codex-0"] + queues["codex-1"] == RUNS * (len(PHASES) - 1)
