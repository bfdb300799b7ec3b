"""Sweep the job containers a lost run left behind, and give each its ``codex.job.finished`` line.

A job container is removed only in the ``finally`` of the process that made it. A worker killed
between ``containers.create`` and that ``finally`` leaves it behind: unaudited, and perhaps still
running with the shard's login beside the next run. So at startup and after every broker
reconnect the worker lists the containers labelled with its shard and worker name
(``codex.shard``, ``codex.worker``) and removes each *orphan*, killing it first if it still runs.
Each gets a ``codex.job.finished`` line with ``reason="orphaned by a restart"``,
``reconciled=true`` and what the engine still knows: exit code, duration, the run and task ids,
queue and volume from the labels, container id and image.

The job of a Codex phase is harvested first (:mod:`agent.jobs.harvest`): one that exited 0 while its
worker was away becomes the phase's outcome, so its redelivered task skips the phase; one still
running is waited for (on a thread of its own, within the phase's limit), harvested, then
removed. Its finished line says so (``harvested``: completed, failed, cut_off, ...).

An orphan is a labelled container that was created before this worker process started (a
previous life of this worker), or whose task this process neither holds nor runs (its pool child
died mid-run). A task this process is running keeps its container: the launcher that made it
logs and removes it. Only the claim holder sweeps (the agent's ``may_sweep``), and it
sweeps on a background thread, so startup never waits on the engine.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import docker.errors
import psutil
import structlog
from celery.worker import state as worker_state

from agent.engine.client import DOCKER_FAILURES
from agent.engine.optional import optional_client
from agent.jobs import harvest
from agent.jobs.container import JobContainer, note_worker_start, worker_started
from agent.jobs.workspaces import sweep_workspaces
from agent.settings.config import AgentConfig
from agent.telemetry.audit import JOB_FINISHED

__all__ = [
    "ORPHAN_REASON",
    "JobReconciler",
    "is_orphan",
    "settle",
    "settle_earlier_job",
    "task_is_active",
]

log = structlog.get_logger(__name__)

ORPHAN_REASON = "orphaned by a restart"
"""The ``reason`` of a reconciled ``codex.job.finished`` line (stable: audit queries match it)."""

_KILL_WAIT = 10.0
"""Seconds to wait for a killed orphan to exit, so its exit code and duration can be read."""


def task_is_active(task_id: str) -> bool:
    """Whether this worker process holds the task (reserved or running), per Celery's state."""
    return task_id in worker_state.requests


def is_orphan(job: JobContainer, *, process_start: float, active: Callable[[str], bool]) -> bool:
    """Whether nobody alive will log and remove ``job`` (see the module docstring)."""
    if job.created is None or job.created < process_start:
        return True
    task_id = job.audit.get("task_id")
    return not (task_id and active(str(task_id)))


class JobReconciler:
    """Finds and removes this worker's orphaned job containers.

    Args:
        config: the worker's configuration (shard and worker name select the containers).
        active: whether this process holds a task id (Celery's worker state by default).
        client_factory: a pinged Docker client or None when no engine answers.
        may_sweep: whether this worker may sweep now (the agent: only while it holds the claim).
    """

    def __init__(
        self,
        config: AgentConfig,
        *,
        active: Callable[[str], bool] = task_is_active,
        client_factory: Callable[[], Any] = optional_client,
        may_sweep: Callable[[], bool] = lambda: True,
    ) -> None:
        self.config = config
        self.may_sweep = may_sweep
        self.active = active
        self.client_factory = client_factory
        self.process_start = psutil.Process().create_time()
        note_worker_start(self.process_start)
        self._lock = threading.Lock()
        self._awaited: set[str] = set()
        self._awaited_lock = threading.Lock()

    name = "codex-agent-reconcile"

    def start(self) -> None:
        """The startup sweep, as the worker's service starts."""
        self.sweep_soon("startup")

    def stop(self) -> None:
        """Nothing to end: sweeps are idempotent daemon threads, and the next life sweeps again."""

    def close_inherited(self) -> None:
        """Nothing to drop: a pool child never sweeps."""

    def sweep_soon(self, trigger: str) -> threading.Thread | None:
        """Sweep on a daemon thread (sweeps never overlap) if this worker may sweep now."""
        if not self.may_sweep():
            return None
        thread = threading.Thread(target=self.sweep, args=(trigger,), name=self.name, daemon=True)
        thread.start()
        return thread

    def sweep(self, trigger: str) -> list[JobContainer]:
        """Remove every orphan now and log it; never raises (the next trigger retries).

        Returns:
            The orphans removed, as they were found (exit code and duration after a kill).
        """
        with self._lock:
            client = self.client_factory()
            if client is None:
                log.info("codex.reconcile.skipped", trigger=trigger, cause="no Docker engine answers")
                return []
            try:
                return self._sweep(client, trigger)
            except DOCKER_FAILURES as e:
                log.warning("codex.reconcile.failed", trigger=trigger, error=f"{type(e).__name__}: {e}"[:300])
                return []
            finally:
                client.close()

    def _sweep(self, client: Any, trigger: str) -> list[JobContainer]:
        labels = [f"codex.shard={self.config.shard_index}", f"codex.worker={self.config.worker_name}"]
        found = client.api.containers(all=True, filters={"label": labels})
        removed: list[JobContainer] = []
        awaited = 0
        for summary in found:
            job = self._inspect(client, summary["Id"])
            if job is None or not is_orphan(job, process_start=self.process_start, active=self.active):
                continue
            if job.status not in ("created", "exited", "dead") and harvest.locate(self.config, job) is not None:
                awaited += self._await(job, trigger)  # a Codex phase still at work: not killed
                continue
            settled = self._settle(client, job, trigger)
            if settled is not None:
                removed.append(settled)
        workspaces = sweep_workspaces(client, self.config)
        log.info(
            "codex.reconcile.done",
            trigger=trigger,
            found=len(found),
            removed=len(removed),
            left=len(found) - len(removed),
            awaited=awaited,
            workspaces_removed=len(workspaces),
        )
        return removed

    def _settle(
        self, client: Any, job: JobContainer, trigger: str, *, found_status: str | None = None, cut_off: bool = False
    ) -> JobContainer | None:
        return settle(client, self.config, job, trigger, found_status=found_status, cut_off=cut_off)

    def _await(self, job: JobContainer, trigger: str) -> int:
        """Wait for a running phase job on a thread of its own (once), then settle it; 1 if started."""
        with self._awaited_lock:
            if job.container_id in self._awaited:
                return 0
            self._awaited.add(job.container_id)
        log.info(
            "codex.reconcile.awaiting",
            **job.audit,
            container_id=job.container_id,
            trigger=trigger,
            reason="a Codex phase still runs: harvested when it ends",
        )

        def wait_then_settle() -> None:
            client = self.client_factory()
            try:
                if client is None:
                    return
                ended, cut_off = harvest.await_exit(client, self.config, job)
                if ended is not None:
                    self._settle(client, ended, trigger, found_status=job.status, cut_off=cut_off)
            except DOCKER_FAILURES as e:
                log.warning(
                    "codex.reconcile.failed",
                    trigger=trigger,
                    container_id=job.container_id,
                    error=f"{type(e).__name__}: {e}"[:300],
                )
            finally:
                with self._awaited_lock:
                    self._awaited.discard(job.container_id)
                if client is not None:
                    client.close()

        threading.Thread(target=wait_then_settle, name="codex-agent-harvest", daemon=True).start()
        return 1

    @staticmethod
    def _inspect(client: Any, container_id: str) -> JobContainer | None:
        try:
            return JobContainer.from_inspect(client.api.inspect_container(container_id))
        except docker.errors.NotFound:
            return None


def _kill(client: Any, job: JobContainer) -> JobContainer:
    """Stop a still-running orphan (it holds the shard's login) and read how it ended."""
    try:
        client.api.kill(job.container_id)
        client.api.wait(job.container_id, timeout=_KILL_WAIT)
    except DOCKER_FAILURES:
        return job  # already gone, or slow to die: the forced remove below finishes it
    return JobReconciler._inspect(client, job.container_id) or job


def settle(
    client: Any,
    config: AgentConfig,
    job: JobContainer,
    trigger: str,
    *,
    found_status: str | None = None,
    cut_off: bool = False,
) -> JobContainer | None:
    """Harvest (a phase's job), kill (anything else still running), remove and log one orphan.

    Whoever removes the container logs its reconciled ``codex.job.finished`` line (the sweep, or a
    redelivered task that settled its own earlier job), so each gets one.

    Returns:
        The job as it ended, or None when someone else removed it first.
    """
    found_status = found_status or job.status
    killed = job.status not in ("created", "exited", "dead")
    if killed:
        job = _kill(client, job)
    by = "redelivery" if trigger == "redelivery" else "reconcile"
    harvested = harvest.harvest(client, config, job, by=by, cut_off=cut_off or killed)
    try:
        client.api.remove_container(job.container_id, force=True, v=False)
    except docker.errors.NotFound:
        return None  # its own launcher (or another harvester) removed it after all
    extra = {} if harvested is None else {"harvested": harvested.result, "phase": harvested.phase, **harvested.fields}
    log.warning(
        JOB_FINISHED,
        **job.audit,
        container_id=job.container_id,
        image=job.image,
        exit_code=job.exit_code,
        duration_s=job.duration_s,
        reason=ORPHAN_REASON,
        reconciled=True,
        found_status=found_status,
        killed=killed or cut_off,
        trigger=trigger,
        **extra,
    )
    return job


def settle_earlier_job(client: Any, config: AgentConfig, run_id: str, task_id: str | None) -> None:
    """Before a phase launches a job: harvest a job its task launched in an earlier life (waiting
    for it while it runs), so that a completed one is not run again. Never raises: on an engine
    failure the phase runs as it would have. A job of an earlier life of this worker is then
    removed with its reconciled ``codex.job.finished`` (``trigger="redelivery"``), unless the sweep
    was first; one made during this worker's life (a concurrent delivery, a dead pool child) is only
    recorded: its launcher, or the next sweep, removes it.
    """
    if not task_id:
        return
    labels = [f"codex.shard={config.shard_index}", f"codex.run_id={run_id}", f"codex.task_id={task_id}"]
    try:
        for summary in client.api.containers(all=True, filters={"label": labels}):
            job = JobContainer.from_inspect(client.api.inspect_container(summary["Id"]))
            if harvest.locate(config, job) is None:
                continue
            cut_off, found_status = False, job.status
            if job.status not in ("exited", "dead", "created"):
                log.info(
                    "codex.phase.awaiting",
                    run_id=run_id,
                    task_id=task_id,
                    container_id=job.container_id,
                    shard=config.shard_index,
                    reason="its earlier job still runs",
                )
                ended, cut_off = harvest.await_exit(client, config, job)
                if ended is None:
                    continue
                job = ended
            started = worker_started()
            if started is not None and job.created is not None and job.created >= started:
                # Made during this worker's life: its launcher may still be reading it; record only.
                harvest.harvest(client, config, job, by="redelivery", cut_off=cut_off)
            else:
                settle(client, config, job, "redelivery", found_status=found_status, cut_off=cut_off)
    except docker.errors.NotFound:
        return  # removed meanwhile by the reconciler, which harvested it first
    except DOCKER_FAILURES as e:
        log.warning(
            "codex.phase.harvest_failed",
            run_id=run_id,
            task_id=task_id,
            shard=config.shard_index,
            error=f"{type(e).__name__}: {e}"[:300],
        )
