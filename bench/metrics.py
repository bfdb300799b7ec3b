"""Rows 12a-12d: what monitoring costs. The metrics (per task, per scrape, in memory) and Celery task events.

12a-12c run :mod:`bench.metrics_probe` in subprocesses (multiprocess mode is process-wide, as in a
worker). 12d runs real workers of the bare app (``bench.bareapp``) on the bench broker, task events on
against off, sides alternated; times come from the result backend's ``date_done``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

from bench.core import REPO_ROOT, Bench, Row, median
from bench.workers import _epoch, _Workers

__all__ = ["bench_metrics", "bench_events"]


def _probe(bench: Bench, trial: int, rounds: int, per_round: int, scrapes: int) -> dict[str, Any]:
    state = bench.tmp / f"metrics-probe-{trial}"
    done = subprocess.run(
        [sys.executable, "-m", "bench.metrics_probe", str(rounds), str(per_round), str(scrapes), str(state)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"metrics probe failed: {done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def bench_metrics(bench: Bench) -> list[Row]:
    """Rows 12a (per-task overhead), 12b (scrape latency) and 12c (RSS added)."""
    quick = bench.settings.quick
    trials, rounds, per_round, scrapes = (1, 4, 200, 10) if quick else (3, 10, 1000, 50)
    probes = [_probe(bench, t, rounds, per_round, scrapes) for t in range(trials)]
    on = [v for p in probes for v in p["on_ms"]]
    off = [v for p in probes for v in p["off_ms"]]
    observer = [v for p in probes for v in p["observer_ms"]]
    overhead = Row(
        id="12a",
        what="Per-task metrics overhead (the observer on a Codex task's 3 audit events)",
        unit="ms",
        samples=observer,
        baseline_samples=off,
        baseline_label="logging those 3 lines, no metrics",
        judged_label="median",
        target="<= 0.1 ms",
        test=lambda ms: ms <= 0.1,
        details={
            "tasks_per_sample": per_round,
            "processes": trials,
            "end_to_end_on_ms_median": round(median(on), 4),
            "end_to_end_off_ms_median": round(median(off), 4),
        },
        method="agent.telemetry.metrics' observer (EventMetrics + GateCollector, multiprocess mmap values) timed alone on "
        "codex.run.audit, codex.job.started and codex.job.finished; the full log lines with the observer attached "
        "and detached (alternating rounds) are in details.",
    )
    scrape = Row(
        id="12b",
        what="Scrape latency of /metrics (main + 2 pool children counted)",
        unit="ms",
        samples=[v for p in probes for v in p["scrape_ms"]],
        judged_label="median",
        target="report (no target)",
        details={"bytes": probes[0]["scrape_bytes"], "db_files": probes[0]["files"]},
        method="GET http://127.0.0.1:PORT/metrics of agent.telemetry.metrics.enable's server after two forked children "
        "logged tasks too (their files summed by MultiProcessCollector; auth.json read per scrape).",
    )
    memory = Row(
        id="12c",
        what="Resident memory added by the metrics",
        unit="MB",
        samples=[p["rss_added_mb"] for p in probes],
        judged_label="added",
        target="<= 5 MB",
        test=lambda added: added <= 5.0,
        method="RSS after importing prometheus_client, enable() (HTTP server thread) and every round, "
        "minus RSS before, in a process that had already imported the agent and logged.",
    )
    return [overhead, scrape, memory]


def _drain_ms(workers: _Workers, publisher: Any, home: Any, events: bool, tasks: int) -> float:
    """Per-task milliseconds of a worker draining ``tasks`` queued no-ops (first to last ``date_done``)."""
    workers.purge()
    results = [
        publisher.send_task("housekeeping", kwargs={"label": "bench"}, queue=workers.queue) for _ in range(tasks)
    ]
    proc = workers.plain(home, "bench.bareapp:app", BENCH_TASK_EVENTS="1" if events else "0")
    try:
        for result in results:
            result.get(timeout=120)
    except Exception as e:
        raise RuntimeError(f"events={events} worker ran no task: {e}\n{proc.tail(20)}") from e
    finally:
        proc.stop(timeout=20)
    done = sorted(_epoch(r.date_done) for r in results)
    return (done[-1] - done[0]) / (tasks - 1) * 1000


def bench_events(bench: Bench) -> list[Row]:
    """Row 12d: Celery task events on (the default now) against off."""
    trials, tasks = (1, 20) if bench.settings.quick else (4, 200)
    home = bench.shard_home()
    workers = _Workers(bench, "events")
    publisher = workers.publisher()
    on: list[float] = []
    off: list[float] = []
    for trial in range(trials):
        for events in (True, False) if trial % 2 == 0 else (False, True):
            (on if events else off).append(_drain_ms(workers, publisher, home, events, tasks))
            time.sleep(bench.settings.settle_s)
    return [
        Row(
            id="12d",
            what="Per-task time with Celery task events on (worker_send_task_events)",
            unit="ms",
            samples=on,
            baseline_samples=off,
            baseline_label="the same worker, events off",
            judged_label="ratio",
            target="report (no target; the issue asks the cost)",
            details={
                "tasks_per_sample": tasks,
                "paired_ratio_median": round(median([a / b for a, b in zip(on, off, strict=False)]), 4),
            },
            method="A bare-app worker (-c 1, prefetch 1) drains N queued no-op tasks; per task = (last - first "
            "date_done)/(N-1); events on and off alternate; nobody consumes the events (a Flower would add its reads).",
        )
    ]
