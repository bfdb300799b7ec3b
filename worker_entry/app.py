"""The default Celery app of the worker image: durable queues, safe acks, the agent's router.

Import ``app`` to run or publish with the environment's configuration, or call
:func:`create_app` with your own :class:`~agent.config.AgentConfig`.
"""

from __future__ import annotations

import math
import os

from celery import Celery
from kombu import Queue

from agent import config as config_mod
from agent.config import AgentConfig
from agent.errors import ConfigError
from agent.defaults import DEFAULT_QUEUE
from agent.router import add_router
from worker_entry.settings import WORKER_SETTINGS

__all__ = ["app", "create_app"]

VISIBILITY_TIMEOUT = 6 * 3600
"""Redis only: seconds before an unacked task is redelivered; must exceed the longest phase."""


def _visibility_timeout(raw: str) -> float:
    """``CELERY_VISIBILITY_TIMEOUT`` in seconds; a bad value names the variable, not ``--app``."""
    if not raw.strip():
        return VISIBILITY_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(
            variable="CELERY_VISIBILITY_TIMEOUT", value=raw, cause="not a positive number of seconds",
            accepted="a positive number of seconds, longer than the longest phase",
        )
    return value


def create_app(config: AgentConfig | None = None, *, result_backend: str | None = None) -> Celery:
    """A Celery app wired for Codex shards; the agent is installed by ``worker-entry``."""
    config = config or config_mod.load()
    app = Celery("codex_worker", broker=config.broker_url, include=["worker_entry.tasks"])
    names = [DEFAULT_QUEUE, *config.topology.codex_queues()]
    names += [q for q in config.codex_queues if q not in names]
    visibility = _visibility_timeout(os.environ.get("CELERY_VISIBILITY_TIMEOUT", ""))
    app.conf.update(
        result_backend=result_backend or os.environ.get("CELERY_RESULT_BACKEND") or None,
        task_queues=[Queue(name, durable=True) for name in names],
        task_default_queue=DEFAULT_QUEUE,
        # Redis only (AMQP ignores them): redeliver a dead worker's unacked task after the
        # visibility timeout, scanning every 10 s instead of kombu's default every 100 s.
        broker_transport_options={"visibility_timeout": visibility, "unacked_restore_throttle": 1},
        result_expires=24 * 3600,
        **WORKER_SETTINGS,
    )
    add_router(app, config)  # publishers route Codex tasks to their shard without the agent
    return app


app = create_app()
