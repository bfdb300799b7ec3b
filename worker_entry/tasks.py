"""Example tasks: a Codex phase on its shard queue, and a plain task on the default queue.

They are ``shared_task``\s, so every app made by :func:`worker_entry.app.create_app` (worker or
publisher) knows them and routes them.
"""

from __future__ import annotations

import time
from typing import Any

from agent.preflight import CodexTask
from agent.router import PIN_ARG
from celery import current_task, shared_task

__all__ = ["codex_phase", "housekeeping"]


@shared_task(base=CodexTask, bind=True, name="codex.phase")
def codex_phase(
    self: CodexTask,
    affinity_key: str,
    run_id: str,
    phase: str,
    next_phases: list[str] | None = None,
    hold_s: float = 0.0,
    codex_shard: int | None = None,
) -> dict[str, Any]:
    """One phase of a Codex run; enqueues the run's next phase pinned to this shard.

    ``hold_s`` keeps the phase busy for that long (used to test redelivery).
    """
    context = self.codex_context()
    if hold_s:
        time.sleep(hold_s)
    if next_phases:
        codex_phase.apply_async(
            kwargs={
                "affinity_key": affinity_key,
                "run_id": run_id,
                "phase": next_phases[0],
                "next_phases": next_phases[1:],
                PIN_ARG: context["shard"],
            }
        )
    return {**context, "phase": phase, "affinity_key": affinity_key}


@shared_task(name="housekeeping")
def housekeeping(label: str) -> dict[str, Any]:
    """A non-Codex task: runs on the default queue, on any worker."""
    delivery = current_task.request.delivery_info or {}
    return {"label": label, "queue": delivery.get("routing_key"), "hostname": current_task.request.hostname}
