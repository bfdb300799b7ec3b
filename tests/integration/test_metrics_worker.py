"""A real `worker-entry` (prefork pool, real broker, real Codex CLI) serves its metrics to a real Prometheus.

The gate's series follow what the worker did (closed while logged out, open after a real login,
closed again after a real `codex logout`), as Debian's Prometheus scrapes them, and the tasks the
pool children ran are all counted by the main process's endpoint. A real Flower (PyPI) on the same
broker lists the worker and its Codex tasks: task events are on by default.
"""

from __future__ import annotations

import json
import re
import subprocess
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from testkit import make_api_key_login
from testkit.monitoring import Flower, Prometheus, Samples, binary_or_skip, free_port, scrape
from testkit.workers import ShardHome, WorkerFactory, WorkerProcess, keys_for_shard, wait_until


def scrape_when_up(worker: WorkerProcess, port: int) -> Samples:
    def answer() -> Samples | None:
        assert worker.exited() is None, worker.tail()
        try:
            return scrape(port)
        except OSError:
            return None

    found: Samples = wait_until(answer, 30, what=f"metrics on port {port}")
    return found


@pytest.fixture
def prometheus_binary() -> str:
    return binary_or_skip("prometheus", "Prometheus")


@pytest.fixture
def prometheus(prometheus_binary: str, tmp_path: Path) -> Iterator[Callable[[list[str]], Prometheus]]:
    started: list[Prometheus] = []

    def start(targets: list[str]) -> Prometheus:
        directory = tmp_path / f"prometheus-{len(started)}"
        directory.mkdir()
        started.append(Prometheus(prometheus_binary, directory, targets))
        return started[-1]

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def flower(broker_url: str, tmp_path: Path) -> Iterator[Flower]:
    server = Flower(broker_url, tmp_path)
    yield server
    server.stop()


def gate(samples: Samples, queue: str) -> float | None:
    return samples.get(("codex_gate_open", (("queue", queue), ("shard", "1"))))


@pytest.mark.parametrize("broker_url", ["redis"], indirect=True)  # the gate itself is tested on both brokers
def test_gate_flips_and_pool_children_counts_reach_the_endpoint(
    workers: WorkerFactory,
    shard_homes: Callable[..., ShardHome],
    codex_bin: str,
    publisher: Celery,
    tmp_path: Path,
    prometheus: Callable[[list[str]], Prometheus],
    flower: Flower,
) -> None:
    home = shard_homes()
    port = free_port()
    worker = workers(shard=1, home=home, extra=["--concurrency", "2"], AGENT_METRICS_PORT=str(port))
    server = prometheus([f"127.0.0.1:{port}"])
    gate_expr = 'codex_gate_open{shard="1", queue="codex-1"}'
    worker.wait_for("codex.agent.ready", timeout=30)
    worker.wait_for("codex.gate.closed", timeout=30)
    closed = scrape_when_up(worker, port)
    assert gate(closed, "codex-1") == 0
    assert (
        closed[
            (
                "codex_check_outcomes_total",
                (("check", "login"), ("code", "CODEX-E030"), ("outcome", "failed"), ("shard", "1")),
            )
        ]
        == 1
    )
    assert closed[("codex_login_present", (("shard", "1"), ("volume", home.volume)))] == 0
    closed_at = closed[("codex_gate_last_change_timestamp_seconds", (("queue", "codex-1"), ("shard", "1")))]
    server.wait_for(gate_expr, 0, "the gate closed while logged out")

    key = make_api_key_login(codex_bin, home.codex_home)
    worker.wait_for("codex.gate.consuming", timeout=15)
    opened = scrape(port)
    assert gate(opened, "codex-1") == 1
    assert opened[("codex_gate_last_change_timestamp_seconds", (("queue", "codex-1"), ("shard", "1")))] > closed_at
    assert opened[("codex_login_present", (("shard", "1"), ("volume", home.volume)))] == 1
    server.wait_for(gate_expr, 1, "the gate opened after the login")

    results = [
        publisher.send_task("codex.phase", kwargs={"affinity_key": k, "run_id": f"run-{k}", "phase": "plan"})
        for k in keys_for_shard(1, 6)
    ]
    for result in results:
        result.get(timeout=30)
    wait_until(
        lambda: worker.env["AGENT_WORKER_NAME"] in " ".join(flower.get("/api/workers?refresh=1") or {}),
        30,
        interval=0.5,
        what="Flower lists the Codex worker",
    )
    seen: dict[str, Any] = wait_until(
        lambda: (t := flower.get("/api/tasks?limit=100")) and {r.id for r in results} <= set(t) and t,
        30,
        interval=0.5,
        what="Flower lists the 6 Codex tasks (task events on by default)",
    )
    for task_id in (r.id for r in results):
        assert seen[task_id]["name"] == "codex.phase" and seen[task_id]["state"] == "SUCCESS", seen[task_id]
    ran = scrape(port)
    assert ran[("codex_tasks_started_total", (("shard", "1"),))] == 6
    counted_by = {
        int(m.group(1))
        for f in (tmp_path.glob("*/state/prometheus/counter_*.db"))
        if (m := re.fullmatch(r"counter_(\d+)\.db", f.name))
    }
    assert counted_by - {worker.pid}  # pool children counted in files of their own; the endpoint summed them
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    assert key not in text and key not in json.dumps(seen)

    logout = subprocess.run(
        [codex_bin, "logout"],
        env={"CODEX_HOME": str(home.codex_home), "HOME": str(home.home)},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert logout.returncode == 0, logout.stderr
    worker.wait_for("codex.gate.closed", timeout=15, count=2)
    server.wait_for(gate_expr, 0, "the gate closed again after codex logout")
    server.wait_for('codex_tasks_started_total{shard="1"}', 6, "the pool children's tasks")
    assert server.query(f"changes({gate_expr}[5m])") == [2.0]  # closed -> open -> closed, each flip scraped
