"""What happens when a Codex phase fails: retries for a failed job, a report for ``link_error``.

* A login problem (CODEX-E03x during the run, or at pre-flight) is not a failure at all: the task
  goes back to its queue untouched and the gate closes; it never consumes a retry.
* A failed job (CODEX-E042) is retried on the same shard's queue after ``CODEX_JOB_RETRY_BACKOFF``
  seconds, doubling each time, up to ``CODEX_JOB_RETRIES`` times; then the task fails.
* The wall-clock limit (CODEX-E043) fails the task at once: an endpoint that hung once is likely to
  hang again, and each attempt costs the whole limit.

A failed task calls its ``link_error`` callbacks; :func:`failure_report` is what the example
callback ``codex.run_failed`` logs (``codex.run.failed``) and returns: ids and the code, no secret.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from agent.settings import defaults
from agent.settings.config import AgentConfig

__all__ = ["RetryPolicy", "retry_policy", "FailureKind", "failure_kind", "failure_report", "RUN_FAILED"]

RUN_FAILED = "codex.run.failed"
"""Audit line of the example ``link_error`` callback."""

FailureKind = Literal["login", "job", "limit", "request", "engine", "other"]

_KINDS: dict[str, FailureKind] = {
    "CODEX-E042": "job",
    "CODEX-E043": "limit",
    "CODEX-E044": "request",
    "CODEX-E040": "engine",
    "CODEX-E041": "engine",
    "CODEX-E045": "engine",
}
_LOGIN_PREFIXES = ("CODEX-E01", "CODEX-E02", "CODEX-E03")
"""Claim, volume and login codes: the shard's login is unusable (pre-flight or during the run)."""


@dataclass(frozen=True)
class RetryPolicy:
    """Retries of a failed job: how many, and the first pause (doubled each time)."""

    retries: int = defaults.JOB_RETRIES
    backoff_s: float = defaults.JOB_RETRY_BACKOFF

    def countdown(self, attempt: int) -> float:
        """Seconds before retry number ``attempt`` (0 for the first retry)."""
        return float(self.backoff_s * (2 ** max(attempt, 0)))

    @property
    def longest_countdown(self) -> float:
        """Seconds before the last retry: the longest a retried phase waits as an unacked message."""
        return self.countdown(self.retries - 1) if self.retries > 0 else 0.0


def retry_policy(config: AgentConfig) -> RetryPolicy:
    """``CODEX_JOB_RETRIES`` and ``CODEX_JOB_RETRY_BACKOFF``, as the configuration read them at start."""
    return RetryPolicy(retries=config.job_retries, backoff_s=config.job_retry_backoff)


def failure_kind(code: str | None) -> FailureKind:
    """The family of an agent error code: login, job, limit, request, engine, or other."""
    if code is None:
        return "other"
    if code.startswith(_LOGIN_PREFIXES):
        return "login"
    return _KINDS.get(code, "other")


def failure_report(request: Any, exc: BaseException, shard: int | None = None) -> dict[str, Any]:
    """What a ``link_error`` callback learns of a failed phase: ids, phase, queue, code and kind.

    ``shard`` is the shard the phase failed on (the worker's, when the callback runs there): pin the
    re-submitted run to it (``codex_shard=N``) to resume on the same login in single-queue mode.
    """
    kwargs = getattr(request, "kwargs", None) or {}
    delivery = getattr(request, "delivery_info", None) or {}
    code = getattr(exc, "code", None)
    code = code if isinstance(code, str) else None
    return {
        "task_id": getattr(request, "id", None),
        "task": getattr(request, "task", None),
        "run_id": kwargs.get("run_id"),
        "phase": kwargs.get("phase"),
        "retries": getattr(request, "retries", None),
        "queue": delivery.get("routing_key"),
        "shard": shard,
        "code": code,
        "kind": failure_kind(code),
        "error": type(exc).__name__,
    }
