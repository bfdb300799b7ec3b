"""agent.settings.topology: jump consistent hash over a stable digest."""

from __future__ import annotations

import statistics
import subprocess
import sys
from collections import Counter
from typing import Any

import pytest

from agent.errors import RoutingError
from agent.settings.topology import Topology, jump_hash, key_digest, reshard_plan, shard_for

KEYS = [f"github.com/org/repo-{i}" for i in range(10_000)]


class TestShardFor:
    @pytest.mark.parametrize(
        ("key", "digest"),
        [("repo-a", key_digest("repo-a")), ("", key_digest(""))],
        ids=["plain", "empty-digest"],
    )
    def test_digest_is_64_bit(self, key: str, digest: int) -> None:
        """Digests fit in 64 bits and do not depend on Python's hash seed."""
        assert 0 <= digest < 2**64

    def test_known_values_are_stable(self) -> None:
        """Fixed keys map to fixed shards (a change here reroutes live runs)."""
        keys = ("repo-a", "repo-b", "repo-c", "project/42")
        assert [shard_for(k, 3) for k in keys] == [0, 1, 0, 0]
        assert [shard_for(k, 10) for k in keys] == [3, 1, 0, 7]
        assert [jump_hash(d, 1000) for d in (1, 2**40, 2**64 - 1)] == [549, 145, 313]
        assert all(jump_hash(d, 1) == 0 for d in (1, 2**63, 2**64 - 1))

    def test_same_in_another_process(self) -> None:
        """10,000 keys map the same in a separate interpreter with another hash seed."""
        here = [shard_for(k, 3) for k in KEYS]
        code = (
            "import sys; from agent.settings.topology import shard_for\n"
            "keys=[f'github.com/org/repo-{i}' for i in range(10000)]\n"
            "sys.stdout.write(''.join(str(shard_for(k,3)) for k in keys))"
        )
        for seed in ("1", "4242"):
            out = subprocess.run(
                [sys.executable, "-c", code],
                capture_output=True,
                text=True,
                check=True,
                env={"PYTHONHASHSEED": seed, "PATH": "/usr/bin:/bin"},
            ).stdout
            assert out == "".join(map(str, here))

    def test_balance_within_five_percent(self) -> None:
        """10k keys over 3 shards: the fullest shard is at most 5% above the mean."""
        counts = Counter(shard_for(k, 3) for k in KEYS)
        assert set(counts) == {0, 1, 2}
        assert max(counts.values()) / statistics.mean(counts.values()) <= 1.05

    @pytest.mark.parametrize(("old", "new"), [(3, 4), (4, 5), (1, 2), (8, 9)], ids=str)
    def test_growing_moves_about_one_in_n_plus_one(self, old: int, new: int) -> None:
        """Growing N -> N+1 moves ~1/(N+1) of keys, and only onto the new shard."""
        plan = reshard_plan(KEYS, old, new)
        ideal = 1 / new
        assert abs(plan.moved_fraction - ideal) <= 0.02
        assert {after for _, _, after in plan.moves} == {new - 1}

    def test_modulo_would_move_far_more(self) -> None:
        """The baseline we avoid: modulo moves ~3/4 of keys from 3 to 4 shards."""
        moved = sum(1 for k in KEYS if key_digest(k) % 3 != key_digest(k) % 4)
        assert moved / len(KEYS) > 0.6 > reshard_plan(KEYS, 3, 4).moved_fraction

    @pytest.mark.parametrize(
        ("key", "shards"), [("", 3), ("repo", 0), ("repo", -1)], ids=["empty-key", "zero", "negative"]
    )
    def test_rejects_unusable_input(self, key: str, shards: int) -> None:
        """An empty key or a shard count below 1 is CODEX-E050 saying what was wrong."""
        with pytest.raises(RoutingError) as info:
            shard_for(key, shards)
        assert info.value.code == "CODEX-E050"
        assert ("key" in info.value.message) or ("shard count" in info.value.message)


class TestTopology:
    def test_each_shard_has_its_own_queue_in_both_modes(self) -> None:
        """codex-{n} is consumed only by shard n's worker; single mode adds the shared `codex`."""
        assert Topology(3).worker_queues(2) == ("codex-2",)
        assert Topology(3, "single").worker_queues(2) == ("codex", "codex-2")
        assert Topology(2).codex_queues() == ("codex-0", "codex-1")
        assert Topology(2, "single").codex_queues() == ("codex", "codex-0", "codex-1")

    @pytest.mark.parametrize(
        ("mode", "kwargs", "queue"),
        [
            ("sharded", {"affinity_key": "repo-a"}, f"codex-{shard_for('repo-a', 3)}"),
            ("single", {"affinity_key": "repo-a"}, "codex"),
            ("sharded", {"affinity_key": "repo-a", "codex_shard": 1}, "codex-1"),
            ("single", {"affinity_key": "repo-a", "codex_shard": 1}, "codex-1"),
        ],
        ids=["sharded-by-key", "single-new-run", "sharded-pinned", "single-pinned"],
    )
    def test_route(self, mode: Any, kwargs: dict[str, Any], queue: str) -> None:
        """A pin goes to its shard's own queue in both modes: a run stays on one login."""
        assert Topology(3, mode).route(kwargs) == queue

    @pytest.mark.parametrize(
        "pin", [3, 99, -1, True, "1", 1.0], ids=["count", "far", "negative", "bool", "str", "float"]
    )
    def test_a_pin_outside_the_shards_is_e050_naming_pin_and_count(self, pin: object) -> None:
        """Never a stranded task: a pin with no worker is refused at publish time."""
        with pytest.raises(RoutingError) as refused:
            Topology(3).route({"affinity_key": "k", "codex_shard": pin})
        assert refused.value.code == "CODEX-E050" and "there are 3" in refused.value.message

    def test_drain_reroutes_a_dead_pin_by_its_key(self) -> None:
        """Where the router refuses a pin at or above the count, the drain re-routes it by key."""
        assert (
            Topology(3).drain_target({"affinity_key": "repo-a", "codex_shard": 5}) == f"codex-{shard_for('repo-a', 3)}"
        )

    @pytest.mark.parametrize(("shards", "mode"), [(0, "sharded"), (2, "both")], ids=["no-shards", "bad-mode"])
    def test_a_bad_topology_is_e050(self, shards: int, mode: Any) -> None:
        with pytest.raises(RoutingError):
            Topology(shards, mode)
