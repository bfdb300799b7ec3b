"""A real `worker-entry` (prefork pool, real broker, real Codex CLI) serves its metrics.

The gate's series follow what the worker did (closed while logged out, open after a real login),
and the tasks its pool children ran are all counted by the main process's endpoint.
"""

from __future__ import annotations

import re
import socket
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from celery import Celery
from prometheus_client.parser import text_string_to_metric_families
from support import make_api_key_login
from support.workers import ShardHome, WorkerFactory, WorkerProcess, keys_for_shard, wait_until

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for m in text_string_to_metric_families(text) for s in m.samples}


def scrape_when_up(worker: WorkerProcess, port: int) -> Samples:
    def answer() -> Samples | None:
        assert worker.exited() is None, worker.tail()
        try:
            return scrape(port)
        except OSError:
            return None

    found: Samples = wait_until(answer, 30, what=f"metrics on port {port}")
    return found


def gate(samples: Samples, queue: str) -> float | None:
    return samples.get(("codex_gate_open", (("queue", queue), ("shard", "1"))))


@pytest.mark.parametrize("broker_url", ["redis"], indirect=True)  # the gate itself is tested on both brokers
def test_gate_flips_and_pool_children_counts_reach_the_endpoint(
    workers: WorkerFactory, shard_homes: Callable[..., ShardHome], codex_bin: str, publisher: Celery, tmp_path: Path,
) -> None:
    home = shard_homes()
    port = free_port()
    worker = workers(shard=1, home=home, extra=["--concurrency", "2"], AGENT_METRICS_PORT=str(port))
    worker.wait_for("codex.agent.ready", timeout=30)
    worker.wait_for("codex.gate.closed", timeout=30)
    closed = scrape_when_up(worker, port)
    assert gate(closed, "codex-1") == 0
    assert closed[("codex_check_outcomes_total", (("check", "login"), ("code", "CODEX-E030"),
                                                  ("outcome", "failed"), ("shard", "1")))] == 1
    assert closed[("codex_login_present", (("shard", "1"), ("volume", home.volume)))] == 0
    closed_at = closed[("codex_gate_last_change_timestamp_seconds", (("queue", "codex-1"), ("shard", "1")))]

    key = make_api_key_login(codex_bin, home.codex_home)
    worker.wait_for("codex.gate.consuming", timeout=15)
    opened = scrape(port)
    assert gate(opened, "codex-1") == 1
    assert opened[("codex_gate_last_change_timestamp_seconds", (("queue", "codex-1"), ("shard", "1")))] > closed_at
    assert opened[("codex_login_present", (("shard", "1"), ("volume", home.volume)))] == 1

    results = [
        publisher.send_task("codex.phase", kwargs={"affinity_key": k, "run_id": f"run-{k}", "phase": "plan"})
        for k in keys_for_shard(1, 6)
    ]
    for result in results:
        result.get(timeout=30)
    ran = scrape(port)
    assert ran[("codex_tasks_started_total", (("shard", "1"),))] == 6
    counted_by = {int(m.group(1)) for f in (tmp_path.glob("*/state/prometheus/counter_*.db"))
                  if (m := re.fullmatch(r"counter_(\d+)\.db", f.name))}
    assert counted_by - {worker.pid}  # pool children counted in files of their own; the endpoint summed them
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    assert key not in text
