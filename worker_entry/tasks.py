"""Example tasks: a Codex phase on its shard queue, and a plain task on the default queue.

They are shared tasks, so every app made by :func:`worker_entry.app.create_app` (worker or
publisher) knows them and routes them.
"""

from __future__ import annotations

import os
import time
from typing import Any

from agent.jobs import launcher_for_env
from agent.preflight import CodexTask
from agent.router import PIN_ARG
from celery import current_task, shared_task

__all__ = ["codex_phase", "housekeeping", "JOB_IMAGE_ENV", "DEFAULT_JOB_IMAGE", "job_image"]

JOB_IMAGE_ENV = "CODEX_JOB_IMAGE"
"""Image of the example phase's job container; ``none`` runs the phase without one."""

DEFAULT_JOB_IMAGE = "codex-worker-agent/job:dev"


def job_image() -> str | None:
    """The job image from ``CODEX_JOB_IMAGE`` (default the project's job image), None for ``none``."""
    image = os.environ.get(JOB_IMAGE_ENV, "").strip() or DEFAULT_JOB_IMAGE
    return None if image.lower() == "none" else image


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

    The phase runs ``codex login status`` in a job container of ``CODEX_JOB_IMAGE`` through the
    guarded client, so its result proves the job saw the shard's login (CODEX-E040 when the
    engine is unreachable, CODEX-E042 when the job exits non-zero). ``hold_s`` keeps the phase
    busy for that long (used to test redelivery).
    """
    context = self.codex_context()
    image = job_image()
    job: dict[str, Any] | None = None
    if image is not None:
        agent = self.app.codex_agent
        launcher = launcher_for_env(agent.config, agent.volume_name, context)
        result = launcher.run(image, ["codex", "login", "status"])
        job = {"container_id": result.container_id, "exit_code": result.exit_code, "image": image}
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
    return {**context, "phase": phase, "affinity_key": affinity_key, "job": job}


@shared_task(name="housekeeping")
def housekeeping(label: str) -> dict[str, Any]:
    """A non-Codex task: runs on the default queue, on any worker."""
    delivery = current_task.request.delivery_info or {}
    return {"label": label, "queue": delivery.get("routing_key"), "hostname": current_task.request.hostname}
