"""A lost ack of a Codex task, told as what it is: one warning line, no traceback.

When the broker connection drops while a Codex task runs (a RabbitMQ restart, a Redis blip), the
task's late ack goes to a channel that is gone, and kombu's ``Message.ack_log_error`` logs
``Couldn't ack N, reason: RecoverableConnectionError(...)`` at *critical*, with a traceback. Nothing
is wrong: the broker redelivers the message and the phase's completion record skips it. An operator
alerting on critical lines sees a failure, though. So :class:`~agent.worker.task.CodexRequest` hands
its ack a :class:`LostAckLog` in place of Celery's request logger (kombu logs through the logger
it is given): the line becomes ``codex.ack.lost`` (task id, run id, phase, shard, queue, delivery
tag, the reason in one line, and what happens next), counted in ``codex_acks_lost_total``. Every
other line, and every other task's, stays Celery's.
"""

from __future__ import annotations

import logging
from typing import Any

import structlog

from agent.jobs.artifacts import RunArtifacts, is_safe_name

__all__ = ["ACK_LOST", "LostAckLog", "next_step"]

log = structlog.get_logger(__name__)

ACK_LOST = "codex.ack.lost"
"""Audit event of a Codex task whose ack the broker connection did not take."""

_CELERY_LOGGER = logging.getLogger("celery.worker.request")


def next_step(artifacts_root: Any, run_id: Any, phase: Any) -> str:
    """What follows the lost ack: a redelivery, skipped when the phase has its completion record."""
    if artifacts_root is None:
        return "redelivery, the task runs again"
    if is_safe_name(run_id) and is_safe_name(phase) and RunArtifacts(artifacts_root, run_id).outcome(phase) is not None:
        return "redelivery, skipped by the completion record (codex.phase.skipped)"
    return "redelivery, the task runs again"


class LostAckLog:
    """The logger a Codex task's ack is given: its ``critical`` (kombu's lost-ack line) becomes one
    ``codex.ack.lost`` warning; anything else goes to Celery's request logger unchanged.

    Args:
        facts: task_id, run_id, phase, shard, queue of the task.
        artifacts_root: where the phase's completion record is looked for.
    """

    def __init__(self, facts: dict[str, Any], artifacts_root: Any) -> None:
        self.facts = facts
        self.artifacts_root = artifacts_root

    def critical(self, msg: str, *args: Any, **_kwargs: Any) -> None:
        """kombu: ``critical("Couldn't ack %r, reason:%r", delivery_tag, exc, exc_info=True)``."""
        if not msg.startswith("Couldn't ack") or len(args) < 2:
            _CELERY_LOGGER.critical(msg, *args, **_kwargs)
            return
        tag, error = args[0], args[1]
        log.warning(
            ACK_LOST,
            **self.facts,
            delivery_tag=tag,
            reason=f"{type(error).__name__}: {error}"[:300],
            next=next_step(self.artifacts_root, self.facts.get("run_id"), self.facts.get("phase")),
        )

    def __getattr__(self, name: str) -> Any:
        return getattr(_CELERY_LOGGER, name)
