"""JSON audit lines on stdout: ours through structlog, Celery's through stdlib logging.

``docker logs`` of a worker is the audit trail, so every line, whoever emits it, is one JSON
object with ``timestamp``, ``level``, ``logger`` and ``event``. Per-task fields (queue, shard,
volume, run_id, task_id…) live in structlog's contextvars: :func:`bound` sets them for a block.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, TextIO

import structlog

from agent.util.redact import scrub_event

__all__ = ["configure_logging", "bound", "observe_events", "AUDIT_FIELDS", "RUN_AUDIT", "JOB_STARTED", "JOB_FINISHED"]

RUN_AUDIT = "codex.run.audit"
JOB_STARTED = "codex.job.started"
JOB_FINISHED = "codex.job.finished"

AUDIT_FIELDS = ("queue", "shard", "volume", "worker", "run_id", "task_id")
"""Fields every Codex audit line carries (DESIGN.md, Contract: audit)."""

_SHARED_PROCESSORS: list[structlog.typing.Processor] = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
    structlog.processors.format_exc_info,
    scrub_event,
]


_OBSERVERS: list[Callable[[Mapping[str, Any]], None]] = []


def observe_events(observer: Callable[[Mapping[str, Any]], None]) -> Callable[[], None]:
    """Hand every structlog event, whatever its level, to ``observer`` (the metrics' one source).

    Observers run in the process that logs (pool children too) and must be cheap; one that
    raises is ignored, never allowed to lose the audit line. Returns what stops the observing.
    """
    _OBSERVERS.append(observer)
    return lambda: _OBSERVERS.remove(observer) if observer in _OBSERVERS else None


def _notify_observers(_logger: Any, _method: str, event_dict: Any) -> Any:
    for observer in _OBSERVERS:
        try:
            observer(event_dict)
        except Exception:  # noqa: BLE001 - a metric must never cost an audit line
            pass
    return event_dict


def configure_logging(level: str = "INFO", stream: TextIO | None = None) -> None:
    """Send every log line, structlog's and stdlib's, as JSON to ``stream`` (stdout).

    Safe to call more than once; the last call wins.
    """
    handler = logging.StreamHandler(stream or sys.__stdout__)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=_SHARED_PROCESSORS,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.JSONRenderer(sort_keys=False),
            ],
        )
    )
    logging.captureWarnings(True)  # Python warnings become JSON lines too
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    structlog.configure(
        processors=[
            _notify_observers,  # before the level filter: metrics count what AGENT_LOG_LEVEL hides
            structlog.stdlib.filter_by_level,
            *_SHARED_PROCESSORS,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )


@contextmanager
def bound(**fields: Any) -> Iterator[None]:
    """Bind ``fields`` to every log line emitted inside the block."""
    tokens = structlog.contextvars.bind_contextvars(**fields)
    try:
        yield
    finally:
        structlog.contextvars.reset_contextvars(**tokens)
