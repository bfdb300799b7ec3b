"""Every queue rule in one place: the :class:`Topology`, and the jump hash it routes with.

Same key, same shard, in every process and on every machine (so not Python's salted ``hash()``),
and growing from N to N+1 shards moves only about 1/(N+1) of the keys (so not modulo).

The topology is built from the shard count and the queue mode, and answers everything that names
a queue: which queues exist, which a worker consumes, where a task goes (its pin, or its affinity
key), where a drained task goes, and what ``route``/``reshard-plan`` print. Each shard has a queue
only its worker consumes, ``codex-N``, in both modes:

* ``sharded``: a run's first phase goes to ``codex-N`` by the hash of its affinity key;
* ``single``: a run's first phase goes to the shared ``codex`` queue, which every Codex worker also
  consumes (load balance for new runs); the worker that takes it pins the later phases to its own
  ``codex-N`` (affinity within a run: one login, one CODEX_HOME with the run's Codex session).

Pure; the Celery router that uses it lives in :mod:`agent.routing.router`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from agent.errors import RoutingError
from agent.settings import defaults

__all__ = [
    "PIN_ARG",
    "DEFAULT_AFFINITY_ARG",
    "QueueMode",
    "Topology",
    "key_digest",
    "jump_hash",
    "shard_for",
    "ReshardPlan",
    "reshard_plan",
]

QueueMode = Literal["sharded", "single"]

PIN_ARG = "codex_shard"
"""Keyword argument that pins a run's later phases to the shard of its first phase."""

DEFAULT_AFFINITY_ARG = "affinity_key"
"""Keyword argument holding the affinity key when the task class does not name another."""

_MASK64 = (1 << 64) - 1
_JUMP_MULTIPLIER = 2862933555777941757  # Lamping & Veach, "A Fast, Minimal Memory, Consistent Hash"


def key_digest(key: str) -> int:
    """A stable unsigned 64-bit digest of ``key`` (BLAKE2b)."""
    return int.from_bytes(hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest(), "big")


def jump_hash(digest: int, buckets: int) -> int:
    """Jump consistent hash: the bucket in ``[0, buckets)`` for a 64-bit ``digest``."""
    bucket, candidate = -1, 0
    while candidate < buckets:
        bucket = candidate
        digest = (digest * _JUMP_MULTIPLIER + 1) & _MASK64
        candidate = int((bucket + 1) * ((1 << 31) / ((digest >> 33) + 1)))
    return bucket


def shard_for(key: str, shards: int) -> int:
    """The shard for an affinity key.

    Raises:
        RoutingError: the key is empty or ``shards`` is below 1.
    """
    if not isinstance(key, str) or not key:
        raise RoutingError(cause=f"affinity key must be a non-empty string, got {key!r}")
    if shards < 1:
        raise RoutingError(cause=f"shard count must be >= 1, got {shards}")
    return jump_hash(key_digest(key), shards)


@dataclass(frozen=True)
class Topology:
    """The queues of ``shards`` Codex shards in ``mode``, and where each task goes.

    Raises:
        RoutingError: ``shards`` below 1 or an unknown mode (CODEX-E050).
    """

    shards: int
    mode: QueueMode = "sharded"

    def __post_init__(self) -> None:
        if isinstance(self.shards, bool) or not isinstance(self.shards, int) or self.shards < 1:
            raise RoutingError(cause=f"shard count must be an integer >= 1, got {self.shards!r}")
        if self.mode not in ("sharded", "single"):
            raise RoutingError(cause=f"queue mode must be sharded or single, got {self.mode!r}")

    def shard_queue(self, index: int) -> str:
        """The queue only shard ``index``'s worker consumes (both modes)."""
        return defaults.SHARDED_QUEUE_TEMPLATE.format(index=index)

    @property
    def shared_queue(self) -> str | None:
        """The queue every Codex worker consumes in single mode; None in sharded mode."""
        return defaults.SINGLE_QUEUE if self.mode == "single" else None

    def worker_queues(self, index: int) -> tuple[str, ...]:
        """The Codex queues shard ``index``'s worker consumes: its own, and the shared one in single mode."""
        own = self.shard_queue(index)
        return (self.shared_queue, own) if self.shared_queue else (own,)

    def codex_queues(self) -> tuple[str, ...]:
        """Every Codex queue of this topology, as apps declare them."""
        own = tuple(self.shard_queue(i) for i in range(self.shards))
        return (self.shared_queue, *own) if self.shared_queue else own

    def live_queues(self) -> frozenset[str]:
        """Every queue that has workers, the default queue included."""
        return frozenset((*self.codex_queues(), defaults.DEFAULT_QUEUE))

    def pin(self, value: Any) -> int:
        """A pinned shard, checked against this topology.

        Raises:
            RoutingError: not a shard number below the shard count (CODEX-E050, naming both).
        """
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < self.shards:
            raise RoutingError(
                cause=f"{PIN_ARG}={value!r} names no shard: there are {self.shards} (0 to {self.shards - 1}); "
                "a run pinned to a removed shard must be drained (codex-agent drain)"
            )
        return value

    def shard_of(self, key: Any) -> int:
        """The shard of an affinity key (E050 for an empty or missing key)."""
        return shard_for(key, self.shards)

    def route(
        self, kwargs: Mapping[str, Any], affinity_arg: str = DEFAULT_AFFINITY_ARG, task: str = "a Codex task"
    ) -> str:
        """Where a Codex task goes: its pinned shard's queue, else by its affinity key.

        Raises:
            RoutingError: a bad pin, or no usable affinity key (CODEX-E050); nothing is sent.
        """
        if kwargs.get(PIN_ARG) is not None:
            return self.shard_queue(self.pin(kwargs[PIN_ARG]))
        if affinity_arg not in kwargs:
            raise RoutingError(
                cause=f"Codex task {task} needs the keyword argument {affinity_arg!r} (repo, project or token) to pick its shard"
            )
        shard = self.shard_of(kwargs[affinity_arg])
        return self.shared_queue or self.shard_queue(shard)

    def drain_target(self, kwargs: Mapping[str, Any], affinity_arg: str = DEFAULT_AFFINITY_ARG) -> str:
        """Where a waiting Codex task goes now: its pin while that shard exists, else by its key."""
        pinned = kwargs.get(PIN_ARG)
        if isinstance(pinned, int) and not isinstance(pinned, bool) and 0 <= pinned < self.shards:
            return self.shard_queue(pinned)
        return self.route({k: v for k, v in kwargs.items() if k != PIN_ARG}, affinity_arg)


@dataclass(frozen=True)
class ReshardPlan:
    """What changes when the shard count goes from ``old`` to ``new``."""

    old: int
    new: int
    total: int
    moves: tuple[tuple[str, int, int], ...]
    """(key, old shard, new shard) for every key that moves."""

    @property
    def moved_fraction(self) -> float:
        """Share of keys that change shard."""
        return len(self.moves) / self.total if self.total else 0.0

    def to_dict(self, with_moves: bool = True) -> dict[str, Any]:
        """JSON-safe view; ``with_moves`` lists every key that moves."""
        return {
            "from": self.old,
            "to": self.new,
            "keys": self.total,
            "moved": len(self.moves),
            "moved_fraction": round(self.moved_fraction, 4),
            "moves": [{"key": k, "from": a, "to": b} for k, a, b in self.moves] if with_moves else [],
        }


def reshard_plan(keys: Iterable[str], old: int, new: int) -> ReshardPlan:
    """Which of ``keys`` move when the shard count changes from ``old`` to ``new``."""
    total = 0
    moves: list[tuple[str, int, int]] = []
    for key in keys:
        total += 1
        before, after = shard_for(key, old), shard_for(key, new)
        if before != after:
            moves.append((key, before, after))
    return ReshardPlan(old=old, new=new, total=total, moves=tuple(moves))
