"""The Celery task base of Codex tasks, and the request class that closes the gate on a rejection.

:class:`CodexTask` runs the pre-flight (:class:`~agent.worker.preflight.Preflight`) before each phase. A
failure raises :class:`PreflightRejected`, a ``celery.exceptions.Reject`` with ``requeue=True``:
the message goes back to its shard queue, and :class:`CodexRequest`, which runs in the worker's
main process, closes the gate before the reject, so the broker has no one to redeliver it to (no
hot loop).
"""

from __future__ import annotations

from typing import Any

import structlog
from celery import Task
from celery.exceptions import Reject
from celery.worker.request import Request

from agent.errors import (
    AgentError,
    DockerUnavailableError,
    JobFailedError,
    LoginError,
    NotCodexWorkerError,
)
from agent.jobs.acklog import LostAckLog
from agent.jobs.launcher import JobLauncher
from agent.routing.chains import keep_chain_on_shard
from agent.routing.router import routed_options
from agent.settings.topology import DEFAULT_AFFINITY_ARG
from agent.telemetry.audit import RUN_AUDIT, bound
from agent.worker.run_failures import retry_policy
from agent.worker.runtime import Agent, agent_for

__all__ = ["ENGINE_RETRIES", "PreflightRejected", "CodexRequest", "CodexTask"]

log = structlog.get_logger(__name__)

ENGINE_RETRIES = 40
"""Times a Codex task goes back to its queue while the engine or guard is away (CODEX-E040), each
after ``AGENT_RECHECK_INTERVAL`` seconds (10 minutes at the default 15 s), before it fails."""


class PreflightRejected(Reject):
    """A Codex task's login failed (at pre-flight or during the run): requeue it and close the gate.

    Carries the error itself (it pickles through its facts), so the main process closes the gate
    with the error's own code, message and fix.
    """

    def __init__(self, error: AgentError, requeue: bool = True) -> None:
        super().__init__(f"{error.code} {error.message}", requeue)
        self.error = error

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.error, self.requeue))

    @property
    def code(self) -> str:
        """The agent error code."""
        return self.error.code


class CodexRequest(Request):
    """Worker-side request of Codex tasks: a failed pre-flight closes the gate first; every end of a
    task publishes the login's newest headroom (:meth:`agent.worker.runtime.Agent.after_job`)."""

    def on_failure(self, exc_info: Any, send_failed_event: bool = True, return_ok: bool = False) -> None:
        exc = getattr(exc_info.exception, "exc", exc_info.exception)
        agent = agent_for(self.task.app)
        if isinstance(exc, PreflightRejected) and agent is not None:
            agent.on_preflight_failed(exc.error, self.delivery_info.get("routing_key"))
        elif agent is not None:
            agent.after_job()
        super().on_failure(exc_info, send_failed_event=send_failed_event, return_ok=return_ok)

    def acknowledge(self) -> None:
        """Celery's ack, with the lost-ack line told by :class:`~agent.jobs.acklog.LostAckLog` (no traceback)."""
        if getattr(self, "acknowledged", False):
            return
        agent = agent_for(self.task.app)
        kwargs = self.kwargs if isinstance(self.kwargs, dict) else {}
        facts = {
            "task_id": self.id,
            "task": self.name,
            "run_id": kwargs.get("run_id"),
            "phase": kwargs.get("phase"),
            "shard": agent.config.shard_index if agent is not None else None,
            "queue": (self.delivery_info or {}).get("routing_key"),
        }
        root = agent.config.artifacts_root if agent is not None else None
        self._on_ack(LostAckLog(facts, root), self._connection_errors)
        self.acknowledged = True

    def on_success(self, failed__retval__runtime: Any, **kwargs: Any) -> None:
        agent = agent_for(self.task.app)
        if agent is not None and not failed__retval__runtime[0]:  # a failure goes on to on_failure
            agent.after_job()
        super().on_success(failed__retval__runtime, **kwargs)


class CodexTask(Task):
    """Base class of Codex phase tasks: routed by affinity key, pre-flighted, audited.

    Declare with ``@app.task(base=CodexTask, bind=True)``; the affinity key is the keyword
    argument named by ``affinity_arg`` (``affinity_key``). A phase that enqueues the next one
    passes ``codex_shard=self.codex_context()["shard"]`` to keep the run on its shard.
    """

    Request = "agent.worker.task:CodexRequest"
    acks_late = True
    reject_on_worker_lost = True
    codex = True
    affinity_arg = DEFAULT_AFFINITY_ARG

    def apply_async(self, args: Any = None, kwargs: Any = None, **options: Any) -> Any:
        """Publish to the run's shard queue, whichever app publishes it (never to ``celery``).

        An ``env`` keyword's values are withheld from ``kwargsrepr``, what Celery's events, Flower
        and worker logs show of the message (the message itself carries them to the worker).
        """
        if isinstance(kwargs, dict):
            kwargs = dict(kwargs)  # the router may add the pin (agent.routing.first_move): never to the caller's dict
        if isinstance(kwargs, dict) and isinstance(kwargs.get("env"), dict) and "kwargsrepr" not in options:
            options["kwargsrepr"] = repr({**kwargs, "env": {str(k): "<withheld>" for k in kwargs["env"]}})
        return super().apply_async(args, kwargs, **routed_options(self, args, kwargs, options))

    @property
    def agent(self) -> Agent:
        """The agent of this worker (CODEX-E002 on a worker without a shard)."""
        agent = agent_for(self.app)
        if agent is None or not agent.config.is_codex_worker:
            raise NotCodexWorkerError(task=self.name, worker=agent.config.worker_name if agent is not None else "?")
        return agent

    @property
    def jobs(self) -> JobLauncher:
        """The job launcher for this run: the shard's login, user, labels and audit lines."""
        return self.agent.launcher(self.codex_context())

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            self.agent.preflight.run()
        except AgentError as e:
            log.error("codex.preflight.failed", task=self.name, task_id=self.request.id, code=e.code, error=e.message)
            raise PreflightRejected(e) from e
        context = self.codex_context(kwargs)
        with bound(**context):
            log.info(RUN_AUDIT, task=self.name)
            # A chain's later Codex steps follow this one onto this shard's login (agent.routing.chains).
            own_queue = keep_chain_on_shard(self, self.agent.config)
            try:
                return super().__call__(*args, **kwargs)
            except LoginError as e:
                # The login died during the run (E034 and kin): a login problem, not a task
                # failure. Requeue untouched, and let the request close the gate first.
                log.error("codex.run.requeued", task=self.name, code=e.code, error=e.message)
                raise PreflightRejected(e) from e
            except DockerUnavailableError as e:
                # The engine or this shard's Docker API guard is away (down, restarting): not a
                # login or job failure. Back to the shard queue after a pause, until it answers.
                delay = self.agent.config.recheck_interval
                log.error("codex.run.requeued", task=self.name, code=e.code, error=e.message, retry_in_s=delay)
                raise self.retry(exc=e, countdown=delay, max_retries=ENGINE_RETRIES) from e
            except JobFailedError as e:
                # Codex failed (CODEX-E042): again on this shard's own queue, with backoff.
                policy = retry_policy(self.agent.config)
                delay = policy.countdown(self.request.retries)
                if self.request.retries < policy.retries:
                    log.error(
                        "codex.run.retrying",
                        task=self.name,
                        code=e.code,
                        retry=self.request.retries + 1,
                        max_retries=policy.retries,
                        retry_in_s=delay,
                    )
                raise self.retry(exc=e, countdown=delay, max_retries=policy.retries, queue=own_queue) from e

    def codex_context(self, kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
        """The audit fields of the running task: queue, shard, volume, worker, run_id, task_id."""
        agent = self.agent
        kwargs = kwargs if kwargs is not None else (self.request.kwargs or {})
        request = self.request
        return {
            "queue": (request.delivery_info or {}).get("routing_key") or agent.config.codex_queue,
            **agent.config.shard_facts(agent.volume_name),
            "run_id": kwargs.get("run_id") or request.root_id or request.id,
            "task_id": request.id,
        }
