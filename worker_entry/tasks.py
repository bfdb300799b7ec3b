"""Example tasks: a Codex phase on its shard queue, and a plain task on the default queue.

They are shared tasks, so every app made by :func:`worker_entry.app.create_app` (worker or
publisher) knows them and routes them.
"""

from __future__ import annotations

import time
from typing import Any

import structlog
from celery import current_app, current_task, shared_task

from agent.jobs.artifacts import RunArtifacts
from agent.jobs.phase import CodexPhase
from agent.routing.router import PIN_ARG
from agent.worker.run_failures import RUN_FAILED, failure_report
from agent.worker.runtime import agent_for
from agent.worker.task import CodexTask

__all__ = ["codex_phase", "codex_step", "run_failed", "housekeeping"]

log = structlog.get_logger(__name__)

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
    model: str | None = None,
    codex_args: list[str] | None = None,
    env: dict[str, str] | None = None,
    seed: str | None = None,
    final: bool = False,
) -> dict[str, Any]:
    """One phase of a Codex run; enqueues the run's next phase pinned to this shard.

    With a ``prompt`` the phase is ``codex exec --json`` in a guarded job container
    (:class:`agent.jobs.phase.CodexPhase`): artifacts under ``CODEX_ARTIFACTS_ROOT/<run_id>/<phase>``,
    the wall-clock limit ``CODEX_PHASE_TIMEOUT`` (CODEX-E043), ``resume=True`` to continue the run's
    Codex session, and a phase already completed is not run again. A login that dies during the
    run requeues the task and closes the gate (CODEX-E034). Without a prompt the job only runs
    ``codex login status``. ``CODEX_JOB_IMAGE=none`` runs no container; ``hold_s`` keeps the phase
    busy for that long (used to test redelivery). ``model``, ``codex_args`` and ``env`` shape the
    phase (:mod:`agent.jobs.phase_options`: allow-lists, CODEX-E044) and carry over to the next phases;
    ``seed`` (under ``CODEX_SEED_ROOT``) fills the run's new workspace first (:mod:`agent.jobs.seed`);
    ``final=True`` removes the run's workspace volume once its last phase (this one, or the last of
    ``next_phases``, which carry it on) completed.
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
            job = CodexPhase(launcher).run(
                run_id=run_id,
                phase=phase,
                prompt=prompt,
                resume=resume,
                task_id=context["task_id"],
                model=model,
                codex_args=codex_args,
                env=env,
                seed=seed,
                final=final and not next_phases,
            )
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
                **{k: v for k, v in (("model", model), ("codex_args", codex_args), ("env", env)) if v is not None},
                **({"final": True} if final else {}),
            }
        )
    return {**context, "phase": phase, "affinity_key": affinity_key, "job": job}


@shared_task(base=CodexTask, bind=True, name="codex.step")
def codex_step(
    self: CodexTask,
    previous: Any = None,
    *,
    affinity_key: str,
    run_id: str,
    phase: str,
    prompt: str,
    resume: bool | None = None,
    hold_s: float = 0.0,
    codex_shard: int | None = None,
    model: str | None = None,
    codex_args: list[str] | None = None,
    env: dict[str, str] | None = None,
    seed: str | None = None,
    final: bool = False,
) -> dict[str, Any]:
    """One phase of a run written as a Celery chain: ``chain(codex_step.si(...), codex_step.s(...))``.

    ``previous`` receives the previous step's result with a partial signature (``.s``) and stays
    None with an immutable one (``.si``). ``resume=None`` continues the run's Codex session when this
    shard has one (every phase after the first), ``True`` requires it, ``False`` starts a new one.
    The chain's later steps follow the first Codex step's shard (:mod:`agent.routing.chains`); a phase
    completed earlier is skipped (``codex.phase.skipped``), so a re-submitted run starts at the
    phase that failed. ``hold_s`` keeps the task busy after its phase ran (tests). ``model``,
    ``codex_args``, ``env`` and ``seed`` shape the phase as in ``codex.phase``; ``final=True`` on the
    chain's last step removes the run's workspace volume once it completed.
    """
    context = self.codex_context()
    if resume is None:
        resume = RunArtifacts(self.agent.config.artifacts_root, run_id).session_id() is not None
    job = CodexPhase(self.jobs).run(
        run_id=run_id,
        phase=phase,
        prompt=prompt,
        resume=resume,
        task_id=context["task_id"],
        model=model,
        codex_args=codex_args,
        env=env,
        seed=seed,
        final=final,
    )
    if hold_s and not job.get("skipped"):
        time.sleep(hold_s)
    after = previous.get("phase") if isinstance(previous, dict) else None
    return {**context, "phase": phase, "affinity_key": affinity_key, "after": after, "job": job}


@shared_task(name="codex.run_failed")
def run_failed(request: Any, exc: BaseException, traceback: Any) -> dict[str, Any]:
    """Example ``link_error`` callback of a run: logs ``codex.run.failed`` with the error's code.

    Celery calls a three-argument callback in the worker whose task failed, once per failure (not
    per retry). ``kind`` says what failed: ``job`` (CODEX-E042, after its retries), ``limit``
    (CODEX-E043), ``request`` (CODEX-E044) or ``engine``; a ``login`` problem never fails a task
    (it is requeued and the gate closes), so it reaches a callback only through a task of your own.
    """
    agent = agent_for(current_app)
    report = failure_report(request, exc, agent.config.shard_index if agent is not None else None)
    log.error(RUN_FAILED, **report)
    return report


@shared_task(name="housekeeping")
def housekeeping(label: str) -> dict[str, Any]:
    """A non-Codex task: runs on the default queue, on any worker."""
    delivery = current_task.request.delivery_info or {}
    return {"label": label, "queue": delivery.get("routing_key"), "hostname": current_task.request.hostname}
