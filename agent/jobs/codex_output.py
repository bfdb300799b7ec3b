"""What ``codex exec --json`` prints, read: the session, the final message, the usage, a failure,
and whether the failure means the login itself is dead.

Pure functions of a job's output, shared by the live phase (:mod:`agent.jobs.phase`) and the harvest of
a job that finished while its worker was away (:mod:`agent.jobs.harvest`). The phrases are checked against
the pinned CLI by ``tests/integration/test_cli_limits_contract.py``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

__all__ = ["StreamSummary", "summarize", "auth_failure"]

_AUTH_FAILURES: tuple[tuple[str, str], ...] = (
    ("refresh token was already used", "refresh_token_reused"),
    ("refresh_token_reused", "refresh_token_reused"),
    ("refresh token has expired", "refresh_token_expired"),
    ("refresh_token_expired", "refresh_token_expired"),
    ("refresh token was revoked", "refresh_token_invalidated"),
    ("refresh_token_invalidated", "refresh_token_invalidated"),
    ("not logged in", "not_logged_in"),
    ("please log out and sign in again", "sign_in_again"),
    ("401 unauthorized", "unauthorized"),
)
"""Phrases of ``codex exec`` (0.169, 0.171) that mean the login itself is dead, mapped to a reason."""


@dataclass(frozen=True)
class StreamSummary:
    """What a ``codex exec --json`` stream says: session, final message, usage, failure."""

    session_id: str | None = None
    final_message: str | None = None
    usage: dict[str, int] | None = None
    failure: str | None = None
    events: int = 0

    def audit_fields(self) -> dict[str, Any]:
        """Fields for the ``codex.job.finished`` line: ids and numbers only."""
        return {"codex_session": self.session_id, "usage": self.usage, "codex_events": self.events}


def summarize(output: str) -> StreamSummary:
    """Read the JSONL events out of a job's output (other lines, e.g. stderr, are skipped)."""
    session = message = failure = None
    usage: dict[str, int] | None = None
    events = 0
    for line in output.splitlines():
        if not line.startswith("{"):
            continue
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if not isinstance(event, dict):
            continue
        events += 1
        kind = event.get("type")
        raw_item = event.get("item")
        item: dict[str, Any] = raw_item if isinstance(raw_item, dict) else {}
        if kind == "thread.started" and isinstance(event.get("thread_id"), str):
            session = event["thread_id"]
        elif kind == "item.completed" and item.get("type") == "agent_message" and isinstance(item.get("text"), str):
            message = item["text"]
        elif kind == "turn.completed" and isinstance(event.get("usage"), dict):
            usage = {k: v for k, v in event["usage"].items() if isinstance(v, int) and not isinstance(v, bool)}
        elif kind == "turn.failed":
            error = event.get("error")
            failure = str(error.get("message")) if isinstance(error, dict) else str(error)
        elif kind == "error" and failure is None:
            failure = str(event.get("message"))
    return StreamSummary(session, message, usage, failure, events)


def auth_failure(output: str) -> str | None:
    """The reason a run's login is dead, from its output, or None for any other failure."""
    lowered = output.lower()
    for phrase, reason in _AUTH_FAILURES:
        if phrase in lowered:
            return reason
    return None
