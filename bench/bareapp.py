"""A Celery app with the default app's worker settings and no agent import at all.

Row 8's second baseline: the plain worker of ``worker_entry.app`` already imports much of the
agent (its example tasks import ``agent.jobs``, hence the Docker SDK); this app shows what a worker
weighs with none of it.
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery
from kombu import Queue

__all__ = ["app", "housekeeping"]

app = Celery("bare", broker=os.environ.get("CELERY_BROKER_URL"))
app.conf.update(
    result_backend=os.environ.get("CELERY_RESULT_BACKEND") or None,
    task_queues=[Queue(os.environ.get("CODEX_QUEUE", "default"), durable=True)],
    task_acks_late=True,
    worker_prefetch_multiplier=1,
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    worker_send_task_events=False,
)


@app.task(name="housekeeping")
def housekeeping(label: str) -> dict[str, Any]:
    """The same no-op the plain side of row 2 runs."""
    return {"label": label}
