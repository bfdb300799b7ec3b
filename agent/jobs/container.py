"""A job container as the engine still tells of it, read from ``docker inspect``.

The record the sweep (:mod:`agent.jobs.reconcile`) and the harvest (:mod:`agent.jobs.harvest`) share: status,
exit code, times and the audit fields its ``codex.*`` labels carry; and when this worker's main
process started, which tells a job of an earlier life of the worker from one of this life.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from agent.telemetry.audit import AUDIT_FIELDS

__all__ = ["JobContainer", "docker_time", "note_worker_start", "worker_started"]

_DOCKER_TIME = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)$")


def docker_time(text: str | None) -> float | None:
    """Epoch seconds of an engine timestamp (RFC 3339, nanoseconds); None for its zero time."""
    match = _DOCKER_TIME.match(text or "")
    if match is None or match.group(1).startswith("0001-"):
        return None
    base, fraction, zone = match.groups()
    seconds = datetime.fromisoformat(base + ("+00:00" if zone == "Z" else zone)).timestamp()
    return seconds + (float(f"0.{fraction}") if fraction else 0.0)


@dataclass(frozen=True)
class JobContainer:
    """What the engine still tells about one job container."""

    container_id: str
    image: str
    status: str
    created: float | None
    exit_code: int | None
    duration_s: float | None
    audit: dict[str, Any]
    started: float | None = None
    finished: float | None = None

    @classmethod
    def from_inspect(cls, data: dict[str, Any]) -> JobContainer:
        """Read ``docker inspect`` output; the audit fields come from the ``codex.*`` labels."""
        config = data.get("Config") or {}
        labels = config.get("Labels") or {}
        run = data.get("State") or {}
        started, finished = docker_time(run.get("StartedAt")), docker_time(run.get("FinishedAt"))
        ended = run.get("Status") in ("exited", "dead") and started is not None
        audit: dict[str, Any] = {key: labels.get(f"codex.{key}") or None for key in AUDIT_FIELDS}
        if isinstance(audit["shard"], str) and audit["shard"].isdigit():
            audit["shard"] = int(audit["shard"])
        return cls(
            container_id=str(data.get("Id") or "?"),
            image=str(config.get("Image") or "?"),
            status=str(run.get("Status") or "unknown"),
            created=docker_time(data.get("Created")),
            exit_code=int(run.get("ExitCode", -1)) if ended else None,
            duration_s=round(finished - started, 3) if ended and finished is not None and started is not None else None,
            audit=audit,
            started=started,
            finished=finished if ended else None,
        )


_WORKER_START: dict[str, float] = {}
"""When this worker's main process started (set by the first reconciler, before the pool forks)."""


def note_worker_start(started: float) -> None:
    """Remember when this worker's main process started (the first call wins)."""
    _WORKER_START.setdefault("main", started)


def worker_started() -> float | None:
    """When this worker's main process started, as the reconciler saw it; None before it did."""
    return _WORKER_START.get("main")
