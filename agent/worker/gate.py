"""The shard-queue gate: consume the Codex queues only while every check passes.

The :class:`Gate` holds the decision (open or closed, and why). The :class:`GateStep` consumer
bootstep attaches it to the Celery consumer and re-applies it on every consumer (re)start, so
the decision survives broker reconnects. Consumer changes only ever run on the consumer's own
thread: the re-check thread asks for them with ``consumer.call_soon``.

Celery notes this module works around:
* celery#7733: ``cancel_task_queue`` deselects the queue, and older ``add_task_queue`` does not
  select it again, so after a reconnect the queue would silently stay unconsumed. Opening always
  ``select_add``\\s the queue back.
* ``Queues.deselect`` with no ``-Q`` given was a no-op on older Celery; ``worker-entry`` always
  passes explicit queues.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Protocol

import structlog
from celery import bootsteps

from agent.problems import Problem

__all__ = ["ConsumerOwner", "Gate", "GateStep"]

log = structlog.get_logger(__name__)


class Gate:
    """Open/closed decision for a worker's Codex queues, applied to the Celery consumer.

    Args:
        app: the Celery app (its ``amqp.queues`` selection is what a consumer restart reads).
        queues: the queues this gate guards: the shard's own, and the shared one in single mode.
    """

    def __init__(self, app: Any, queues: tuple[str, ...]) -> None:
        if not queues:
            raise ValueError("a gate guards at least one queue")
        self.app = app
        self.queues = tuple(queues)
        self.is_open = False
        self._decided = False
        self.since = time.time()
        self.reason: list[Problem] = []
        self.drained: frozenset[str] = frozenset()
        """Guarded queues not consumed even while open: the shared ``codex`` queue of a login near its
        usage limit (drain before the wall: no new runs, the shard's own queue keeps its runs)."""
        self._lock = threading.Lock()

    @property
    def queue(self) -> str:
        """The first gated queue (the one ``status`` and the audit lines name)."""
        return self.queues[0]

    def set(
        self,
        is_open: bool,
        reason: list[Problem] | None = None,
        *,
        consumer: Any = None,
        on_consumer_thread: bool = False,
    ) -> bool:
        """Record the decision and apply it to ``consumer`` (the running one, if any); returns whether it changed.

        Safe from any thread: the consumer change is scheduled on the consumer's thread, or made
        at once when the caller says it already runs there (a task's failure callback, which
        must stop consuming before its message is requeued).
        """
        with self._lock:
            changed = not self._decided or is_open != self.is_open
            self._decided = True
            self.reason = [] if is_open else list(reason or [])
            if not changed:
                return False
            self.is_open = is_open
            self.since = time.time()
        if is_open:
            log.info("codex.gate.opened", queue=self.queue, queues=list(self.queues))
        else:
            log.warning(
                "codex.gate.closed",
                queue=self.queue,
                queues=list(self.queues),
                reason=[p.to_dict() for p in self.reason],
            )
        if consumer is None:
            self._select()
        elif on_consumer_thread:
            self.apply(consumer)
        else:
            consumer.call_soon(self.apply, consumer)
        return True

    def wanted(self, name: str) -> bool:
        """Whether gated queue ``name`` is to be consumed now: open and not drained."""
        return self.is_open and name not in self.drained

    def drain(self, queues: frozenset[str], *, consumer: Any = None) -> bool:
        """Stop (or resume) consuming ``queues`` while the gate is open; returns whether it changed.

        Safe from any thread: the consumer change is scheduled on the consumer's thread.
        """
        queues = frozenset(q for q in queues if q in self.queues)
        with self._lock:
            if queues == self.drained:
                return False
            self.drained = queues
        log.info("codex.gate.drained" if queues else "codex.gate.undrained", queue=self.queue, drained=sorted(queues))
        if consumer is None:
            self._select()
        else:
            consumer.call_soon(self.apply, consumer)
        return True

    def _select(self) -> None:
        """Make the queue selection match the decision, for the next consumer start."""
        declared = self.app.amqp.queues
        for name in self.queues:
            if not self.wanted(name):
                declared.deselect(name)
            elif name in declared:
                declared.select_add(declared[name])

    def apply(self, consumer: Any) -> None:
        """Make a running ``consumer`` match the decision. Runs on the consumer's thread only."""
        task_consumer: Any = getattr(consumer, "task_consumer", None)
        looping = task_consumer is not None and (task_consumer.on_message or task_consumer.callbacks)
        if not looping:  # (re)starting: the selection decides what the loop will consume
            self._prepare(task_consumer)
            return
        for name in self.queues:
            consuming = task_consumer.consuming_from(name)
            if self.wanted(name) and not consuming:
                consumer.add_task_queue(name)
                log.info("codex.gate.consuming", queue=name)
            elif not self.wanted(name) and consuming:
                consumer.cancel_task_queue(name)
                log.info("codex.gate.cancelled", queue=name)
        self._select()  # celery#7733: keep the queues selected (or not) for reconnects

    def _prepare(self, task_consumer: Any) -> None:
        """Before the consume loop starts: fix the selection and the consumer's queue list."""
        self._select()
        if task_consumer is None:
            return
        task_consumer.queues = [q for q in task_consumer.queues if q.name not in self.queues or self.wanted(q.name)]
        if not self.is_open:
            return
        for name in self.queues:
            if not self.wanted(name):
                continue
            if not any(q.name == name for q in task_consumer.queues) and name in self.app.amqp.queues:
                task_consumer.add_queue(self.app.amqp.queues[name])
            log.info("codex.gate.consuming", queue=name)


class ConsumerOwner(Protocol):
    """Who owns the running consumer: the agent, handed to the gate step at install."""

    def consumer_started(self, consumer: Any) -> None:
        """The consumer (re)started: apply the gate before it consumes."""

    def consumer_stopped(self) -> None:
        """The consumer is stopping or reconnecting."""


class GateStep(bootsteps.StartStopStep):
    """Consumer bootstep: hands the (re)started consumer to its owner, the agent.

    Made per agent by :meth:`bound` (as celery's ``heart`` step gets its settings), so nothing is
    looked up on the app.
    """

    requires = ("celery.worker.consumer.tasks:Tasks",)
    label = "codex-gate"
    owner: ConsumerOwner

    @classmethod
    def bound(cls, owner: ConsumerOwner) -> type[GateStep]:
        """A step class for one agent."""
        return type(cls.__name__, (cls,), {"owner": owner, "__module__": cls.__module__})

    def start(self, c: Any) -> None:
        self.owner.consumer_started(c)

    def stop(self, c: Any) -> None:
        self.owner.consumer_stopped()

    shutdown = stop
