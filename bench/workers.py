"""Benchmarks with real worker processes on real mounts: rows 2 and 8 (startup and memory),
6 (a login landing, to the gate open) and 7 (a second worker on a claimed volume, to its refusal).

Every worker consumes a queue named for this run only (``CODEX_QUEUE``), so concurrent test
sessions on the same brokers neither steal nor purge its tasks. Times come from the JSON log
lines' own timestamps and the result backend's ``date_done``, never from how often we poll.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

from bench.core import REPO_ROOT, Bench, Row, env_path, median, p95
from testkit import make_api_key_login
from testkit.workers import WorkerProcess

__all__ = ["STARTUP_FLAGS", "Spawned", "bench_heal", "bench_refusal", "bench_startup"]

VENV_BIN = Path(sys.executable).parent
STARTUP_FLAGS = ["--without-mingle", "--without-gossip"]
"""Given to both sides of row 2: no waiting for other workers' replies at startup."""

MB = 1024 * 1024


@dataclass
class Spawned(WorkerProcess):
    """A worker started from any argv, remembering when it was spawned (epoch seconds)."""

    argv: list[str] = field(default_factory=list)
    spawned_at: float = 0.0

    def start(self) -> Spawned:
        handle = self.log_path.open("ab")
        self.spawned_at = time.time()
        self.process = subprocess.Popen(
            self.argv, env=self.env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
        )
        handle.close()
        return self

    def first_line_at(self) -> float:
        """Timestamp of the first JSON log line."""
        return next(stamp(line) for line in self.lines() if "timestamp" in line)


def stamp(line: dict[str, Any]) -> float:
    """Epoch seconds of a JSON log line's ISO ``timestamp``."""
    return datetime.fromisoformat(str(line["timestamp"]).replace("Z", "+00:00")).timestamp()


def _epoch(value: datetime) -> float:
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()


class _Workers:
    """Starts workers of one queue for one benchmark; stops them all at the end."""

    def __init__(self, bench: Bench, what: str) -> None:
        self.bench = bench
        self.queue = bench.queue_name(what)
        self.started: list[Spawned] = []
        self._declare()
        bench.on_close(self.close)

    def _declare(self) -> None:
        from kombu import Connection, Queue

        with Connection(self.bench.broker_url, connect_timeout=5) as connection:
            Queue(self.queue, durable=True)(connection.default_channel).declare()

    def purge(self) -> None:
        from kombu import Connection, Queue

        with Connection(self.bench.broker_url, connect_timeout=5) as connection:
            Queue(self.queue, durable=True)(connection.default_channel).purge()

    def env(self, name: str, home: Any, **extra: str) -> dict[str, str]:
        bench = self.bench
        return {
            "PATH": env_path(bench.codex_bin),
            "HOME": str(home.home),
            "CELERY_BROKER_URL": bench.broker_url,
            "CELERY_RESULT_BACKEND": bench.backend_url,
            "AGENT_STATE_DIR": str(bench.tmp / name / "state"),
            "AGENT_WORKER_NAME": name,
            "CODEX_BIN": bench.codex_bin,
            "CODEX_SHARD_INDEX": "0",
            "CODEX_VOLUME_NAME": home.volume,
            "CODEX_QUEUE": self.queue,
            "CODEX_JOB_IMAGE": "none",
            **extra,
        }

    def agent(self, home: Any, **extra: str) -> Spawned:
        """``worker-entry`` (the agent installed) on ``home``, ``extra`` added to its environment."""
        name = f"agent-{uuid.uuid4().hex[:6]}"
        argv = [str(VENV_BIN / "worker-entry"), "--", *STARTUP_FLAGS]
        return self._start(name, home, argv, **extra)

    def plain(self, home: Any, app: str = "worker_entry.app:app", **extra: str) -> Spawned:
        """A plain ``celery worker`` of the same app, with the options worker-entry passes."""
        name = f"plain-{uuid.uuid4().hex[:6]}"
        argv = [
            str(VENV_BIN / "celery"),
            "-A",
            app,
            "--quiet",
            "worker",
            "--loglevel",
            "INFO",
            "-Q",
            self.queue,
            "--hostname",
            f"{self.queue}@{name}",
            "--concurrency",
            "1",
            "--prefetch-multiplier",
            "1",
            *STARTUP_FLAGS,
        ]
        return self._start(name, home, argv, **extra)

    def _start(self, name: str, home: Any, argv: list[str], **extra: str) -> Spawned:
        env = self.env(name, home, PYTHONPATH=str(REPO_ROOT), **extra)
        proc = Spawned(env, self.bench.tmp / f"{name}.log", argv=argv).start()
        self.started.append(proc)
        return proc

    def publisher(self) -> Any:
        """The platform's side: an app that knows this queue and reads results."""
        import worker_entry.tasks  # noqa: F401  (registers the shared tasks)
        from agent.settings.config import load
        from worker_entry.app import create_app

        config = load({"CELERY_BROKER_URL": self.bench.broker_url, "CODEX_SHARD_INDEX": "0", "CODEX_QUEUE": self.queue})
        return create_app(config, result_backend=self.bench.backend_url)

    def close(self) -> None:
        for proc in self.started:
            proc.stop(timeout=15)
            proc.kill_group()
        try:
            from kombu import Connection, Queue

            with Connection(self.bench.broker_url, connect_timeout=5) as connection:
                Queue(self.queue, durable=True)(connection.default_channel).delete()
        except Exception:  # noqa: BLE001  (a leftover queue is harmless)
            pass


def _rss(pid: int) -> tuple[float, float]:
    """(RSS of the main process, RSS of its children) in MB."""
    main = psutil.Process(pid)
    children = sum(c.memory_info().rss for c in main.children(recursive=True))
    return main.memory_info().rss / MB, children / MB


def bench_startup(bench: Bench) -> list[Row]:
    """Rows 2 and 8: spawn to the first task result from the shard queue, and the main process's RSS.

    The task is published before the worker is spawned, so its ``date_done`` marks the moment the
    worker consumed its shard queue and ran one task. The agent side runs a no-op ``codex.phase``
    (pre-flight, audit line; CODEX_JOB_IMAGE=none); the plain side runs the no-op ``housekeeping``
    (a plain celery worker cannot run a Codex task: it has no agent for the pre-flight).
    """
    home = bench.shard_home()
    make_api_key_login(bench.codex_bin, home.codex_home)
    workers = _Workers(bench, "startup")
    publisher = workers.publisher()
    kinds = ("agent", "plain", "bare")
    times: dict[str, list[float]] = {k: [] for k in kinds}
    rss: dict[str, list[float]] = {k: [] for k in kinds}
    child_rss: dict[str, list[float]] = {k: [] for k in kinds}
    consuming: list[float] = []
    warm = 0 if bench.settings.quick else 1  # trial 0 of each side warms caches and is dropped
    for trial in range(bench.settings.startup_runs + warm):
        for kind in kinds if trial % 2 == 0 else kinds[::-1]:
            workers.purge()
            if kind == "agent":
                task = publisher.send_task(
                    "codex.phase",
                    kwargs={"affinity_key": "bench", "run_id": f"bench-{trial}", "phase": "noop"},
                    queue=workers.queue,
                )
                proc = workers.agent(home)
            else:
                task = publisher.send_task("housekeeping", kwargs={"label": "bench"}, queue=workers.queue)
                proc = workers.plain(home, "worker_entry.app:app" if kind == "plain" else "bench.bareapp:app")
            try:
                task.get(timeout=90)
            except Exception as e:
                raise RuntimeError(f"{kind} worker ran no task: {e}\n{proc.tail(20)}") from e
            if trial >= warm:
                times[kind].append(_epoch(task.date_done) - proc.spawned_at)
                if kind == "agent":
                    consuming.append(stamp(proc.events("codex.gate.consuming")[0]) - proc.spawned_at)
            time.sleep(bench.settings.settle_s)
            main, children = _rss(proc.pid)
            if trial >= warm:
                rss[kind].append(main)
                child_rss[kind].append(children)
            proc.stop(timeout=20)
    startup = Row(
        id="2",
        what="Worker start to its first shard-queue task result, through worker-entry",
        unit="s",
        samples=times["agent"],
        baseline_samples=times["plain"],
        baseline_label="plain `celery -A worker_entry.app:app worker -Q <shard queue> -c 1`",
        judged_label="ratio",
        target="ratio <= 1.2",
        test=lambda r: r <= 1.2,
        details={
            "paired_ratio_median": round(
                median([a / p for a, p in zip(times["agent"], times["plain"], strict=False)]), 4
            ),
            "spawn_to_gate_consuming_s_median": round(median(consuming), 4),
            "bare_app_worker_s_median": round(median(times["bare"]), 4),
            "flags_both_sides": STARTUP_FLAGS,
        },
        method="Task published first, worker spawned, time = result date_done - spawn; both sides get "
        f"{' '.join(STARTUP_FLAGS)}, -c 1, --prefetch-multiplier 1, the same app, broker and backend; "
        "sides alternated.",
    )
    memory = Row(
        id="8",
        what="Resident memory of the worker's main process",
        unit="MB",
        samples=rss["agent"],
        baseline_samples=rss["plain"],
        baseline_label="plain celery worker main process",
        judged_label="added",
        target="<= 20 MB added",
        test=lambda added: added <= 20.0,
        details={
            "bare_app_worker_rss_mb_median": round(median(rss["bare"]), 2),
            "added_over_bare_app_mb": round(median(rss["agent"]) - median(rss["bare"]), 2),
            "pool_child_rss_mb_median": {k: round(median(v), 2) for k, v in child_rss.items()},
            "settle_s": bench.settings.settle_s,
        },
        method=f"psutil RSS of the main process {bench.settings.settle_s}s after its first task result (row 2's "
        "runs); the bare app (bench/bareapp.py: same settings, no agent import) is a second baseline.",
    )
    memory.judged = memory.value - (memory.baseline or 0.0)
    return [startup, memory]


def _prepared_login(bench: Bench) -> bytes:
    """An ``auth.json`` made by the real CLI in a scratch home (its key never leaves memory)."""
    scratch = bench.tmp / "prepared" / ".codex"
    make_api_key_login(bench.codex_bin, scratch)
    return (scratch / "auth.json").read_bytes()


def bench_heal(bench: Bench) -> list[Row]:
    """Row 6: an auth.json renamed into a logged-out volume, to ``codex.gate.consuming``.

    One worker with the production defaults (AGENT_RECHECK_INTERVAL 15 s): each trial renames a
    prepared login into place, measures to the consuming line, then removes it and waits for the
    gate to close again.
    """
    home = bench.shard_home()
    content = _prepared_login(bench)
    workers = _Workers(bench, "heal")
    proc = workers.agent(home)
    proc.wait_for("codex.agent.ready", timeout=60)
    proc.wait_for("codex.gate.closed", timeout=60)
    auth = home.codex_home / "auth.json"
    to_consuming: list[float] = []
    to_opened: list[float] = []
    for trial in range(bench.settings.heal_trials):
        staged = home.codex_home / ".auth.json.bench"
        staged.write_bytes(content)
        os.chmod(staged, 0o600)
        landed = time.time()
        os.rename(staged, auth)
        hit = proc.wait_for("codex.gate.consuming", timeout=30, count=trial + 1)[trial]
        to_consuming.append(stamp(hit) - landed)
        to_opened.append(stamp(proc.events("codex.gate.opened")[trial]) - landed)
        os.unlink(auth)
        proc.wait_for("codex.gate.cancelled", timeout=30, count=trial + 1)
    row = Row(
        id="6",
        what="Valid auth.json landing in a logged-out volume, to the gate consuming",
        unit="s",
        samples=to_consuming,
        judged_label="p95",
        target="p95 <= 2 s",
        test=lambda v: v <= 2.0,
        details={"to_gate_opened_s_median": round(median(to_opened), 4)},
        method="Atomic rename of a CLI-made auth.json into the mounted volume of a running worker-entry "
        "(defaults); time to its codex.gate.consuming line.",
    )
    row.judged = p95(to_consuming)
    return [row]


def bench_refusal(bench: Bench) -> list[Row]:
    """Row 7: a second worker-entry on a volume another worker holds, to its CODEX-E010 line."""
    home = bench.shard_home()
    make_api_key_login(bench.codex_bin, home.codex_home)
    workers = _Workers(bench, "refusal")
    holder = workers.agent(home)
    holder.wait_for("codex.gate.consuming", timeout=60)
    intruder_home = home.bind_again(bench.tmp)
    bench.on_close(intruder_home.unmount)
    from_first_line: list[float] = []
    from_spawn: list[float] = []
    for _ in range(bench.settings.refusal_trials):
        intruder = workers.agent(intruder_home)
        refused = intruder.wait_for("codex.check.failed", timeout=60, code="CODEX-E010")[0]
        if f"pid {holder.pid}" not in str(refused.get("error")):
            raise RuntimeError(f"the refusal does not name the holder: {refused}")
        from_first_line.append(stamp(refused) - intruder.first_line_at())
        from_spawn.append(stamp(refused) - intruder.spawned_at)
        intruder.stop(timeout=20)
    if holder.events("codex.check.failed"):
        raise RuntimeError("the holder lost its claim during the refusal trials")
    return [
        Row(
            id="7",
            what="Second worker on a claimed volume, to its CODEX-E010 refusal",
            unit="s",
            samples=from_first_line,
            target="<= 1 s after its checks begin",
            test=lambda v: v <= 1.0,
            details={"spawn_to_refusal_s_median": round(median(from_spawn), 4)},
            method="Time from the intruder's first log line (codex.agent.starting, before Celery starts and "
            "before its checks) to its codex.check.failed CODEX-E010 line: an upper bound of checks-to-refusal.",
        )
    ]
