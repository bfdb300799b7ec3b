"""``codex-agent fleet``: every shard's state across hosts, as the agents post it to the broker.

Each agent posts a small :class:`FleetEntry` (names, gate, codes: no secret, no path to a token)
whenever its published state changes and every third of :data:`FLEET_TTL` besides, on a
background thread, so a check never waits for the broker. A clean stop posts ``stopped``; a worker
killed with ``kill -9`` stops renewing and its entry expires after :data:`FLEET_TTL`; a stopped
one stays :data:`STOPPED_TTL`. The reader
needs the broker only: no Docker access to any host.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import structlog

from agent.errors import FleetUnreadableError
from agent.fleet.board import Board, board_for, supports
from agent.fleet.broker_link import BrokerUnreachable
from agent.fleet.lease_store import describe_broker
from agent.fleet.state import AgentState
from agent.settings.config import AgentConfig
from agent.util.records import FieldTypes, field_defaults, field_types, parse_record

__all__ = [
    "FLEET_TTL",
    "STOPPED_TTL",
    "FleetEntry",
    "FleetPublisher",
    "FleetReport",
    "ShardRow",
    "publisher_for",
    "read_fleet",
]

FLEET_TTL = 15.0
"""Seconds an entry lives without renewal; the publisher renews every third of it."""

STOPPED_TTL = 4 * FLEET_TTL
"""Seconds a cleanly stopped worker's last entry (gate ``stopped``) stays on the board."""

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class FleetEntry:
    """One worker's state as the fleet sees it."""

    worker: str
    host: str
    pid: int
    codex_worker: bool
    gate: str
    gate_since: float
    shard: int | None
    queue: str | None
    volume: str | None
    codes: list[str] = field(default_factory=list)
    posted_at: float = 0.0
    used_5h: float | None = None
    used_weekly: float | None = None
    limited_until: float | None = None
    """The login's headroom (percent used per window) and, while it is held at its usage limit
    (CODEX-E036), its reset time."""

    @classmethod
    def from_state(cls, state: AgentState, host: str) -> FleetEntry:
        """The entry for a published state (the reasons reduced to their codes)."""
        view = state.usage or {}
        limit = view.get("limit") if view.get("limited") else None

        def number(value: Any) -> float | None:
            return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None

        return cls(
            worker=state.worker,
            host=host,
            pid=state.pid,
            codex_worker=state.codex_worker,
            gate=state.gate,
            gate_since=state.gate_since,
            shard=state.shard,
            queue=state.queue,
            volume=state.volume,
            codes=[str(r.get("code") or "?") for r in state.reason],
            used_5h=number(view.get("5h_used_percent")),
            used_weekly=number(view.get("weekly_used_percent")),
            limited_until=number(limit.get("resets_at")) if isinstance(limit, dict) else None,
        )

    @property
    def key(self) -> str:
        """Who posted it: host, worker name and pid. Worker names alone collide (containers on a host
        network share the host's name, the default worker name); a restart is a new key, whose old
        entry shows ``stopped`` or expires."""
        return f"{self.host}/{self.worker}/{self.pid}"

    def to_json(self) -> str:
        """The record posted to the broker."""
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: bytes | str) -> FleetEntry | None:
        """Parse a posted record, any bytes; None when it is not one of ours."""
        try:
            fields = parse_record(
                text,
                ENTRY_FIELDS,
                defaults=field_defaults(FleetEntry),
            )
        except ValueError:
            return None
        return cls(**fields) if all(isinstance(code, str) for code in fields["codes"]) else None

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe view."""
        return asdict(self)


ENTRY_FIELDS: FieldTypes = field_types(FleetEntry)
"""What each field of a posted entry may hold (the broker is shared: anything may post)."""


class FleetPublisher:
    """Posts one worker's entry to the broker, and keeps it alive, from a daemon thread.

    Args:
        board: the broker side (:func:`agent.fleet.board.board_for`).
        broker: the broker without credentials, for logs.
        ttl: seconds an entry lives without renewal.
    """

    def __init__(self, board: Board, *, broker: str, ttl: float = FLEET_TTL) -> None:
        self.board = board
        self.broker = broker
        self.ttl = ttl
        self.host = socket.gethostname()
        self.posts = 0
        self._entry: FleetEntry | None = None
        self._lock = threading.Lock()
        """Guards the entry only: publish() never waits for a post in flight."""
        self._posting = threading.Lock()
        """One post at a time (the thread, or close())."""
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._reachable = True

    name = "codex-fleet-post"

    def start(self) -> None:
        """Start the thread that posts and renews the entry (once)."""
        with self._lock:
            if self._thread is None and not self._stop.is_set():
                self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                self._thread.start()

    def publish(self, state: AgentState) -> None:
        """Post ``state`` soon (never blocks on the broker)."""
        with self._lock:
            self._entry = FleetEntry.from_state(state, self.host)
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            self._post()
            self._wake.wait(self.ttl / 3)

    def _post(self) -> None:
        with self._lock:
            entry = self._entry
        if entry is None:
            return
        with self._posting:
            record = FleetEntry(**{**asdict(entry), "posted_at": time.time()})
            try:
                ttl = self.ttl * STOPPED_TTL / FLEET_TTL if entry.gate == "stopped" else self.ttl
                self.board.post(entry.key, record.to_json(), ttl)
            except BrokerUnreachable as e:
                if self._reachable:
                    log.warning("codex.fleet.unreachable", broker=self.broker, cause=str(e))
                self._reachable = False
                return
            except Exception:  # the thread must outlive any surprise; the next tick retries
                log.exception("codex.fleet.post_error", broker=self.broker)
                return
            if not self._reachable:
                log.info("codex.fleet.reachable", broker=self.broker)
            self._reachable = True
            self.posts += 1

    def stop(self) -> None:
        """Post the last state (``stopped`` on a clean stop) at once, stop renewing; never raises."""
        self._stop.set()
        self._wake.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout=2 * 2.0 + 1)  # at most one post in flight (connect timeout, one retry)
        self._post()
        self.board.close()

    def close_inherited(self) -> None:
        """In a forked pool child: never post, and leave the parent's connection alone."""
        self._stop.set()
        self._thread = None
        self._lock, self._posting = threading.Lock(), threading.Lock()
        self.board.close_inherited()


class _NoPublisher:
    """A broker that cannot hold the board (memory, sentinel): nothing is posted."""

    name = "codex-fleet-post"

    def start(self) -> None:
        pass

    def publish(self, state: AgentState) -> None:
        del state

    def stop(self) -> None:
        pass

    def close_inherited(self) -> None:
        pass


def publisher_for(config: AgentConfig) -> FleetPublisher | _NoPublisher:
    """The worker's publisher; a no-op on a broker that cannot hold the board."""
    if not supports(config.broker_url):
        return _NoPublisher()
    board = board_for(config.broker_url, name=config.worker_name)
    return FleetPublisher(board, broker=describe_broker(config.broker_url))


@dataclass(frozen=True)
class ShardRow:
    """One shard of the fleet: its live workers, or none."""

    shard: int
    entries: list[FleetEntry]

    @property
    def status(self) -> str:
        """``open`` when a live worker consumes it, else ``closed``, ``stopped`` or ``missing``."""
        gates = {e.gate for e in self.entries}
        for gate in ("open", "closed", "stopped"):
            if gate in gates:
                return gate
        return "missing"

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe view."""
        return {"shard": self.shard, "status": self.status, "workers": [e.to_dict() for e in self.entries]}


@dataclass(frozen=True)
class FleetReport:
    """What the broker says about every worker, grouped by shard."""

    broker: str
    shards: int
    read_at: float
    entries: list[FleetEntry]

    @property
    def rows(self) -> list[ShardRow]:
        """Every shard from 0 to ``shards - 1``, and any other shard a worker posted."""
        numbers = sorted(set(range(self.shards)) | {e.shard for e in self.entries if e.shard is not None})
        return [ShardRow(n, [e for e in self.entries if e.shard == n]) for n in numbers]

    @property
    def others(self) -> list[FleetEntry]:
        """Workers that serve no shard."""
        return [e for e in self.entries if e.shard is None]

    @property
    def ok(self) -> bool:
        """Every shard is consumed by a live worker with an open gate."""
        return all(row.status == "open" for row in self.rows)

    def _live(self) -> list[FleetEntry]:
        return [e for e in self.entries if e.shard is not None and e.gate != "stopped"]

    @property
    def all_limited(self) -> bool:
        """Every live Codex worker's login is held at its usage limit (CODEX-E036)."""
        live = self._live()
        return bool(live) and all(e.limited_until is not None for e in live)

    @property
    def earliest_reset(self) -> float | None:
        """The soonest reset time of a limited login, None when none is limited."""
        resets = [e.limited_until for e in self._live() if e.limited_until is not None]
        return min(resets) if resets else None

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe view."""
        return {
            "ok": self.ok,
            "broker": self.broker,
            "shards": [row.to_dict() for row in self.rows],
            "others": [e.to_dict() for e in self.others],
            "read_at": self.read_at,
            "all_limited": self.all_limited,
            "earliest_reset": self.earliest_reset,
        }


def newest_per_worker(records: list[str]) -> list[FleetEntry]:
    """The newest entry of each worker process among ``records`` (unreadable ones skipped), by shard and name."""
    newest: dict[str, FleetEntry] = {}
    for record in records:
        entry = FleetEntry.from_json(record)
        if entry is not None and (entry.key not in newest or entry.posted_at >= newest[entry.key].posted_at):
            newest[entry.key] = entry
    return sorted(newest.values(), key=lambda e: (e.shard is None, e.shard or 0, e.worker, e.host, e.pid))


def read_fleet(broker_url: str, shards: int) -> FleetReport:
    """Read the board once.

    Raises:
        FleetUnreadableError: the broker cannot hold a board, or did not answer (CODEX-E070).
    """
    broker = describe_broker(broker_url)
    if not supports(broker_url):
        raise FleetUnreadableError(broker=broker, cause="the fleet board lives only in RabbitMQ or Redis")
    board = board_for(broker_url, name="reader")
    try:
        records = board.read()
    except BrokerUnreachable as e:
        raise FleetUnreadableError(broker=broker, cause=str(e)) from e
    finally:
        board.close()
    return FleetReport(broker, shards, time.time(), newest_per_worker(records))
