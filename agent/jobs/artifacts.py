"""A run's artifacts on the worker: ``<CODEX_ARTIFACTS_ROOT>/<run_id>/<phase>/``.

Each phase keeps the JSONL event stream of its ``codex exec --json`` (``events.jsonl``), the final
message (``last_message.txt``) and its outcome (``outcome.json``: exit status, Codex session,
token usage, task id, shard). The outcome is written before the task's message is acknowledged,
so a redelivered message, or the same run published again, finds the phase completed and runs
nothing (a phase cut off mid-run has no outcome and runs again: at least once, at most one
completed execution). ``session.json`` names the run's newest Codex session, which a later phase
of the run resumes from the shard's ``CODEX_HOME``.

``pending.json`` is written just before a phase's job is launched: it ties the job's task id to
its phase, so that a job which finished while its worker was away can be harvested into the
phase's outcome (:mod:`agent.jobs.harvest`). ``attempts.jsonl`` lists harvested jobs that did not
complete the phase (non-zero exit, cut off).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.errors import PhaseRequestError
from agent.util.atomic import write_json_atomically

__all__ = [
    "RunArtifacts",
    "checked_name",
    "is_safe_name",
    "NAME_RULE",
    "EVENTS_FILE",
    "MESSAGE_FILE",
    "OUTCOME_FILE",
    "SESSION_FILE",
    "PENDING_FILE",
    "ATTEMPTS_FILE",
]

EVENTS_FILE = "events.jsonl"
MESSAGE_FILE = "last_message.txt"
OUTCOME_FILE = "outcome.json"
SESSION_FILE = "session.json"
PENDING_FILE = "pending.json"
ATTEMPTS_FILE = "attempts.jsonl"

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
NAME_RULE = "1 to 128 letters, digits, '.', '_' or '-', starting with a letter or digit"
"""What a run id or phase name may be: each becomes a directory (and a volume) name."""


def is_safe_name(value: Any) -> bool:
    """Whether ``value`` may be a run id or phase name (:data:`NAME_RULE`)."""
    return isinstance(value, str) and bool(_NAME.match(value)) and ".." not in value


def checked_name(field: str, value: Any, facts: dict[str, Any]) -> str:
    """``value`` if it is a safe path component, else CODEX-E044 naming the field.

    Raises:
        PhaseRequestError: not a string of :data:`NAME_RULE`, or a '..'-style name.
    """
    if is_safe_name(value):
        return str(value)
    cause = "not a string" if not isinstance(value, str) else "not a safe directory name"
    raise PhaseRequestError(
        **facts,
        field=field,
        value=value if isinstance(value, str) else type(value).__name__,
        cause=cause,
        accepted=NAME_RULE,
    )


def _read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object from ``path``; None when absent or unreadable (never raises)."""
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return data if isinstance(data, dict) else None


@dataclass(frozen=True)
class RunArtifacts:
    """The artifacts directory of one run."""

    root: Path
    run_id: str

    @property
    def directory(self) -> Path:
        """``<root>/<run_id>``."""
        return self.root / self.run_id

    def phase_dir(self, phase: str) -> Path:
        """``<root>/<run_id>/<phase>``."""
        return self.directory / phase

    def outcome(self, phase: str) -> dict[str, Any] | None:
        """The recorded outcome of a completed phase, or None."""
        return _read_json(self.phase_dir(phase) / OUTCOME_FILE)

    def session_id(self) -> str | None:
        """The run's newest Codex session id, or None."""
        data = _read_json(self.directory / SESSION_FILE)
        value = data.get("session_id") if data else None
        return value if isinstance(value, str) else None

    def record(self, phase: str, *, events: str, final_message: str | None, outcome: dict[str, Any]) -> Path:
        """Write a completed phase: events and message first, the outcome last (it marks completion)."""
        directory = self.phase_dir(phase)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / EVENTS_FILE).write_text(events)
        (directory / MESSAGE_FILE).write_text(final_message or "")
        session = outcome.get("session_id")
        if isinstance(session, str):
            write_json_atomically(self.directory / SESSION_FILE, {"session_id": session, "phase": phase})
        write_json_atomically(directory / OUTCOME_FILE, outcome, mode=0o644)
        return directory

    def begin(self, phase: str, pending: dict[str, Any]) -> None:
        """Note the phase's job about to launch (task id, session): what a harvest needs to find it."""
        directory = self.phase_dir(phase)
        directory.mkdir(parents=True, exist_ok=True)
        write_json_atomically(directory / PENDING_FILE, pending, mode=0o644)

    def pending(self, task_id: str) -> tuple[str, dict[str, Any]] | None:
        """The phase whose job ``task_id`` launched, with its pending record, or None."""
        try:
            phases = sorted(p for p in self.directory.iterdir() if p.is_dir())
        except OSError:
            return None
        for directory in phases:
            record = _read_json(directory / PENDING_FILE)
            if record is not None and record.get("task_id") == task_id and record.get("phase") == directory.name:
                return directory.name, record
        return None

    def note_attempt(self, phase: str, attempt: dict[str, Any]) -> None:
        """Append a harvested job that did not complete the phase (it runs again)."""
        directory = self.phase_dir(phase)
        directory.mkdir(parents=True, exist_ok=True)
        with open(directory / ATTEMPTS_FILE, "a", encoding="utf-8") as out:
            out.write(json.dumps(attempt, sort_keys=True) + "\n")

    def attempted(self, phase: str, container_id: str) -> bool:
        """Whether a harvested attempt of ``container_id`` is noted already."""
        try:
            lines = (self.phase_dir(phase) / ATTEMPTS_FILE).read_text(encoding="utf-8").splitlines()
        except OSError:
            return False
        return any(f'"container_id": "{container_id}"' in line for line in lines)
