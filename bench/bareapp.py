"""A Celery app with the default app's worker settings (worker_entry.settings) and no agent import.

Row 8's second baseline: the plain worker of ``worker_entry.app`` already imports much of the
agent (its example tasks import ``agent.jobs.launcher``, hence the Docker SDK); this app shows what a worker
weighs with none of it.
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery
from kombu import Queue

from worker_entry.settings import WORKER_SETTINGS

__all__ = ["app", "housekeeping"]

app = Celery("bare", broker=os.environ.get("CELERY_BROKER_URL"))
app.conf.update(
    result_backend=os.environ.get("CELERY_RESULT_BACKEND") or None,
    task_queues=[Queue(os.environ.get("CODEX_QUEUE", "default"), durable=True)],
    **{**WORKER_SETTINGS, "worker_send_task_events": os.environ.get("BENCH_TASK_EVENTS", "1") == "1"},
)  # BENCH_TASK_EVENTS=0: row 12d's baseline, task events off


@app.task(name="housekeeping")
def housekeeping(label: str) -> dict[str, Any]:
    """The same no-op the plain side of row 2 runs."""
    return {"label": label}
