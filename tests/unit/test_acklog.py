"""The lost-ack line of a Codex task: one agent warning without a traceback (agent.jobs.acklog)."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

from amqp.exceptions import RecoverableConnectionError
from kombu.exceptions import OperationalError

from agent.jobs.acklog import ACK_LOST, LostAckLog, next_step
from agent.jobs.artifacts import RunArtifacts
from agent.telemetry.audit import configure_logging

FACTS = {"task_id": "t-1", "task": "codex.phase", "run_id": "run-1", "phase": "plan", "shard": 2, "queue": "codex-2"}


def _lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def test_kombus_lost_ack_becomes_one_warning_naming_the_task_and_what_follows(tmp_path: Path) -> None:
    RunArtifacts(tmp_path, "run-1").record("plan", events="", final_message="ok", outcome={"status": "completed"})
    stream = io.StringIO()
    configure_logging(stream=stream)
    try:
        error = RecoverableConnectionError(None, "connection already closed", None, None)
        try:
            raise error
        except RecoverableConnectionError as exc:  # kombu logs from inside its except block
            LostAckLog(FACTS, tmp_path).critical("Couldn't ack %r, reason:%r", 7, exc, exc_info=True)
    finally:
        configure_logging()
    [line] = _lines(stream)
    assert line["event"] == ACK_LOST and line["level"] == "warning"
    assert {k: line[k] for k in FACTS} == FACTS and line["delivery_tag"] == 7
    assert line["next"] == "redelivery, skipped by the completion record (codex.phase.skipped)"
    assert "connection already closed" in str(line["reason"])
    assert "exception" not in line and "Traceback" not in stream.getvalue()


def test_any_other_line_stays_celerys(tmp_path: Path) -> None:
    stream = io.StringIO()
    configure_logging(stream=stream)
    try:
        LostAckLog(FACTS, tmp_path).critical("Something else %r", OperationalError("x"))
        LostAckLog(FACTS, tmp_path).error("an error of %s", "celery")
    finally:
        configure_logging()
    lines = _lines(stream)
    assert [(line["level"], line["logger"]) for line in lines] == [
        ("critical", "celery.worker.request"),
        ("error", "celery.worker.request"),
    ]
    assert logging.getLogger("celery.worker.request").name == "celery.worker.request"


def test_without_a_completion_record_the_task_runs_again(tmp_path: Path) -> None:
    assert next_step(tmp_path, "run-1", "plan") == "redelivery, the task runs again"
    assert next_step(tmp_path, "../x", "plan") == "redelivery, the task runs again"
    assert next_step(None, "run-1", "plan") == "redelivery, the task runs again"
