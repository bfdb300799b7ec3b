"""Deterministic shard routing: jump consistent hash over a stable 64-bit digest.

Same key, same shard, in every process and on every machine (so not Python's salted ``hash()``),
and growing from N to N+1 shards moves only about 1/(N+1) of the keys (so not modulo). Pure
functions; the Celery router that uses them lives in :mod:`agent.router`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

from agent import defaults
from agent.errors import RoutingError

__all__ = [
    "key_digest",
    "jump_hash",
    "shard_for",
    "queue_for_shard",
    "ReshardPlan",
    "reshard_plan",
]

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


def queue_for_shard(index: int, mode: str = defaults.QUEUE_MODE) -> str:
    """The queue name of shard ``index`` in ``mode`` (``sharded`` or ``single``)."""
    if mode == "single":
        return defaults.SINGLE_QUEUE
    return defaults.SHARDED_QUEUE_TEMPLATE.format(index=index)


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
