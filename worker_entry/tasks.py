"""Example tasks: a Codex phase on its shard queue, and a plain task on the default queue.

They are shared tasks, so every app made by :func:`worker_entry.app.create_app` (worker or
publisher) knows them and routes them.
"""

from __future__ import annotations

import time
from typing import Any

from agent.phase import CodexPhase
from agent.preflight import CodexTask
from agent.router import PIN_ARG
from celery import current_task, shared_task

__all__ = ["codex_phase", "housekeeping"]

PROBE_COMMAND = ["codex", "login", "status"]
"""What a phase without a prompt runs: proves the job sees the shard's login, with no model traffic."""


@shared_task(base=CodexTask, bind=True, name="codex.phase")
def codex_phase(
    self: CodexTask,
    affinity_key: str,
    run_id: str,
    phase: str,
    prompt: str | None = None,
    resume: bool = False,
    next_phases: list[str] | None = None,
    hold_s: float = 0.0,
    codex_shard: int | None = None,
) -> dict[str, Any]:
    """One phase of a Codex run; enqueues the run's next phase pinned to this shard.

    With a ``prompt`` the phase is ``codex exec --json`` in a guarded job container
    (:class:`agent.phase.CodexPhase`): artifacts under ``CODEX_ARTIFACTS_ROOT/<run_id>/<phase>``,
    the wall-clock limit ``CODEX_PHASE_TIMEOUT`` (CODEX-E043), ``resume=True`` to continue the run's
    Codex session, and a phase already completed is not run again. A login that dies during the
    run requeues the task and closes the gate (CODEX-E034). Without a prompt the job only runs
    ``codex login status``. ``CODEX_JOB_IMAGE=none`` runs no container; ``hold_s`` keeps the phase
    busy for that long (used to test redelivery).
    """
    context = self.codex_context()
    image = self.agent.config.job_image
    job: dict[str, Any] | None = None
    if image is not None:
        launcher = self.jobs
        if prompt is None:
            result = launcher.run(image, PROBE_COMMAND)
            job = {"container_id": result.container_id, "exit_code": result.exit_code, "image": image}
        else:
            job = CodexPhase(launcher).run(run_id=run_id, phase=phase, prompt=prompt, resume=resume, task_id=context["task_id"])
    if hold_s:
        time.sleep(hold_s)
    if next_phases:
        codex_phase.apply_async(
            kwargs={
                "affinity_key": affinity_key,
                "run_id": run_id,
                "phase": next_phases[0],
                "next_phases": next_phases[1:],
                "prompt": None if prompt is None else f"{prompt}\n\nNext phase: {next_phases[0]}",
                "resume": prompt is not None,
                PIN_ARG: context["shard"],
            }
        )
    return {**context, "phase": phase, "affinity_key": affinity_key, "job": job}


@shared_task(name="housekeeping")
def housekeeping(label: str) -> dict[str, Any]:
    """A non-Codex task: runs on the default queue, on any worker."""
    delivery = current_task.request.delivery_info or {}
    return {"label": label, "queue": delivery.get("routing_key"), "hostname": current_task.request.hostname}
