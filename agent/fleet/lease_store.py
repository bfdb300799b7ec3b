"""Where fleet-wide login leases live: the broker the workers already use, RabbitMQ or Redis.

A store answers one question per fingerprint, atomically in the broker: "take this lease, or
renew it if it is mine; if someone else holds it, who?". :class:`~agent.fleet.lease.LoginLease`
decides what a fingerprint is and what a refusal means; the stores only keep the leases.

- **Redis**: one key per fingerprint, ``SET NX PX`` with the holder's record as the value, renewed
  by a compare-and-expire script on every heartbeat. A holder killed with ``kill -9`` stops
  renewing and its keys expire after the TTL.
- **RabbitMQ**: one exclusive, auto-delete queue per fingerprint, declared on the store's own
  connection. The broker deletes it the moment that connection closes, ``kill -9`` included. The
  holder's record waits in a one-message "holder" queue beside it, where a refused worker reads it
  without taking it.

Every store call is made under the caller's lock from one thread at a time. A broker that cannot
be reached raises :class:`BrokerUnreachable`, which the lease treats as "keep the last verdict".
"""

from __future__ import annotations

import socket
import time
from typing import Any, Protocol
from urllib.parse import urlsplit

import redis
from kombu.utils.url import sanitize_url

from agent.fleet.broker_link import BrokerUnreachable, amqp_connect, close_socket_copy, redis_client
from agent.fleet.broker_link import quietly as _quietly

__all__ = [
    "KEY_PREFIX",
    "HOLDER_PREFIX",
    "BrokerUnreachable",
    "LeaseStore",
    "RedisLeaseStore",
    "AmqpLeaseStore",
    "describe_broker",
    "store_for",
    "supports",
]

KEY_PREFIX = "codex-agent.lease."
"""Prefix of every lease key (Redis) and lease queue (RabbitMQ); the fingerprint follows."""

HOLDER_PREFIX = "codex-agent.lease-holder."
"""RabbitMQ: prefix of the queue holding the current holder's record of a fingerprint."""

_AMQP_SCHEMES = ("amqp", "amqps", "pyamqp")
_REDIS_SCHEMES = ("redis", "rediss")
_RESOURCE_LOCKED = 405
_NOT_FOUND = 404
# The holder queue keeps one record and outlives a dead holder for a while, so a refusal can still
# name it; every holder declares it with these same arguments (RabbitMQ refuses a mismatch).
_HOLDER_ARGS = {"x-max-length": 1, "x-expires": 120_000}

# KEYS[1] the lease; ARGV[1] our record, ARGV[2] TTL in ms, ARGV[3] a dead holder's record to replace.
# Returns "" when the lease is ours now, else the current holder's record.
_TAKE = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return '' end
local current = redis.call('GET', KEYS[1])
if current == ARGV[1] or (ARGV[3] ~= '' and current == ARGV[3]) then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return ''
end
return current
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class LeaseStore(Protocol):
    """The broker side of the leases (one store per worker process)."""

    kind: str
    """``redis`` or ``rabbitmq``, for logs and reports."""

    def take(self, fingerprint: str, record: str, replace: str = "") -> str:
        """Take or renew the lease of ``fingerprint`` for ``record``.

        Args:
            fingerprint: the one-way fingerprint the lease is keyed by.
            record: our holder record (JSON); the same string on every call.
            replace: a holder record known to be dead, which may be replaced.

        Returns:
            ``""`` when the lease is ours, else the holder's record (``"{}"`` when unknown).

        Raises:
            BrokerUnreachable: the broker did not answer.
        """
        ...

    def peek(self, fingerprint: str) -> str:
        """Who holds the lease of ``fingerprint``, taking nothing.

        Returns:
            ``""`` when it is free or ours, else the holder's record (``"{}"`` when unknown).

        Raises:
            BrokerUnreachable: the broker did not answer.
        """
        ...

    def release(self, fingerprint: str, record: str) -> None:
        """Give the lease up if it is still ours; never raises."""
        ...

    def close(self) -> None:
        """Release everything and drop the connection; never raises."""
        ...

    def close_inherited(self) -> None:
        """In a forked child: forget the parent's connection without touching it."""
        ...


def supports(broker_url: str) -> bool:
    """Whether leases can live in this broker (RabbitMQ or Redis; not memory or sentinel)."""
    return _scheme(broker_url) in _AMQP_SCHEMES + _REDIS_SCHEMES


def store_for(broker_url: str, *, ttl: float, name: str) -> LeaseStore:
    """The store for ``broker_url``.

    Args:
        broker_url: the Celery broker URL.
        ttl: seconds a lease lives without renewal (Redis) or between AMQP heartbeats.
        name: this holder's name, shown on the broker's connection list.

    Raises:
        ValueError: the broker is neither RabbitMQ nor Redis (see :func:`supports`).
    """
    scheme = _scheme(broker_url)
    if scheme in _REDIS_SCHEMES:
        return RedisLeaseStore(broker_url, ttl=ttl)
    if scheme in _AMQP_SCHEMES:
        return AmqpLeaseStore(broker_url, ttl=ttl, name=name)
    raise ValueError(f"no fleet lease on a {scheme!r} broker; accepted: amqp, redis")


def _scheme(url: str) -> str:
    return urlsplit(url).scheme.split("+", 1)[0]


def describe_broker(url: str) -> str:
    """The broker URL without credentials, for logs."""
    return str(sanitize_url(url))


class RedisLeaseStore:
    """Leases as Redis keys with a TTL, renewed by the holder's heartbeat."""

    kind = "redis"

    def __init__(self, url: str, *, ttl: float) -> None:
        self.ttl_ms = max(1, int(ttl * 1000))
        self._client = redis_client(url)  # the heartbeat is the retry
        self._take = self._client.register_script(_TAKE)
        self._release = self._client.register_script(_RELEASE)

    def take(self, fingerprint: str, record: str, replace: str = "") -> str:
        try:
            current = self._take(keys=[KEY_PREFIX + fingerprint], args=[record, self.ttl_ms, replace])
        except redis.RedisError as e:
            raise BrokerUnreachable(f"{type(e).__name__}: {e}") from e
        return current.decode() if isinstance(current, bytes) else str(current)

    def peek(self, fingerprint: str) -> str:
        try:
            current = self._client.get(KEY_PREFIX + fingerprint)
        except redis.RedisError as e:
            raise BrokerUnreachable(f"{type(e).__name__}: {e}") from e
        return "" if current is None else current.decode() if isinstance(current, bytes) else str(current)

    def release(self, fingerprint: str, record: str) -> None:
        try:
            self._release(keys=[KEY_PREFIX + fingerprint], args=[record])
        except redis.RedisError:
            pass  # it expires by itself within the TTL

    def close(self) -> None:
        try:
            self._client.close()
        except redis.RedisError:
            pass

    def close_inherited(self) -> None:
        # redis-py's pool notices the fork and opens its own connections; a child never renews.
        pass


class AmqpLeaseStore:
    """Leases as exclusive queues on one dedicated connection; the broker drops them with it."""

    kind = "rabbitmq"

    def __init__(self, url: str, *, ttl: float, name: str) -> None:
        self.url = url
        self.ttl = ttl
        self.name = name
        self._connection: Any = None
        self._channel: Any = None
        self._held: set[str] = set()

    # -- connection -----------------------------------------------------------------------

    def _connect(self) -> Any:
        if self._connection is not None and self._connection.connected:
            return self._connection
        self._drop()
        connection = amqp_connect(self.url, name=f"codex-agent lease {self.name}", heartbeat=self.ttl)
        self._connection = connection
        return connection

    def _drop(self) -> None:
        """Forget a dead connection: its exclusive queues went with it."""
        connection, self._connection, self._channel = self._connection, None, None
        self._held.clear()
        if connection is not None:
            _quietly(connection.release)

    def _call(self, what: Any) -> Any:
        """Run ``what(connection)``, once more on a new connection if the old one died.

        A dropped connection (the broker closed it, or restarted) took our exclusive queues with
        it; the second try declares them again. Failing twice is BrokerUnreachable.
        """
        for attempt in (1, 2):
            connection = self._connect()
            try:
                connection.heartbeat_check()
                return what(connection)
            except tuple(connection.connection_errors) + (socket.timeout, OSError) as e:
                self._drop()
                if attempt == 2:
                    raise BrokerUnreachable(f"{type(e).__name__}: {e}") from e
        raise AssertionError("unreachable")

    def _on_channel(self, connection: Any, method: str, **kwargs: Any) -> int | None:
        """Call a channel method; returns the AMQP reply code of a channel error, None on success.

        A channel error closes the channel (never the connection), so the next call opens another.
        """
        if self._channel is None or not self._channel.is_open:
            self._channel = connection.channel()
        try:
            getattr(self._channel, method)(**kwargs)
        except tuple(connection.channel_errors) as e:
            self._channel = None
            return int(getattr(e, "reply_code", 0) or 0)
        return None

    # -- leases ---------------------------------------------------------------------------

    def take(self, fingerprint: str, record: str, replace: str = "") -> str:
        del replace  # a dead holder's queue is already gone: the broker saw its connection close
        return str(self._call(lambda connection: self._take(connection, fingerprint, record)))

    def _take(self, connection: Any, fingerprint: str, record: str) -> str:
        lease, holder = KEY_PREFIX + fingerprint, HOLDER_PREFIX + fingerprint
        if fingerprint in self._held:
            # Renewal: a round trip proves the connection, hence the exclusive queue, still lives;
            # declaring the holder queue again keeps it from expiring.
            self._on_channel(connection, "queue_declare", queue=holder, auto_delete=False, arguments=_HOLDER_ARGS)
            return ""
        code = self._on_channel(connection, "queue_declare", queue=lease, exclusive=True, auto_delete=True)
        if code == _RESOURCE_LOCKED:
            return self._read_holder(connection, holder)
        if code is not None:
            raise BrokerUnreachable(f"declaring {lease}: AMQP reply {code}")
        self._held.add(fingerprint)
        # Best effort: without it a refusal says "unknown holder", the lease itself stands.
        if (
            self._on_channel(connection, "queue_declare", queue=holder, auto_delete=False, arguments=_HOLDER_ARGS)
            is None
        ):
            message = self._channel.prepare_message(
                record.encode(), content_type="application/json", content_encoding="utf-8"
            )
            self._on_channel(connection, "basic_publish", msg=message, exchange="", routing_key=holder)
        return ""

    def peek(self, fingerprint: str) -> str:
        if fingerprint in self._held:
            return ""
        return str(self._call(lambda connection: self._peek(connection, fingerprint)))

    def _peek(self, connection: Any, fingerprint: str) -> str:
        code = self._on_channel(connection, "queue_declare", queue=KEY_PREFIX + fingerprint, passive=True)
        if code is None or code == _NOT_FOUND:
            return ""
        if code == _RESOURCE_LOCKED:
            return self._read_holder(connection, HOLDER_PREFIX + fingerprint)
        raise BrokerUnreachable(f"looking at {KEY_PREFIX + fingerprint}: AMQP reply {code}")

    def _read_holder(self, connection: Any, holder: str, attempts: int = 10) -> str:
        """The holder's record, read and put back; ``"{}"`` when it has not published it yet."""
        channel = connection.channel()
        try:
            for _ in range(attempts):  # a holder publishes its record right after taking the lease
                message = channel.basic_get(queue=holder, no_ack=False)
                if message is not None:
                    channel.basic_reject(message.delivery_tag, requeue=True)
                    body = message.body
                    return body.decode() if isinstance(body, bytes) else str(body)
                time.sleep(0.05)
            return "{}"
        except tuple(connection.channel_errors):
            return "{}"  # no holder queue (yet): the holder is unknown, the refusal stands
        finally:
            _quietly(channel.close)

    def release(self, fingerprint: str, record: str) -> None:
        del record
        if fingerprint not in self._held or self._connection is None:
            return
        self._held.discard(fingerprint)
        # The holder queue first: once the lease is free, that queue is the next holder's.
        for queue in (HOLDER_PREFIX + fingerprint, KEY_PREFIX + fingerprint):
            _quietly(lambda queue=queue: self._on_channel(self._connection, "queue_delete", queue=queue))

    def close(self) -> None:
        for fingerprint in list(self._held):
            self.release(fingerprint, "")
        self._drop()

    def close_inherited(self) -> None:
        """Close this child's copy of the socket, never the connection itself.

        A pool child forked after the lease was taken shares the parent's socket. Were it to
        keep the copy open, the broker would not see the parent's ``kill -9`` and the lease
        would outlive its holder. Closing only the descriptor sends nothing to the broker.
        """
        connection, self._connection, self._channel = self._connection, None, None
        self._held.clear()
        close_socket_copy(connection)
