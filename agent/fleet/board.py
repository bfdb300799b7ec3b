"""Where every worker's state is posted for the fleet: the broker the workers already share.

``codex-agent fleet`` must see every host's shards with no Docker access to the other hosts, so
each agent posts a small record (JSON, no secret) to the broker and renews it; a record that is
not renewed disappears by itself, so a worker killed with ``kill -9`` (or a lost host) drops off
the board within the TTL.

- **Redis**: one key per worker process (``codex-agent.fleet.<host>/<worker>/<pid>``), ``SET PX ttl``; the reader
  scans the prefix and reads every key.
- **RabbitMQ**: AMQP has no way to list queues, so every worker posts into one shared queue
  (:data:`QUEUE`), each message with a per-message TTL (``expiration``). The queue holds only the
  records posted during the last TTL (a few per worker); the reader takes them all unacknowledged,
  keeps the newest per worker and hands them back by closing its channel (a requeued message keeps
  its original expiry, so reading never keeps a dead worker alive). Two readers at the same instant
  may each see part of the board; the next read is whole again.

A broker that does not answer raises :class:`~agent.fleet.broker_link.BrokerUnreachable`.
"""

from __future__ import annotations

from typing import Any, Protocol

import redis

from agent.fleet.broker_link import BrokerUnreachable, amqp_connect, close_socket_copy, quietly, redis_client
from agent.fleet.lease_store import supports

__all__ = [
    "KEY_PREFIX",
    "QUEUE",
    "AmqpBoard",
    "Board",
    "RedisBoard",
    "board_for",
    "supports",
]

KEY_PREFIX = "codex-agent.fleet."
"""Redis: prefix of every worker's record key; the worker's key (host/name/pid) follows."""

QUEUE = "codex-agent.fleet"
"""RabbitMQ: the one queue every worker posts its record to."""

MAX_RECORDS = 10_000
"""RabbitMQ: the queue's length cap (oldest dropped first), and the most a reader takes."""

_QUEUE_ARGS = {"x-max-length": MAX_RECORDS}
# Every poster and reader declares the queue with these same arguments (RabbitMQ refuses a mismatch).


class Board(Protocol):
    """The broker side of the fleet board (one per process)."""

    kind: str
    """``redis`` or ``rabbitmq``."""

    def post(self, worker: str, record: str, ttl: float) -> None:
        """Post the record of ``worker`` (its key), replacing its previous one; it lives ``ttl`` seconds.

        Raises:
            BrokerUnreachable: the broker did not answer.
        """
        ...

    def read(self) -> list[str]:
        """Every live record (RabbitMQ: possibly several per worker, oldest first).

        Raises:
            BrokerUnreachable: the broker did not answer.
        """
        ...

    def close(self) -> None:
        """Drop the connection; never raises."""
        ...

    def close_inherited(self) -> None:
        """In a forked child: forget the parent's connection without touching it."""
        ...


def board_for(broker_url: str, *, name: str) -> Board:
    """The board in ``broker_url`` (RabbitMQ or Redis; see :func:`supports`).

    Raises:
        ValueError: the broker is neither.
    """
    if not supports(broker_url):
        raise ValueError("no fleet board on this broker; accepted: amqp, redis")
    if broker_url.split(":", 1)[0].startswith("redis"):
        return RedisBoard(broker_url)
    return AmqpBoard(broker_url, name=name)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisBoard:
    """One key per worker, with a TTL."""

    kind = "redis"

    def __init__(self, url: str) -> None:
        self._client = redis_client(url)  # the next post or read is the retry

    def post(self, worker: str, record: str, ttl: float) -> None:
        try:
            self._client.set(KEY_PREFIX + worker, record, px=max(1, int(ttl * 1000)))
        except redis.RedisError as e:
            raise BrokerUnreachable(f"{type(e).__name__}: {e}") from e

    def read(self) -> list[str]:
        try:
            keys = sorted(self._client.scan_iter(match=KEY_PREFIX + "*", count=500))
            values = self._client.mget(keys) if keys else []
        except redis.RedisError as e:
            raise BrokerUnreachable(f"{type(e).__name__}: {e}") from e
        return [_text(v) for v in values if v is not None]  # a key may expire between scan and read

    def close(self) -> None:
        quietly(self._client.close)

    def close_inherited(self) -> None:
        pass  # redis-py's pool notices the fork and opens its own connections


class AmqpBoard:
    """One shared queue of records with per-message TTLs."""

    kind = "rabbitmq"

    def __init__(self, url: str, *, name: str) -> None:
        self.url = url
        self.name = name
        self._connection: Any = None

    def _connect(self) -> Any:
        if self._connection is not None and self._connection.connected:
            return self._connection
        self.close()
        connection = amqp_connect(self.url, name=f"codex-agent fleet {self.name}")
        self._connection = connection
        return connection

    def _with_channel(self, what: Any) -> Any:
        """Run ``what(channel)`` on a fresh channel, once more on a new connection if the old one died."""
        for attempt in (1, 2):
            connection = self._connect()
            try:
                channel = connection.channel()
                try:
                    channel.queue_declare(queue=QUEUE, durable=False, auto_delete=False, arguments=_QUEUE_ARGS)
                    return what(channel)
                finally:
                    quietly(channel.close)  # the reader's unacknowledged records go back here
            except tuple(connection.connection_errors) + tuple(connection.channel_errors) + (OSError,) as e:
                self.close()
                if attempt == 2:
                    raise BrokerUnreachable(f"{type(e).__name__}: {e}") from e
        raise AssertionError("unreachable")

    def post(self, worker: str, record: str, ttl: float) -> None:
        def publish(channel: Any) -> None:
            message = channel.prepare_message(
                record.encode(),
                content_type="application/json",
                content_encoding="utf-8",
                properties={"expiration": str(max(1, int(ttl * 1000)))},
            )
            channel.basic_publish(message, exchange="", routing_key=QUEUE)

        self._with_channel(publish)

    def read(self) -> list[str]:
        def take_all(channel: Any) -> list[str]:
            records: list[str] = []
            while len(records) < MAX_RECORDS:
                message = channel.basic_get(queue=QUEUE, no_ack=False)
                if message is None:
                    break
                records.append(_text(message.body))
            return records

        return list(self._with_channel(take_all))

    def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            quietly(connection.release)

    def close_inherited(self) -> None:
        """Close this child's copy of the socket only; the parent keeps the connection."""
        connection, self._connection = self._connection, None
        close_socket_copy(connection)
