"""The agent's own broker connections (fleet lease, fleet board), apart from Celery's.

Both keep one short-timeout connection per worker process and must never hold a check up long, nor
survive into a forked pool child (a child's copy of the socket would keep the parent's exclusive
queues alive after a ``kill -9``). These helpers open and drop them the same way.
"""

from __future__ import annotations

import os
import socket
from typing import Any

import redis
from kombu import Connection
from redis.backoff import NoBackoff
from redis.retry import Retry

__all__ = ["CONNECT_TIMEOUT", "BrokerUnreachable", "amqp_connect", "close_socket_copy", "quietly", "redis_client"]

CONNECT_TIMEOUT = 2.0
"""Seconds to wait for the broker before a round counts as "broker unreachable"."""


class BrokerUnreachable(ConnectionError):
    """The broker did not answer; the caller keeps its last state.

    Internal: it never reaches an operator as an error, only as a log line (or, for a command,
    as the command's own error).
    """


def redis_client(url: str) -> redis.Redis:
    """A client that fails fast: one immediate retry (a pooled connection that died with a
    restarted server), no backoff; the caller's next round is the retry."""
    return redis.Redis.from_url(
        url, socket_connect_timeout=CONNECT_TIMEOUT, socket_timeout=CONNECT_TIMEOUT, retry=Retry(NoBackoff(), 1)
    )


def amqp_connect(url: str, *, name: str, heartbeat: float | None = None) -> Any:
    """A connected kombu connection named ``name`` on the broker's connection list.

    Raises:
        BrokerUnreachable: the broker did not answer within :data:`CONNECT_TIMEOUT`.
    """
    connection = Connection(
        url,
        connect_timeout=CONNECT_TIMEOUT,
        heartbeat=heartbeat,
        transport_options={"client_properties": {"connection_name": name}},
    )
    try:
        connection.ensure_connection(max_retries=0)
    except Exception as e:  # kombu wraps every transport failure differently per version
        quietly(connection.release)
        raise BrokerUnreachable(f"{type(e).__name__}: {e}") from e
    return connection


def close_socket_copy(connection: Any) -> None:
    """In a forked child: close this process's copy of ``connection``'s socket, nothing more.

    Closing only the descriptor sends nothing to the broker, so the parent's connection (and the
    exclusive queues on it) lives on, and dies with the parent.
    """
    sock = getattr(getattr(getattr(connection, "connection", None), "transport", None), "sock", None)
    if isinstance(sock, socket.socket):
        quietly(lambda: os.close(sock.detach()))


def quietly(call: Any) -> None:
    """Call ``call``, ignoring any error (best effort on a connection that may be gone)."""
    try:
        call()
    except Exception:  # noqa: BLE001
        pass
