"""Background work of one worker process, with one lifetime protocol.

A worker runs five pieces of background work: the claim heartbeat, the lease heartbeat, the
volume watcher, the fleet-board poster and the job reconciler. Each is a :class:`Service`:
``start`` at ``worker_init`` (after the first checks), ``stop`` at ``worker_shutdown`` (in the
reverse order, so what a later service relies on is still there while it stops), and
``close_inherited`` in a forked pool child, which must drop the parent's threads and descriptors
without touching what they hold (a lock, a connection). :class:`Services` runs them as one.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Protocol

import structlog

__all__ = ["Service", "Services", "Heartbeat"]

log = structlog.get_logger(__name__)


class Service(Protocol):
    """Background work that lives as long as the worker process."""

    name: str

    def start(self) -> None:
        """Begin the work (once; a second call does nothing)."""

    def stop(self) -> None:
        """End the work on a clean stop; never raises."""

    def close_inherited(self) -> None:
        """In a forked child: drop inherited threads and descriptors, leaving the parent's state alone."""


class Heartbeat:
    """Calls ``tick`` every ``interval`` seconds on a daemon thread until stopped.

    The one heartbeat loop of the agent (claim marker, fleet lease). A tick that raises is logged
    as ``error_event`` and the next tick retries: a heartbeat outlives any surprise.

    Args:
        name: the thread's name and the service's.
        interval: seconds between ticks.
        tick: one beat.
        on_stop: runs after the thread ended, on :meth:`stop` (e.g. release what was kept alive).
        on_fork: runs in a forked child, on :meth:`close_inherited`.
        error_event: the log event for a tick that raised.
    """

    def __init__(
        self,
        name: str,
        interval: float,
        tick: Callable[[], object],
        *,
        on_stop: Callable[[], object] | None = None,
        on_fork: Callable[[], object] | None = None,
        error_event: str = "codex.heartbeat.error",
    ) -> None:
        self.name = name
        self.interval = interval
        self._tick = tick
        self._on_stop = on_stop
        self._on_fork = on_fork
        self._error_event = error_event
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(self._stop,), name=self.name, daemon=True)
        self._thread.start()

    def _run(self, stop: threading.Event) -> None:
        while not stop.wait(self.interval):
            try:
                self._tick()
            except Exception:  # the next tick retries
                log.exception(self._error_event, service=self.name)

    def stop(self) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)  # a tick in flight ends before what it renews is released
        if self._on_stop is not None:
            self._on_stop()

    def close_inherited(self) -> None:
        self._stop = threading.Event()
        self._thread = None  # threads do not survive fork
        if self._on_fork is not None:
            self._on_fork()


class Services:
    """The worker's services, started in order and stopped in the reverse order."""

    def __init__(self, services: Sequence[Service]) -> None:
        self.services = tuple(services)

    def start(self) -> None:
        for service in self.services:
            service.start()

    def stop(self) -> None:
        """Stop every service (also those never started, so what they keep is released); never raises."""
        for service in reversed(self.services):
            try:
                service.stop()
            except Exception:  # one service's failure must not keep the others running
                log.exception("codex.service.stop_error", service=service.name)

    def close_inherited(self) -> None:
        for service in self.services:
            service.close_inherited()
