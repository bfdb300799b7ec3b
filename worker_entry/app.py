"""The default Celery app of the worker image: durable queues, safe acks, the agent's router.

Import ``app`` to run or publish with the environment's configuration, or call
:func:`create_app` with your own :class:`~agent.settings.config.AgentConfig`.
"""

from __future__ import annotations

import os

from celery import Celery
from kombu import Queue

from agent.routing.router import add_router
from agent.settings import config as config_mod
from agent.settings.config import AgentConfig
from agent.settings.defaults import DEFAULT_QUEUE
from agent.worker.settings import VISIBILITY_TIMEOUT, transport_options
from worker_entry.settings import WORKER_SETTINGS

__all__ = ["app", "create_app", "VISIBILITY_TIMEOUT"]


def create_app(config: AgentConfig | None = None, *, result_backend: str | None = None) -> Celery:
    """A Celery app wired for Codex shards; the agent is installed by ``worker-entry``."""
    config = config or config_mod.load()
    app = Celery("codex_worker", broker=config.broker_url, include=["worker_entry.tasks"])
    names = [DEFAULT_QUEUE, *config.topology.codex_queues()]
    names += [q for q in config.codex_queues if q not in names]
    app.conf.update(
        result_backend=result_backend or os.environ.get("CELERY_RESULT_BACKEND") or None,
        task_queues=[Queue(name, durable=True) for name in names],
        task_default_queue=DEFAULT_QUEUE,
        # Redis only (AMQP ignores them): redeliver a dead worker's unacked task after the visibility
        # timeout (CELERY_VISIBILITY_TIMEOUT, else longer than the phase limit); agent.worker.settings.
        broker_transport_options=transport_options(config),
        result_expires=24 * 3600,
        **WORKER_SETTINGS,
    )
    add_router(app, config)  # publishers route Codex tasks to their shard without the agent
    return app


app = create_app()
