"""JSON audit lines on stdout: ours through structlog, Celery's through stdlib logging.

``docker logs`` of a worker is the audit trail, so every line, whoever emits it, is one JSON
object with ``timestamp``, ``level``, ``logger`` and ``event``. Per-task fields (queue, shard,
volume, run_id, task_id…) live in structlog's contextvars: :func:`bound` sets them for a block.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TextIO

import structlog

from agent.redact import scrub_event

__all__ = ["configure_logging", "bound", "AUDIT_FIELDS", "RUN_AUDIT", "JOB_STARTED", "JOB_FINISHED"]

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
