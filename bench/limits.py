"""Rows 14c/14d: a usage limit with a real worker, the real Codex CLI and the stand-in.

One worker container (the project's image, guarded, its own queue) on a stand-in login. Each trial
scripts the login limited until a reset a few seconds ahead and publishes a phase: Codex gets HTTP
429 ``usage_limit_reached``, the phase is requeued and the gate closes with CODEX-E036 (14c, from
the stand-in's 429 answer to the worker's ``codex.gate.closed`` line); at the reset time (plus the
agent's margin, :data:`agent.login.usage.REOPEN_MARGIN_S`) the gate reopens by itself and the held phase
starts again (14d, to its second ``codex.run.audit`` line). Baselines from the same run: for 14c
the job alone (429 to ``codex.job.finished``: the Codex CLI's exit and the container), for 14d a
phase published to the open gate, to its ``codex.run.audit``.
"""

from __future__ import annotations

import contextlib
import io
import time
import uuid
from collections.abc import Callable
from typing import Any

from bench.core import Bench, Row, median
from bench.workers import stamp

__all__ = ["bench_limits"]

RESET_AFTER_S = 8.0
"""Seconds from scripting the limit to its reset: the phase must meet it and the gate close first."""

_TIMEOUT = 120.0


def _next(worker: Any, event: str, count: int, timeout: float = _TIMEOUT, **fields: Any) -> list[dict[str, Any]]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        found: list[dict[str, Any]] = worker.events(event, **fields)
        if len(found) >= count:
            return found
        if worker.exited():
            raise RuntimeError(f"the worker exited:\n{worker.log_text()[-3000:]}")
        time.sleep(0.1)
    raise RuntimeError(f"no {count} x {event} {fields} within {timeout:.0f} s:\n{worker.log_text()[-3000:]}")


def bench_limits(bench: Bench) -> list[Row]:
    """Both rows, on one worker; every container, volume and queue is removed afterwards."""
    from agent.login import usage
    from openai_standin import StandIn
    from testkit.dockerkit import build_images
    from testkit.phases import PhaseLab

    images = build_images()
    queue = bench.queue_name("limits")
    trials = 1 if bench.settings.quick else 5
    closed_s: list[float] = []
    job_s: list[float] = []
    reopened_s: list[float] = []
    started_s: list[float] = []
    from_reset_s: list[float] = []
    open_s: list[float] = []
    with StandIn() as standin:
        lab = PhaseLab(bench.docker, standin, images.worker, images.job)
        bench.on_close(lambda: _quietly(lab.close))
        shard = lab.shard(0)
        family = shard.tokens.family  # type: ignore[union-attr]
        worker = lab.ready_worker(shard, bench.broker_url, bench.backend_url, CODEX_QUEUE=queue)
        publisher = _publisher(bench)

        def publish(run_id: str) -> Any:
            kwargs = {"affinity_key": run_id, "run_id": run_id, "phase": "plan", "prompt": f"Plan {run_id}."}
            return publisher.send_task("codex.phase", kwargs=kwargs, queue=queue)

        publish(f"bench-warm-{bench.run_id}").get(timeout=_TIMEOUT)  # the image and the CLI warmed up
        for trial in range(trials):
            tag = f"{bench.run_id}-{trial}"
            # Baseline of 14d: a phase to the open gate, publish to its start.
            sent = time.time()
            run_id = f"bench-open-{tag}"
            publish(run_id).get(timeout=_TIMEOUT)
            open_s.append(stamp(worker.events("codex.run.audit", run_id=run_id)[0]) - sent)

            refused_before = len(standin.usage.refused_at.get(family, []))
            closes = len(worker.events("codex.gate.closed"))
            opens = len(worker.events("codex.gate.opened"))
            reset = int(time.time() + RESET_AFTER_S)
            standin.usage.limit(family, reset)
            run_id = f"bench-held-{tag}"
            result = publish(run_id)
            closed = _next(worker, "codex.gate.closed", closes + 1)[-1]
            refused = standin.usage.refused_at[family][refused_before]
            finished = [j for j in worker.events("codex.job.finished", run_id=run_id) if stamp(j) >= refused]
            closed_s.append(stamp(closed) - refused)
            if finished:
                job_s.append(stamp(finished[0]) - refused)
            if [r.get("code") for r in closed.get("reason") or []] != ["CODEX-E036"]:
                raise RuntimeError(f"the gate closed for another reason: {closed}")
            opened = _next(worker, "codex.gate.opened", opens + 1, timeout=RESET_AFTER_S + _TIMEOUT)[-1]
            audits = _next(worker, "codex.run.audit", 2, run_id=run_id)
            if result.get(timeout=_TIMEOUT)["job"]["status"] != "completed":
                raise RuntimeError(f"the held phase did not complete: {result.result}")
            reopen_at = reset + usage.REOPEN_MARGIN_S
            reopened_s.append(stamp(opened) - reopen_at)
            started_s.append(stamp(audits[1]) - reopen_at)
            from_reset_s.append(stamp(audits[1]) - reset)
            standin.usage.clear(family)
        if worker.events("codex.run.retrying") or worker.events("codex.run.failed"):
            raise RuntimeError("a limited phase was retried or failed")
    method_common = f"one worker container (the project's worker image, guarded), the real Codex CLI against the stand-in, {trials} trials"
    return [
        Row(
            id="14c",
            what="Usage limit met (the stand-in's 429), to the gate closed (CODEX-E036)",
            unit="s",
            samples=closed_s,
            baseline_samples=job_s,
            baseline_label="the job alone: 429 to `codex.job.finished` (CLI exit, container)",
            judged_label="max",
            judged=max(closed_s),
            target="<= 1 s",
            test=lambda v: v <= 1.0,
            details={"agent_part_s_median": round(median(closed_s) - median(job_s), 4) if job_s else None},
            method=f"{method_common}; from the stand-in's 429 answer to the worker's codex.gate.closed line (both "
            "clocks this host's).",
        ),
        Row(
            id="14d",
            what="Usage limit's reset, to the gate open and the held phase started",
            unit="s",
            samples=from_reset_s,
            baseline_samples=open_s,
            baseline_label="a phase published to the open gate, to its start",
            judged_label="max",
            judged=max(from_reset_s),
            target="<= 2 s",
            test=lambda v: v <= 2.0,
            details={
                "to_gate_opened_s_median": round(median(reopened_s), 4),
                "from_reopen_time_s_median": round(median(started_s), 4),
                "from_reopen_time_s_max": round(max(started_s), 4),
                "reopen_margin_s": usage.REOPEN_MARGIN_S,
            },
            method=f"{method_common}; the limit's reset {RESET_AFTER_S:.0f} s ahead, from the reset time itself "
            f"(the agent reopens {usage.REOPEN_MARGIN_S:g} s later) to the held phase's second codex.run.audit line.",
        ),
    ]


def _publisher(bench: Bench) -> Any:
    import worker_entry.tasks  # noqa: F401  (registers the shared tasks)
    from agent.settings.config import load
    from worker_entry.app import create_app

    name = f"bench-limits-{uuid.uuid4().hex[:6]}"
    return create_app(
        load({"CELERY_BROKER_URL": bench.broker_url, "AGENT_WORKER_NAME": name}), result_backend=bench.backend_url
    )


def _quietly(close: Callable[[], None]) -> None:
    """PhaseLab.close prints each worker's log tail (for pytest); the bench's stdout is its table."""
    with contextlib.redirect_stdout(io.StringIO()):
        close()
