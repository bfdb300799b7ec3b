"""The Celery router: Codex tasks to their shard queue, everything else untouched.

Precedence: an explicit ``queue=`` wins; then the :class:`~agent.settings.topology.Topology` decides: a run's
pinned shard (``codex_shard`` keyword, set by a phase when it enqueues the next one, so a run stays
on its first shard's login even if ``CODEX_SHARDS`` changes mid-run or in single-queue mode), then
the affinity key. A pin outside the current shards is CODEX-E050 at publish time.

Sharded mode with ``CODEX_MOVE_FIRST_PHASE=on``: a run's first phase (no pin, not published from
inside a running Codex task) whose affinity shard is held at its usage limit goes to the open shard
with the most headroom (:mod:`agent.routing.first_move`), and the pin keyword is added to its keyword
arguments, so the rest of the run follows it there.
"""

from __future__ import annotations

from typing import Any

from celery import current_task

from agent.routing.chains import accepts_pin
from agent.routing.first_move import FirstPhaseMover, mover_for
from agent.settings import config as config_mod
from agent.settings.config import AgentConfig
from agent.settings.topology import DEFAULT_AFFINITY_ARG, PIN_ARG, Topology

__all__ = ["CodexRouter", "PIN_ARG", "add_router", "routed_options"]


class CodexRouter:
    """A ``task_routes`` entry for Codex tasks (those whose class has ``codex = True``)."""

    def __init__(self, app: Any, config: AgentConfig) -> None:
        self.app = app
        self.config = config
        self.topology: Topology = config.topology
        self._included = False
        self.mover: FirstPhaseMover | None = (
            mover_for(config.broker_url, self.topology.shards)
            if config.move_first_phase and self.topology.mode == "sharded"
            else None
        )

    def __call__(
        self,
        name: str,
        args: Any,
        kwargs: dict[str, Any] | None,
        options: dict[str, Any],
        task: Any = None,
        **_: Any,
    ) -> dict[str, str] | None:
        if options.get("queue"):
            return None
        task = task if task is not None else self._task(name)
        if not getattr(task, "codex", False):
            return None
        affinity_arg = getattr(task, "affinity_arg", DEFAULT_AFFINITY_ARG)
        queue = self.topology.route(kwargs or {}, affinity_arg, task=name)
        if self.mover is not None and kwargs is not None and kwargs.get(PIN_ARG) is None:
            queue = self._maybe_move(name, task, kwargs, affinity_arg, queue)
        return {"queue": queue}

    def _maybe_move(self, name: str, task: Any, kwargs: dict[str, Any], affinity_arg: str, queue: str) -> str:
        """A first phase's queue: another shard's, pinned in ``kwargs``, when its own is limited.

        Never for a task that cannot take the pin (its later phases could not follow), nor for one
        published by a running Codex task (a later phase of a run published without a pin).
        """
        assert self.mover is not None
        if not accepts_pin(task) or getattr(current_task, "codex", False):
            return queue
        own = self.topology.shard_of(kwargs[affinity_arg])
        shard = self.mover.target(own, task=name, run_id=kwargs.get("run_id"))
        if shard == own:
            return queue
        kwargs[PIN_ARG] = shard
        return self.topology.shard_queue(shard)

    def _task(self, name: str) -> Any:
        """The task registered as ``name``, importing the app's ``include`` modules if need be.

        A publisher that sends by name (``send_task``, ``celery call``) has not imported the
        modules a worker imports at start, so ``codex.phase`` would be unknown here and go to the
        default queue, where no Codex worker takes it.
        """
        if name not in self.app.tasks and not self._included:
            self._included = True  # once: a name still unknown after it is no task of this app's
            self.app.loader.import_default_modules()
        return self.app.tasks.get(name)


def _routes(app: Any) -> list[Any]:
    routes = app.conf.task_routes
    return list(routes) if isinstance(routes, (list, tuple)) else ([routes] if routes else [])


def add_router(app: Any, config: AgentConfig) -> CodexRouter:
    """Put a :class:`CodexRouter` first in ``app.conf.task_routes`` (once); publishers need it too."""
    existing = _routes(app)
    for route in existing:
        if isinstance(route, CodexRouter):
            return route
    router = CodexRouter(app, config)
    app.conf.task_routes = [router, *existing]
    return router


def routed_options(task: Any, args: Any, kwargs: dict[str, Any] | None, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` for publishing a Codex task, with its shard queue whichever app publishes it.

    A shared task belongs to the current app, which is Celery's bare default app when nothing
    built ours first (``import worker_entry.tasks`` alone): that app has no router, and the phase
    would go to a queue named ``celery`` that no worker consumes. Routing then happens here, from
    the environment's shard count and queue mode, as the workers see them, read once per app.

    Raises:
        RoutingError: no affinity key, or a bad pin (CODEX-E050); nothing is sent.
        ConfigError: the environment's Codex variables are invalid (CODEX-E001).
    """
    if options.get("queue") or any(isinstance(r, CodexRouter) for r in _routes(task.app)):
        return options  # an explicit queue, or the app's own router decides
    router = _BARE_APP_ROUTERS.get(task.app)
    if router is None:  # the environment is read once per app, at its first Codex publish
        router = _BARE_APP_ROUTERS[task.app] = CodexRouter(task.app, config_mod.load())
    route = router(task.name, args, kwargs, options, task=task)
    return {**options, **(route or {})}


_BARE_APP_ROUTERS: dict[Any, CodexRouter] = {}
"""The router of each app without one of its own, made at its first Codex publish (apps live as
long as their process, so nothing is dropped)."""
