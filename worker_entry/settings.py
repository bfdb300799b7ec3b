"""Celery settings every Codex worker needs, with no Celery or Docker import.

Shared by the default app and by the benchmarks' bare app, which must weigh a worker without the
agent: one login and one Codex process at a time, tasks acknowledged only after they ran, JSON only.
"""

from __future__ import annotations

from typing import Any

from agent.worker.settings import GUARANTEED

__all__ = ["WORKER_SETTINGS"]

WORKER_SETTINGS: dict[str, Any] = {
    **GUARANTEED,  # late acks, reject on worker lost, prefetch 1, task events: agent.worker.settings
    "task_serializer": "json",
    "result_serializer": "json",
    "accept_content": ["json"],
    "broker_connection_retry_on_startup": True,
    "worker_hijack_root_logger": False,
}
"""``worker_send_task_events`` is on: Flower and celery-exporter see Codex tasks (received, started,
succeeded, failed) with no flag to find. The events carry task names, ids, and the argument and result
reprs: Codex tasks take an affinity key, run id, phase and prompt and return ids and numbers, never a
credential. The cost is bench row 12d. An app of your own (``worker-entry --app``) may set it False."""
