"""Harvest a Codex job that finished while its worker was away: its work is not thrown away.

A job container outlives a killed worker (the engine, or the guard, owns it), so the phase often
completes while nobody waits for it. Its task's message comes back (no ack) and, without this
module, the phase ran ``codex exec`` again from the start: usage spent twice, side effects (a branch
pushed, a PR opened) done twice. Instead, the job's own output becomes the phase's artifacts and
outcome, the very record a live phase writes, and the redelivered message skips the phase
(``codex.phase.skipped``) and returns that result.

* The phase of a job is found through ``pending.json`` (:meth:`RunArtifacts.begin`), written just
  before the job is launched: the job's ``codex.run_id`` and ``codex.task_id`` labels lead to it.
  A job without one (a plain job, a probe phase) is no Codex phase: swept as before.
* Exit 0: the outcome is written (``harvested`` names who harvested it). Non-zero, never started,
  or cut off at the phase's wall-clock limit: noted in ``attempts.jsonl``, no outcome; the phase
  runs again, as before (at least once).
* A job still running is waited for, up to what is left of ``CODEX_PHASE_TIMEOUT`` since it
  started, then harvested the same way; past the limit it is killed (cut off).

Two harvesters may meet on one job (the reconciler's sweep and the redelivered task, which looks
for its own earlier job before it launches one): both write the same record, the outcome last and
before the container is removed, so whoever comes second finds it.
"""

from __future__ import annotations

import fcntl
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker.errors
import requests
import structlog

from agent.engine.client import DOCKER_FAILURES
from agent.jobs.artifacts import RunArtifacts, is_safe_name
from agent.jobs.container import JobContainer
from agent.jobs.launcher import OUTPUT_LIMIT
from agent.settings.config import AgentConfig
from agent.util.redact import scrub

__all__ = ["HARVESTED", "Harvest", "await_exit", "harvest", "locate"]

log = structlog.get_logger(__name__)

HARVESTED = "codex.phase.harvested"
"""Audit event of a job harvested into its phase's record (or noted as an attempt)."""

_WAIT_STEP = 60.0
"""Seconds of one engine wait; the wait is made again (a lost guard connection is not the end)."""


@dataclass(frozen=True)
class Harvest:
    """What became of one job: ``completed`` (outcome written), ``recorded_earlier``, ``failed``,
    ``cut_off`` or ``gone`` (removed before its output was read); ``fields`` go on its finished line."""

    result: str
    phase: str
    fields: dict[str, Any]


def locate(config: AgentConfig, job: JobContainer) -> tuple[RunArtifacts, str, dict[str, Any]] | None:
    """The run artifacts, phase and pending record of a Codex phase's job, or None for any other job."""
    run_id, task_id = job.audit.get("run_id"), job.audit.get("task_id")
    if not isinstance(run_id, str) or not isinstance(task_id, str) or not is_safe_name(run_id):
        return None
    artifacts = RunArtifacts(config.artifacts_root, run_id)
    found = artifacts.pending(task_id)
    return None if found is None else (artifacts, found[0], found[1])


def _inspect(client: Any, job: JobContainer) -> JobContainer | None:
    try:
        return JobContainer.from_inspect(client.api.inspect_container(job.container_id))
    except docker.errors.NotFound:
        return None


def await_exit(client: Any, config: AgentConfig, job: JobContainer) -> tuple[JobContainer | None, bool]:
    """Wait for a running phase job within what is left of its limit; kill it past the limit.

    Returns:
        The job as it ended (None when it was removed meanwhile), and whether it was cut off.
    """
    started = job.started if job.started is not None else time.time()
    deadline = started + config.phase_timeout
    current: JobContainer | None = job
    while current is not None and current.status not in ("exited", "dead", "created"):
        left = deadline - time.time()
        if left <= 0:
            try:
                client.api.kill(current.container_id)
                client.api.wait(current.container_id, timeout=10)
            except docker.errors.NotFound:
                return None, True
            except DOCKER_FAILURES:
                pass
            return _inspect(client, current), True
        try:
            client.api.wait(current.container_id, timeout=min(left, _WAIT_STEP))
        except docker.errors.NotFound:
            return None, False
        except (requests.exceptions.RequestException, OSError):
            time.sleep(1.0)  # the step timed out, or the guard restarted: look again
        current = _inspect(client, current)
    return current, False


def _output(client: Any, container_id: str) -> str | None:
    try:
        raw = client.api.logs(container_id, stdout=True, stderr=True)
    except docker.errors.NotFound:
        return None
    return scrub(bytes(raw).decode("utf-8", "replace"))[-OUTPUT_LIMIT:]


def harvest(client: Any, config: AgentConfig, job: JobContainer, *, by: str, cut_off: bool = False) -> Harvest | None:
    """Turn an ended job of a Codex phase into the phase's record; None when it is no phase's job.

    Args:
        job: the job as it ended (``exited``, ``dead`` or ``created``: never started).
        by: who harvests (``reconcile`` or ``redelivery``), kept in the record.
        cut_off: the job was killed at its limit (or with its worker).
    """
    located = locate(config, job)
    if located is None:
        return None
    artifacts, phase, pending = located
    with _exclusive(artifacts.phase_dir(phase)):  # one harvester writes; the other finds its record
        return _harvest(client, config, job, artifacts, phase, pending, by=by, cut_off=cut_off)


@contextmanager
def _exclusive(directory: Path) -> Iterator[None]:
    """An exclusive lock on the phase (the sweep and a redelivered task may harvest one job at once)."""
    with open(directory / ".harvest.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _harvest(
    client: Any,
    config: AgentConfig,
    job: JobContainer,
    artifacts: RunArtifacts,
    phase: str,
    pending: dict[str, Any],
    *,
    by: str,
    cut_off: bool,
) -> Harvest:
    # agent.jobs.phase launches jobs and settles earlier ones through this module: imported when used
    from agent.jobs.codex_output import summarize

    facts = {
        "run_id": artifacts.run_id,
        "phase": phase,
        "task_id": pending.get("task_id"),
        "container_id": job.container_id,
        "shard": config.shard_index,
        "harvested_by": by,
    }
    done = artifacts.outcome(phase)
    if done is not None or artifacts.attempted(phase, job.container_id):
        # A Codex run all the same (its finished line counts it): say what the record says.
        return Harvest(
            "recorded_earlier",
            phase,
            {"codex_session": (done or {}).get("session_id"), "usage": (done or {}).get("usage"), "codex_events": None},
        )
    if cut_off or job.exit_code is None or job.exit_code != 0:
        result = "cut_off" if cut_off or job.exit_code is None else "failed"
        artifacts.note_attempt(
            phase,
            {
                **facts,
                "status": result,
                "exit_code": job.exit_code,
                "duration_s": job.duration_s,
                "noted_at": time.time(),
            },
        )
        log.warning(HARVESTED, **facts, result=result, exit_code=job.exit_code, next="the phase runs again")
        return Harvest(result, phase, {"codex_session": None, "usage": None, "codex_events": 0})
    output = _output(client, job.container_id)
    if output is None:
        return Harvest("gone", phase, {})
    summary = summarize(output)
    outcome: dict[str, Any] = {
        "status": "completed",
        "run_id": artifacts.run_id,
        "phase": phase,
        "task_id": pending.get("task_id"),
        "shard": config.shard_index,
        "volume": job.audit.get("volume"),
        "worker": job.audit.get("worker"),
        "container_id": job.container_id,
        "exit_code": job.exit_code,
        "session_id": summary.session_id,
        "resumed_session": pending.get("resumed_session"),
        "usage": summary.usage,
        "duration_s": job.duration_s,
        "started_at": pending.get("started_at"),
        "completed_at": job.finished if job.finished is not None else time.time(),
        "harvested": by,
    }
    events = "".join(f"{line}\n" for line in output.splitlines() if line.startswith("{"))
    outcome["artifacts"] = str(
        artifacts.record(phase, events=events, final_message=summary.final_message, outcome=outcome)
    )
    log.info(
        HARVESTED,
        **facts,
        result="completed",
        exit_code=0,
        codex_session=summary.session_id,
        next="a redelivery skips the phase",
    )
    return Harvest("completed", phase, summary.audit_fields())
