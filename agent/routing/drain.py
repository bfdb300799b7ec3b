"""Drain a removed shard's queue: move every waiting task to the queue it routes to now.

After the shard count shrinks (``CODEX_SHARDS`` 4 -> 3), tasks still waiting in ``codex-3`` have
no worker. :func:`drain` takes them one at a time and, for each:

1. gets the message without acknowledging it (it stays the broker's until step 3);
2. republishes it unchanged (body, headers, properties: the task id is kept) to the queue the
   :class:`~agent.routing.router.CodexRouter` rules give for the new shard count, with publisher confirms
   on RabbitMQ (``confirm_publish``) so the broker has it before we go on;
3. only then acknowledges the original.

Nothing is lost: a failure at step 2 puts the message back and stops, leaving the rest queued
(:class:`~agent.errors.DrainError`, CODEX-E060); running the same command again carries on.
Nothing is duplicated: between steps 2 and 3 the copy is recorded in the
:class:`~agent.routing.drain_journal.MoveJournal`, so an original that comes back because the connection
died before its ack is acknowledged by the next drain without a second copy.

Routing (:func:`target_queue`) is pure: non-Codex tasks go to the default queue (the app's
``task_default_queue`` with ``--app``); a run pinned by ``codex_shard`` keeps its shard while that
shard exists, otherwise it is routed by its affinity key (the task class's ``affinity_arg``). With an
app (:func:`task_kinds_from_app`), a task the app does not know cannot be placed: it stays queued and
the drain stops with CODEX-E051, where it used to be guessed to ``default``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kombu import Connection, Producer, Queue

from agent.errors import AgentError, DrainError, UnplaceableTaskError
from agent.routing.drain_journal import MoveJournal, journal_path, message_key
from agent.settings import defaults
from agent.settings.topology import DEFAULT_AFFINITY_ARG, PIN_ARG, QueueMode, Topology

__all__ = [
    "TaskKinds",
    "UnknownTask",
    "Move",
    "DrainReport",
    "target_queue",
    "task_kinds_from_app",
    "drain",
]

TaskKinds = Callable[[str, dict[str, Any]], "str | None"]
"""``(task name, kwargs) -> affinity argument name`` for a Codex task, None for any other task."""

_KEPT_PROPERTIES = ("correlation_id", "reply_to", "priority", "expiration", "message_id", "timestamp", "type", "app_id")
"""Message properties republished as they were (transport bookkeeping such as delivery tags is not)."""


class UnknownTask(LookupError):
    """Raised by a :data:`TaskKinds` for a task its app does not know: the drain cannot place it."""

    def __init__(self, task: str, app: str) -> None:
        super().__init__(task)
        self.task = task
        self.app = app


def _guess_kind(name: str, kwargs: dict[str, Any]) -> str | None:
    """Without an app: a task carrying an affinity key or a shard pin is a Codex task."""
    return DEFAULT_AFFINITY_ARG if (DEFAULT_AFFINITY_ARG in kwargs or PIN_ARG in kwargs) else None


def task_kinds_from_app(app: Any) -> TaskKinds:
    """Classify tasks with a Celery app's registry (``codex = True`` marks Codex tasks).

    A task the app does not know raises :class:`UnknownTask`: its affinity argument and its queue
    would be a guess (an adopter's ``myproj.review_pr`` routed by ``repo`` is no ``codex.phase``).
    """

    def kind(name: str, kwargs: dict[str, Any]) -> str | None:
        task = app.tasks.get(name)
        if task is None:
            raise UnknownTask(name, str(app.main))
        if getattr(task, "codex", False):
            return str(getattr(task, "affinity_arg", DEFAULT_AFFINITY_ARG))
        return None

    return kind


def target_queue(
    name: str,
    kwargs: dict[str, Any],
    *,
    shards: int,
    mode: QueueMode = "sharded",
    kinds: TaskKinds = _guess_kind,
    default_queue: str = defaults.DEFAULT_QUEUE,
) -> str:
    """Where task ``name`` with ``kwargs`` goes now, for ``shards`` shards (pure).

    Non-Codex tasks go to ``default_queue``; Codex tasks where the topology's
    :meth:`~agent.settings.topology.Topology.drain_target` says.

    Raises:
        RoutingError: a Codex task has neither a usable pin nor an affinity key.
        UnknownTask: ``kinds`` does not know the task.
    """
    affinity_arg = kinds(name, kwargs)
    if affinity_arg is None:
        return default_queue
    return Topology(shards, mode).drain_target(kwargs, affinity_arg)


@dataclass(frozen=True)
class Move:
    """One task taken from the drained queue (or, in a dry run, that would be)."""

    task_id: str | None
    task: str | None
    to: str


@dataclass
class DrainReport:
    """What a drain did: the moves, what is left, and the error that stopped it, if any."""

    queue: str
    shards: int
    dry_run: bool
    moves: list[Move] = field(default_factory=list)
    already_moved: list[Move] = field(default_factory=list)
    left: int = 0
    error: AgentError | None = None

    @property
    def ok(self) -> bool:
        """No error stopped the drain."""
        return self.error is None

    def counts(self) -> dict[str, int]:
        """Tasks moved (or to move) per target queue."""
        out: dict[str, int] = {}
        for move in self.moves:
            out[move.to] = out.get(move.to, 0) + 1
        return dict(sorted(out.items()))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe summary (task ids and names only, never task arguments)."""
        return {
            "ok": self.ok,
            "queue": self.queue,
            "shards": self.shards,
            "dry_run": self.dry_run,
            "moved": 0 if self.dry_run else len(self.moves),
            "would_move": len(self.moves) if self.dry_run else 0,
            "per_queue": self.counts(),
            "already_moved": [asdict(m) for m in self.already_moved],
            "left": self.left,
            "tasks": [asdict(m) for m in self.moves],
            "error": self.error.to_dict() if self.error else None,
        }


def _task_of(message: Any) -> tuple[str | None, str | None, dict[str, Any]]:
    """(task id, task name, kwargs) of a Celery message, protocol 2 or 1."""
    headers = message.headers or {}
    payload = message.decode()
    if "task" in headers:  # protocol 2: body is [args, kwargs, embed]
        kwargs = payload[1] if isinstance(payload, (list, tuple)) and len(payload) > 1 else {}
        return headers.get("id"), headers.get("task"), dict(kwargs or {})
    if isinstance(payload, dict) and "task" in payload:  # protocol 1
        return payload.get("id"), payload.get("task"), dict(payload.get("kwargs") or {})
    return None, None, {}


def _republish(producer: Producer, message: Any, queue: str) -> None:
    properties = {k: v for k, v in (message.properties or {}).items() if k in _KEPT_PROPERTIES and v is not None}
    producer.publish(
        message.body,
        exchange="",  # the default exchange delivers straight to the queue named by routing_key
        routing_key=queue,
        content_type=message.content_type,
        content_encoding=message.content_encoding,
        headers=dict(message.headers or {}),
        delivery_mode=(message.properties or {}).get("delivery_mode") or 2,
        retry=False,
        **properties,
    )


def _declare(channel: Any, name: str) -> Queue:
    # Same declaration as Celery's task_queues (durable, no arguments), so it never conflicts.
    queue = Queue(name, durable=True)(channel)
    queue.declare()
    return queue


def _waiting(queue: Queue) -> int:
    try:
        _, count, _ = queue.queue_declare()
        return int(count)
    except Exception:  # noqa: BLE001  (a count is a courtesy; never fail the drain for it)
        return -1


@contextmanager
def _connection(broker_url: str) -> Iterator[Connection]:
    # RabbitMQ: publisher confirms, so publish() returns only once the broker has the copy.
    with Connection(broker_url, connect_timeout=10, transport_options={"confirm_publish": True}) as conn:
        conn.ensure_connection(max_retries=1)
        yield conn


def drain(
    broker_url: str,
    queue: str,
    *,
    shards: int,
    mode: QueueMode = "sharded",
    kinds: TaskKinds = _guess_kind,
    dry_run: bool = False,
    limit: int | None = None,
    state_dir: Path = Path(defaults.STATE_DIR),
    on_copied: Callable[[Move], None] | None = None,
    default_queue: str = defaults.DEFAULT_QUEUE,
) -> DrainReport:
    """Move every task waiting in ``queue`` to where it routes for ``shards`` shards.

    Args:
        broker_url: the Celery broker (RabbitMQ ``amqp://`` or Redis ``redis://``).
        queue: the removed shard's queue, e.g. ``codex-3``.
        shards: the new shard count.
        mode: the queue mode (``sharded`` or ``single``).
        kinds: tells Codex tasks (and their affinity argument) from the others.
        dry_run: only say where each task would go; every message stays where it is.
        limit: move at most this many tasks, then stop (the rest stay queued).
        state_dir: where the journal of confirmed copies lives (``AGENT_STATE_DIR``).
        on_copied: called for each task once its copy is confirmed and journaled, just before
            the original is acknowledged (progress output; tests interrupt the drain there).
        default_queue: where non-Codex tasks go (the app's ``task_default_queue``).

    Returns:
        The report; ``report.error`` is set (and the rest left queued) when a task could not be moved:
        CODEX-E051 for a task ``kinds`` does not know, CODEX-E060 otherwise.

    Raises:
        DrainError: ``queue`` still has workers for ``shards`` shards, or another drain of it is
            running (nothing is touched).
    """
    if queue in Topology(shards, mode).live_queues():
        raise DrainError(
            queue=queue,
            cause=f"{queue} is still a live queue with {shards} shards; drain only a removed shard's queue",
        )
    report = DrainReport(queue=queue, shards=shards, dry_run=dry_run)
    with MoveJournal(journal_path(state_dir, broker_url, queue), queue) as journal:
        try:
            with _connection(broker_url) as conn:
                source_channel = conn.channel()
                source = _declare(source_channel, queue)
                mover = _Mover(report, journal, Producer(conn.default_channel, auto_declare=False), on_copied)
                mover.default_queue = default_queue
                try:
                    mover.move_all(source, shards, mode, kinds, limit)
                finally:
                    report.left = _waiting(source) if not dry_run else report.left
                    source_channel.close()  # in a dry run this hands every held message back
                if dry_run:
                    report.left = _waiting(_declare(conn.channel(), queue))
        except Exception as e:  # noqa: BLE001  (broker down, refused login, ...: translated at the boundary)
            report.error = report.error or DrainError(queue=queue, cause=f"{type(e).__name__}: {e}")
        if report.ok and report.left == 0 and not dry_run:
            journal.clear()
    return report


class _Mover:
    """Takes a drain's messages one by one: copy, journal, acknowledge (or just report, in a dry run)."""

    def __init__(
        self,
        report: DrainReport,
        journal: MoveJournal,
        producer: Producer,
        on_copied: Callable[[Move], None] | None,
    ) -> None:
        self.report = report
        self.journal = journal
        self.producer = producer
        self.on_copied = on_copied
        self.declared: set[str] = set()
        self.default_queue = defaults.DEFAULT_QUEUE

    def move_all(self, source: Queue, shards: int, mode: QueueMode, kinds: TaskKinds, limit: int | None) -> None:
        report = self.report
        while limit is None or len(report.moves) < limit:
            message = source.get(no_ack=False)
            if message is None:
                return
            task_id: str | None = None
            try:
                task_id, name, kwargs = _task_of(message)
                if name is None:
                    raise DrainError(queue=report.queue, cause="a message that is not a Celery task is in the way")
                key = message_key(task_id, message.body, dict(message.headers or {}))
                to = target_queue(name, kwargs, shards=shards, mode=mode, kinds=kinds, default_queue=self.default_queue)
                move = Move(task_id=task_id, task=name, to=to)
                if key in self.journal:
                    self._drop_copied_original(message, move)
                    continue
                if not report.dry_run:
                    self._copy(message, move.to)
            except Exception as e:  # noqa: BLE001
                if not report.dry_run:
                    message.requeue()  # back where it was; nothing after it is touched
                if isinstance(e, UnknownTask):  # never guessed to a default queue: it stays queued
                    report.error = UnplaceableTaskError(
                        queue=report.queue, task=e.task, task_id=task_id or "?", app=e.app
                    )
                    return
                cause = e.message if isinstance(e, AgentError) else f"{type(e).__name__}: {e}"
                report.error = DrainError(queue=report.queue, cause=f"task {task_id or '?'} not moved: {cause}")
                return
            error = None if report.dry_run else self._journal_then_ack(message, key, move)
            report.moves.append(move)
            if error is not None:
                report.error = error
                return

    def _drop_copied_original(self, message: Any, move: Move) -> None:
        """An original whose copy an earlier drain confirmed (its ack was lost): acknowledge it only."""
        if not self.report.dry_run:
            message.ack()
        self.report.already_moved.append(move)

    def _copy(self, message: Any, target: str) -> None:
        if target not in self.declared:
            _declare(self.producer.channel, target)
            self.declared.add(target)
        _republish(self.producer, message, target)

    def _journal_then_ack(self, message: Any, key: str, move: Move) -> DrainError | None:
        """The copy is confirmed: journal it, then acknowledge the original (never requeue it now).

        Returns the error that must stop the drain once this move is counted, if any.
        """
        try:
            self.journal.record(key, move.task_id, move.to)
        except OSError as e:
            message.ack()  # the copy exists; a requeued original would become a duplicate
            return DrainError(queue=self.report.queue, cause=f"cannot write the drain journal: {e}")
        if self.on_copied is not None:
            self.on_copied(move)
        message.ack()
        return None
