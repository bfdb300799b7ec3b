"""The Gate's state machine over a fake consumer, with a real Celery app's queue selection.

The gate's reconnect logic (``_prepare`` before a consume loop starts vs ``apply`` on a running
one) is where a table pays off; real workers on real brokers cover the whole path elsewhere.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from celery import Celery
from kombu import Queue

from agent.errors import LoginRevokedError, NotLoggedInError
from agent.worker.gate import Gate

QUEUES = ("codex", "codex-1")


@dataclass
class FakeTaskConsumer:
    queues: list[Queue]
    looping: bool = True
    on_message: Any = None
    callbacks: list[Any] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.on_message = (lambda *a: None) if self.looping else None

    def consuming_from(self, name: str) -> bool:
        return any(q.name == name for q in self.queues)

    def add_queue(self, queue: Queue) -> None:
        self.queues.append(queue)


@dataclass
class FakeConsumer:
    task_consumer: FakeTaskConsumer
    calls: list[tuple[str, str]] = field(default_factory=list)
    soon: list[Callable[..., Any]] = field(default_factory=list)

    def add_task_queue(self, name: str) -> None:
        self.calls.append(("add", name))
        self.task_consumer.queues.append(Queue(name))

    def cancel_task_queue(self, name: str) -> None:
        self.calls.append(("cancel", name))
        self.task_consumer.queues = [q for q in self.task_consumer.queues if q.name != name]

    def call_soon(self, fn: Callable[..., Any], *args: Any) -> None:
        self.soon.append(lambda: fn(*args))


def app() -> Celery:
    made = Celery("t", broker="memory://", set_as_current=False)
    made.conf.task_queues = [Queue(name) for name in ("default", *QUEUES)]
    return made


def selected(gate: Gate) -> set[str]:
    return {name for name in QUEUES if name in gate.app.amqp.queues.consume_from}


def consumer(consuming: tuple[str, ...], looping: bool = True) -> FakeConsumer:
    return FakeConsumer(FakeTaskConsumer([Queue("default"), *(Queue(n) for n in consuming)], looping=looping))


class TestRunningConsumer:
    @pytest.mark.parametrize(
        ("start_open", "open_now", "consuming", "calls"),
        [
            (False, True, (), [("add", "codex"), ("add", "codex-1")]),
            (True, False, QUEUES, [("cancel", "codex"), ("cancel", "codex-1")]),
            (False, True, ("codex",), [("add", "codex-1")]),
        ],
        ids=["open-adds-every-queue", "close-cancels-every-queue", "open-adds-only-the-missing"],
    )
    def test_a_change_is_applied_to_every_guarded_queue(
        self, start_open: bool, open_now: bool, consuming: tuple[str, ...], calls: list[tuple[str, str]]
    ) -> None:
        """On the consumer's thread the change is made at once, queue by queue."""
        gate = Gate(app(), QUEUES)
        gate.set(start_open)
        running = consumer(consuming)
        assert gate.set(open_now, consumer=running, on_consumer_thread=True) is True
        assert running.calls == calls
        assert selected(gate) == (set(QUEUES) if open_now else set())

    def test_from_another_thread_the_change_is_scheduled_on_the_consumer(self) -> None:
        """The re-check thread never touches the consumer: it asks with call_soon."""
        gate = Gate(app(), QUEUES)
        gate.set(False)
        running = consumer(())
        gate.set(True, consumer=running)
        assert running.calls == [] and len(running.soon) == 1
        running.soon[0]()
        assert running.calls == [("add", "codex"), ("add", "codex-1")]

    def test_an_unchanged_decision_does_nothing_but_keeps_the_newest_reason(self) -> None:
        gate = Gate(app(), QUEUES)
        gate.set(False, [NotLoggedInError(shard=1, volume="v", cause="x").problem("login")])
        running = consumer(())
        revoked = LoginRevokedError(shard=1, volume="v", cause="refresh_token_reused").problem("preflight")
        assert gate.set(False, [revoked], consumer=running) is False
        assert running.calls == [] and running.soon == [] and gate.reason == [revoked]


class TestRestartingConsumer:
    def test_closed_before_the_loop_starts_strips_the_guarded_queues(self) -> None:
        """A reconnect with the gate closed must not consume the shard's queues for a moment."""
        gate = Gate(app(), QUEUES)
        gate.set(False)
        restarting = consumer(QUEUES, looping=False)
        gate.apply(restarting)
        assert [q.name for q in restarting.task_consumer.queues] == ["default"]
        assert restarting.calls == [] and selected(gate) == set()

    def test_open_before_the_loop_starts_adds_the_missing_queues(self) -> None:
        """celery#7733: a queue cancelled before the reconnect is consumed again when open."""
        gate = Gate(app(), QUEUES)
        gate.set(True)
        restarting = consumer((), looping=False)
        gate.apply(restarting)
        assert sorted(q.name for q in restarting.task_consumer.queues) == ["codex", "codex-1", "default"]
        assert selected(gate) == set(QUEUES)

    def test_a_gate_needs_a_queue(self) -> None:
        with pytest.raises(ValueError):
            Gate(app(), ())


class TestDrain:
    def test_a_drained_queue_is_left_while_open_and_the_shards_own_queue_kept(self) -> None:
        """Drain before the wall: stop taking new runs from ``codex``, keep ``codex-1``; then resume."""
        gate = Gate(app(), QUEUES)
        gate.set(True)
        running = consumer(QUEUES)
        assert gate.drain(frozenset({"codex"}), consumer=running) is True
        assert running.calls == [] and len(running.soon) == 1  # always on the consumer's thread
        running.soon.pop()()
        assert running.calls == [("cancel", "codex")] and selected(gate) == {"codex-1"}
        assert gate.drain(frozenset({"codex"}), consumer=running) is False
        gate.set(False, consumer=running, on_consumer_thread=True)
        gate.set(True, consumer=running, on_consumer_thread=True)  # reopening keeps the drain
        assert running.calls[-1] == ("add", "codex-1") and not running.task_consumer.consuming_from("codex")
        gate.drain(frozenset(), consumer=running)
        running.soon.pop()()
        assert running.calls[-1] == ("add", "codex") and selected(gate) == set(QUEUES)

    def test_a_reconnect_while_drained_does_not_consume_the_drained_queue(self) -> None:
        gate = Gate(app(), QUEUES)
        gate.set(True)
        gate.drain(frozenset({"codex", "not-guarded"}))
        assert gate.drained == frozenset({"codex"})
        restarting = consumer(QUEUES, looping=False)
        gate.apply(restarting)
        assert sorted(q.name for q in restarting.task_consumer.queues) == ["codex-1", "default"]
