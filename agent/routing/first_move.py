"""Sharded mode, ``CODEX_MOVE_FIRST_PHASE=on``: a run's first phase leaves a login held at its usage limit.

In sharded mode a run's affinity key fixes its shard, so while that shard's login is held at its
usage limit (CODEX-E036) every new run routed there waits for the reset. With the option on, the
router moves a run's *first* phase (no pin yet: no Codex session exists anywhere) to the open shard
with the most headroom, and pins it there (:data:`~agent.settings.topology.PIN_ARG`), so its later phases
follow. A phase that carries a pin, or is published from inside a running Codex task, never moves:
its session lives on its shard.

The facts come from where the agents already publish them: the fleet board in the broker
(:mod:`agent.fleet.roster`), each worker's gate, its standing limit (``limited_until``) and its used
percent per window. One read serves the decisions of :data:`BOARD_TTL` seconds. When the board
cannot be read, or no other shard is open, the phase keeps its affinity shard and waits there, as
with the option off: a task is never dropped or failed by this choice.

Pure choice (:func:`choose_shard`) and the caching reader (:class:`FirstPhaseMover`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import structlog

from agent.errors import FleetUnreadableError
from agent.fleet.roster import FleetEntry, FleetReport, read_fleet
from agent.login.usage import utc
from agent.settings.topology import Topology

__all__ = ["BOARD_TTL", "ROUTE_MOVED", "ROUTE_KEPT", "Move", "choose_shard", "FirstPhaseMover", "mover_for"]

log = structlog.get_logger(__name__)

BOARD_TTL = 2.0
"""Seconds one board read serves routing decisions (a publisher sending many runs reads it once)."""

ROUTE_MOVED = "codex.route.moved"
"""Audit line: a run's first phase moved from its limited affinity shard, pinned to another."""

ROUTE_KEPT = "codex.route.kept"
"""Audit line: a first phase's shard is limited, but it stays (no open shard, or no board)."""


@dataclass(frozen=True)
class Move:
    """Where a first phase goes instead of its limited shard, and why."""

    to_shard: int
    limited_until: float
    """The affinity shard's reset time (its login is held until then)."""
    used_5h: float | None
    used_weekly: float | None
    """The chosen shard's used percent per window, as its worker last posted them."""


def _live(entries: Sequence[FleetEntry], shard: int) -> list[FleetEntry]:
    return [e for e in entries if e.shard == shard and e.codex_worker and e.gate != "stopped"]


def _limited_until(entry: FleetEntry, now: float) -> float | None:
    return entry.limited_until if entry.limited_until is not None and entry.limited_until > now else None


def _used(entry: FleetEntry) -> float | None:
    known = [u for u in (entry.used_5h, entry.used_weekly) if u is not None]
    return max(known) if known else None


def choose_shard(entries: Sequence[FleetEntry], own: int, shards: int, now: float) -> Move | int | None:
    """The shard a first phase routed to ``own`` should go to.

    Returns:
        a :class:`Move` when ``own`` is limited and another shard is open; the ``own`` shard when
        ``own`` is limited and no other shard is open (the phase waits there); None when ``own``
        is not limited (or nothing is known of it): route as usual.

    ``own`` is limited when it has live workers on the board and every one is held at its usage
    limit. A candidate is a shard below ``shards`` with a live worker whose gate is open, that is
    not limited and has not used a whole window; the one with the most headroom (100 minus its
    most used window) wins, a shard whose numbers are unknown ranks after every known one, and a
    tie goes to the lower shard number (every publisher decides alike).
    """
    mine = _live(entries, own)
    resets = [_limited_until(e, now) for e in mine]
    if not mine or any(r is None for r in resets):
        return None
    until = min(r for r in resets if r is not None)
    best: tuple[tuple[int, float, int], FleetEntry] | None = None
    for shard in range(shards):
        if shard == own:
            continue
        for entry in _live(entries, shard):
            used = _used(entry)
            if entry.gate != "open" or _limited_until(entry, now) is not None or (used is not None and used >= 100):
                continue
            rank = (0, used, shard) if used is not None else (1, 0.0, shard)
            if best is None or rank < best[0]:
                best = (rank, entry)
    if best is None:
        return own
    chosen = best[1]
    assert chosen.shard is not None
    return Move(chosen.shard, until, chosen.used_5h, chosen.used_weekly)


class FirstPhaseMover:
    """Decides, at publish time, whether a first phase leaves its limited shard (module docstring).

    Args:
        broker_url: where the fleet board lives (the broker the workers share).
        shards: the topology's shard count.
        reader: reads the board (:func:`agent.fleet.roster.read_fleet`; tests and the bench give their own).
        ttl: seconds one read serves.
    """

    def __init__(
        self,
        broker_url: str,
        shards: int,
        *,
        reader: Callable[[str, int], FleetReport] = read_fleet,
        ttl: float = BOARD_TTL,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.broker_url = broker_url
        self.shards = shards
        self.reader = reader
        self.ttl = ttl
        self.clock = clock
        self.reads = 0
        self._lock = threading.Lock()
        self._board: tuple[float, list[FleetEntry] | None, str | None] | None = None
        """(read at, entries or None when unreadable, why unreadable)."""

    def _entries(self) -> list[FleetEntry] | None:
        with self._lock:
            now = self.clock()
            if self._board is None or now - self._board[0] >= self.ttl:
                self.reads += 1
                try:
                    entries: list[FleetEntry] | None = self.reader(self.broker_url, self.shards).entries
                    self._board = (now, entries, None)
                except FleetUnreadableError as e:
                    self._board = (now, None, e.message)
                except Exception as e:  # routing must never fail on the board: keep the affinity shard
                    self._board = (now, None, f"{type(e).__name__}: {e}")
                if self._board[1] is None:
                    log.warning(
                        ROUTE_KEPT, reason="fleet board unreadable: first phases keep their shard", cause=self._board[2]
                    )
            return self._board[1]

    def target(self, own: int, *, task: str, run_id: object = None) -> int:
        """The shard a first phase routed to ``own`` goes to: another when ``own`` is limited and one is
        open (pinned there by the caller), else ``own``. Never raises."""
        entries = self._entries()
        if entries is None:
            return own  # unreadable board: route as with the option off (a limited shard holds the work)
        now = self.clock()
        choice = choose_shard(entries, own, self.shards, now)
        if choice is None:
            return own
        if isinstance(choice, Move):
            topology = Topology(self.shards)
            log.warning(
                ROUTE_MOVED,
                task=task,
                run_id=run_id,
                from_queue=topology.shard_queue(own),
                queue=topology.shard_queue(choice.to_shard),
                from_shard=own,
                shard=choice.to_shard,
                reason="usage limit (CODEX-E036)",
                limited_until=utc(choice.limited_until),
                used_5h=choice.used_5h,
                used_weekly=choice.used_weekly,
            )
            return choice.to_shard
        log.info(
            ROUTE_KEPT,
            task=task,
            run_id=run_id,
            queue=Topology(self.shards).shard_queue(own),
            shard=own,
            reason="usage limit (CODEX-E036), and no other shard open: it waits for the reset",
        )
        return own


_MOVERS: dict[tuple[str, int], FirstPhaseMover] = {}
_MOVERS_LOCK = threading.Lock()


def mover_for(broker_url: str, shards: int) -> FirstPhaseMover:
    """The process's one mover for a broker and shard count, so that every router (an app's own, and
    the one :func:`agent.routing.router.routed_options` makes per publish for a bare app) shares one board read."""
    with _MOVERS_LOCK:
        mover = _MOVERS.get((broker_url, shards))
        if mover is None:
            mover = _MOVERS[(broker_url, shards)] = FirstPhaseMover(broker_url, shards)
        return mover
