"""Celery settings every Codex worker needs, with no agent import.

Shared by the default app and by the benchmarks' bare app, which must weigh a worker without the
agent: one login and one Codex process at a time, tasks acknowledged only after they ran, JSON only.
"""

from __future__ import annotations

from typing import Any

__all__ = ["WORKER_SETTINGS"]

WORKER_SETTINGS: dict[str, Any] = {
    "task_acks_late": True,
    "task_reject_on_worker_lost": True,
    "worker_prefetch_multiplier": 1,
    "task_serializer": "json",
    "result_serializer": "json",
    "accept_content": ["json"],
    "broker_connection_retry_on_startup": True,
    "worker_hijack_root_logger": False,
    "worker_send_task_events": False,
}
