"""A Codex run written as a Celery canvas stays on the login of its first Codex phase.

A user writes ``chain(plan.si(...), build.s(...), review.si(...))`` with no pin. The first Codex
phase is routed as any Codex task (by its affinity key: ``codex-N`` in sharded mode, the shared
``codex`` queue in single mode). The worker that takes it rewrites, in place, the request's
remaining ``chain`` (signature dicts, last step first) before the body runs: every Codex signature
in it, also inside a group or chord, gets this shard's own queue (and the pin keyword when the task
accepts it). Celery publishes the next step from that same list once the task returns, and a retry
or a redelivery carries it too, so the rest of the run lands on this shard's queue, one login and
one ``CODEX_HOME`` with the run's Codex session, in both queue modes. Non-Codex steps keep their
own routing (the default queue). A signature given an explicit non-Codex queue by its author is
left alone.

Limits: a group that is the canvas's *first* step publishes its members at once, so in single mode
each may start on another shard (in sharded mode the same affinity key gives the same shard).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from typing import Any

import structlog

from agent.settings.config import AgentConfig
from agent.settings.topology import PIN_ARG

__all__ = ["signatures_in", "pin_signatures", "accepts_pin", "own_queue", "keep_chain_on_shard"]

log = structlog.get_logger(__name__)

CHAIN_PINNED = "codex.chain.pinned"
"""Audit line: how many of the run's remaining Codex steps were routed to this shard's queue."""


def signatures_in(step: Any) -> Iterator[dict[str, Any]]:
    """Every task signature dict in a canvas step (a task, or a chain, group or chord of them)."""
    if isinstance(step, (list, tuple)):
        for item in step:
            yield from signatures_in(item)
        return
    if not isinstance(step, dict):
        return
    kind = step.get("subtask_type")
    kwargs = step.get("kwargs") or {}
    if kind in ("chain", "group"):
        yield from signatures_in(kwargs.get("tasks"))
    elif kind == "chord":
        yield from signatures_in(kwargs.get("header"))
        yield from signatures_in(kwargs.get("body"))
    else:
        yield step


def pin_signatures(
    chain: list[Any],
    *,
    queue: str,
    shard: int,
    is_codex: Callable[[str], bool],
    takes_pin: Callable[[str], bool],
    codex_queues: frozenset[str],
) -> int:
    """Route every Codex signature of ``chain`` to ``queue`` (in place); returns how many.

    Args:
        chain: the request's remaining chain (signature dicts), changed in place.
        queue: this shard's own queue; shard: its index (the pin).
        is_codex: whether a task name is a Codex task; takes_pin: whether it accepts ``codex_shard``.
        codex_queues: queues that may be replaced (a Codex queue, or none set).
    """
    moved = 0
    for sig in signatures_in(chain):
        name = sig.get("task")
        if not isinstance(name, str) or not is_codex(name):
            continue
        options = sig.setdefault("options", {})
        if options.get("queue") not in (None, *codex_queues):
            continue  # the author chose a queue of their own
        options["queue"] = queue
        if takes_pin(name) and isinstance(sig.setdefault("kwargs", {}), dict):
            sig["kwargs"][PIN_ARG] = shard
        moved += 1
    return moved


def accepts_pin(task: Any) -> bool:
    """Whether a task's function takes the pin keyword (by name, or through ``**kwargs``)."""
    try:
        params = inspect.signature(task.run).parameters.values()
    except (TypeError, ValueError, AttributeError):
        return False
    return any(p.name == PIN_ARG or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def own_queue(config: AgentConfig) -> str:
    """The queue only this shard's worker consumes: ``codex-N``, or its ``CODEX_QUEUE`` when set."""
    assert config.shard_index is not None, "a Codex worker has a shard"
    queue = config.topology.shard_queue(config.shard_index)
    return queue if queue in config.codex_queues or not config.codex_queue else config.codex_queue


def keep_chain_on_shard(task: Any, config: AgentConfig) -> str:
    """Pin the running request's remaining chain to this shard (module docstring); returns its queue."""
    queue = own_queue(config)
    chain = getattr(task.request, "chain", None)
    if not chain:
        return queue
    assert config.shard_index is not None
    shard = config.shard_index
    codex_queues = frozenset((*config.topology.codex_queues(), *config.codex_queues))

    def lookup(name: str) -> Any:
        return task.app.tasks.get(name)

    moved = pin_signatures(
        chain,
        queue=queue,
        shard=shard,
        is_codex=lambda name: bool(getattr(lookup(name), "codex", False)),
        takes_pin=lambda name: accepts_pin(lookup(name)),
        codex_queues=codex_queues,
    )
    if moved:
        log.info(CHAIN_PINNED, pinned_steps=moved, to_queue=queue)
    return queue
