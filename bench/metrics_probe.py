"""One process measuring the worker metrics (rows 12a-12c); run by bench.metrics as a subprocess.

A subprocess because :func:`agent.telemetry.metrics.enable` switches prometheus_client to multiprocess mode
for the whole process, as worker-entry does. Prints one JSON object:

* ``observer_ms``: per task, the metrics observer alone on a task's three events (what metrics add);
* ``off_ms``/``on_ms``: per task, the audit lines a Codex task logs (``codex.run.audit``,
  ``codex.job.started``, ``codex.job.finished``) through the real logging chain, with the metrics
  observer detached and attached, rounds alternated;
* ``scrape_ms``: GET /metrics latencies once two forked pool children have counted too;
* ``rss_added_mb``: the process's RSS after enabling and using the metrics, minus before.

usage: python -m bench.metrics_probe ROUNDS TASKS_PER_ROUND SCRAPES STATE_DIR
"""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
import sys
import time
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import psutil
import structlog

import worker_entry.main  # noqa: F401  (what a worker has imported when it enables the metrics)
from agent.telemetry.audit import configure_logging, observe_events

MB = 1024 * 1024


def _tasks(count: int) -> float:
    """Per-task milliseconds for ``count`` tasks' audit lines."""
    log = structlog.get_logger("bench")
    started = time.perf_counter()
    for _ in range(count):
        log.info("codex.run.audit", task="codex.phase")
        log.info("codex.job.started", container_id="c0ffee")
        log.info("codex.job.finished", container_id="c0ffee", exit_code=0, duration_s=1.5, codex_events=3)
    return (time.perf_counter() - started) / count * 1000


_TASK_EVENTS = (
    {"event": "codex.run.audit", "task": "codex.phase"},
    {"event": "codex.job.started", "container_id": "c0ffee"},
    {"event": "codex.job.finished", "container_id": "c0ffee", "exit_code": 0, "duration_s": 1.5, "codex_events": 3},
)


def _observer_only(observe: Callable[[Mapping[str, Any]], None], count: int) -> float:
    """Per-task milliseconds of the observer alone on a task's three events: the work metrics add."""
    started = time.perf_counter()
    for _ in range(count):
        for event in _TASK_EVENTS:
            observe(event)
    return (time.perf_counter() - started) / count * 1000


def main() -> None:
    rounds, per_round, scrapes = (int(a) for a in sys.argv[1:4])
    state = Path(sys.argv[4])
    configure_logging("INFO", stream=open(os.devnull, "w"))
    _tasks(per_round)  # warm the logging chain before the baseline RSS
    process = psutil.Process()
    rss_before = process.memory_info().rss
    from agent.telemetry.metrics import enable

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = enable(port, state_dir=state, codex_home=state / "home", volume="bench", shard="0", addr="127.0.0.1")
    _tasks(per_round)  # warm the metrics side too: label children made, mmap files created
    server.stop_observing()
    off: list[float] = []
    on: list[float] = []
    for i in range(rounds):
        for measure_on in (True, False) if i % 2 == 0 else (False, True):  # neither side always first
            if measure_on:
                stop = observe_events(server.observe)
                on.append(_tasks(per_round))
                stop()
            else:
                off.append(_tasks(per_round))
    observer_ms = [_observer_only(server.observe, per_round) for _ in range(rounds)]
    server.stop_observing = observe_events(server.observe)
    children = [multiprocessing.get_context("fork").Process(target=_tasks, args=(per_round,)) for _ in range(2)]
    for child in children:
        child.start()
    for child in children:
        child.join()
    url = f"http://127.0.0.1:{port}/metrics"
    scrape_ms: list[float] = []
    for _ in range(scrapes + 1):
        started = time.perf_counter()
        body = urllib.request.urlopen(url, timeout=10).read()
        scrape_ms.append((time.perf_counter() - started) * 1000)
    rss_added = (process.memory_info().rss - rss_before) / MB
    print(
        json.dumps(
            {
                "off_ms": off,
                "on_ms": on,
                "observer_ms": observer_ms,
                "scrape_ms": scrape_ms[1:],
                "scrape_bytes": len(body),
                "rss_added_mb": rss_added,
                "files": len(list((state / "prometheus").glob("*.db"))),
            }
        )
    )


if __name__ == "__main__":
    main()
