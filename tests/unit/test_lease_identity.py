"""The pure parts of the fleet lease: the fingerprint history and the holder record."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.fleet.lease import HISTORY_FILE, FingerprintHistory, LeaseHolder, LeaseState
from agent.fleet.roster import FleetEntry
from agent.util.host import boot_id


class TestFingerprintHistory:
    @pytest.mark.parametrize(
        ("start", "refused", "current", "after", "dropped"),
        [
            ([], False, "f1", ["f1"], []),
            (["f1"], False, "f1", ["f1"], []),
            (["f1"], False, None, ["f1"], []),
            (["f1"], False, "f2", ["f1", "f2"], []),
            (["f1", "f2", "f3"], False, "f4", ["f2", "f3", "f4"], ["f1"]),
            (["f1", "f2"], True, "f9", ["f9"], ["f1", "f2"]),
            (["f1", "f2"], True, "f2", ["f1", "f2"], []),
        ],
        ids=[
            "first",
            "unchanged",
            "logged-out",
            "refresh-kept",
            "bounded",
            "afresh-after-refusal",
            "refused-unchanged",
        ],
    )
    def test_observe(
        self, start: list[str], refused: bool, current: str | None, after: list[str], dropped: list[str]
    ) -> None:
        """A held login keeps every fingerprint (the newest few); a refused one starts over when it changes."""
        history = FingerprintHistory(list(start), refused=refused, keep=3)
        assert history.observe(current) == dropped
        assert history.fingerprints == after

    def test_load_reads_what_was_saved_and_tolerates_garbage(self, tmp_path: Path) -> None:
        """The file round-trips; a corrupt one is an empty history, never an exception."""
        (tmp_path / HISTORY_FILE).write_text(json.dumps(FingerprintHistory(["a", "b"], refused=True).to_dict()))
        loaded = FingerprintHistory.load(tmp_path)
        assert (loaded.fingerprints, loaded.refused) == (["a", "b"], True)
        for junk in ("{", "[]", '{"fingerprints": 3}', '{"fingerprints": [1, "x"]}', "[" * 100_000):
            (tmp_path / HISTORY_FILE).write_text(junk)
            assert FingerprintHistory.load(tmp_path).fingerprints in ([], ["x"])


class TestUndoneCopy:
    """A fingerprint refused without ever being held here is a copy, forgotten when the copy is gone."""

    def test_the_volumes_own_earlier_login_drops_the_copy(self) -> None:
        history = FingerprintHistory(["b1"], held=["b1"])
        assert history.observe("f0") == [] and history.fingerprints == ["b1", "f0"]
        assert history.mark_copy("f0") is True
        history.refused = True
        assert history.observe("f0") == [] and history.fingerprints == ["b1", "f0"]  # the copy still there
        assert history.observe("b1") == ["f0"]
        assert (history.fingerprints, history.copies) == (["b1"], [])

    def test_a_fingerprint_this_volume_held_is_never_a_copy(self) -> None:
        """Its old login leased elsewhere (a copy of *it*): stays in the set, the refusal stands."""
        history = FingerprintHistory(["b1", "b2"], held=["b1", "b2"], refused=True)
        assert history.mark_copy("b1") is False
        assert history.observe("b2") == [] and history.fingerprints == ["b1", "b2"]

    def test_an_older_agents_file_counts_every_fingerprint_as_held(self) -> None:
        history = FingerprintHistory(["b1"])
        assert history.mark_copy("b1") is False
        history.observe("f0")
        assert history.held == ["b1"] and history.mark_copy("f0") is True

    def test_a_round_held_clears_the_copies(self) -> None:
        history = FingerprintHistory(["b1", "f0"], held=["b1"], copies=["f0"])
        assert history.mark_held() is True and (history.held, history.copies) == (["b1", "f0"], [])
        assert history.mark_held() is False

    def test_held_and_copies_round_trip(self, tmp_path: Path) -> None:
        saved = FingerprintHistory(["b1", "f0"], refused=True, held=["b1"], copies=["f0", "gone"])
        (tmp_path / HISTORY_FILE).write_text(json.dumps(saved.to_dict()))
        loaded = FingerprintHistory.load(tmp_path)
        assert (loaded.fingerprints, loaded.refused, loaded.held, loaded.copies) == (["b1", "f0"], True, ["b1"], ["f0"])
        (tmp_path / HISTORY_FILE).write_text(json.dumps({"fingerprints": ["a"], "refused": False}))
        assert FingerprintHistory.load(tmp_path).held is None


class TestLeaseHolder:
    def _holder(self, **changes: object) -> LeaseHolder:
        fields: dict[str, object] = dict(
            worker="w0",
            host="h",
            shard=0,
            volume="v",
            claim_id="c1",
            since=0.0,
            pid=7,
            boot_id=boot_id(),
            volume_id="1:2",
        )
        fields.update(changes)
        return LeaseHolder(**fields)  # type: ignore[arg-type]

    def test_record_round_trips_and_foreign_text_is_none(self) -> None:
        """The broker record parses back; anything else is None (an unknown holder)."""
        holder = self._holder()
        assert LeaseHolder.from_json(holder.to_json()) == holder
        assert LeaseHolder.from_json("{}") is None and LeaseHolder.from_json("not json") is None

    @pytest.mark.parametrize(
        "junk",
        [
            "[" * 100_000,
            b"\xff\xfe",
            '{"worker": 1}',
            "[]",
            '{"worker": "w", "host": "h", "shard": "0", "volume": "v", "claim_id": "c", "since": 0}',
            '{"worker": "w", "host": "h", "shard": 0, "volume": "v", "claim_id": "c", "since": Infinity}',
        ],
        ids=["nesting-bomb", "not-utf8", "wrong-type", "not-an-object", "shard-as-text", "infinite-since"],
    )
    def test_any_bytes_in_the_broker_are_a_holder_or_none(self, junk: str | bytes) -> None:
        """The broker is shared: a record of another shape is an unknown holder, never an exception."""
        assert LeaseHolder.from_json(junk) is None
        assert FleetEntry.from_json(junk) is None

    def test_a_record_of_an_older_agent_takes_the_defaults(self) -> None:
        record = json.loads(self._holder().to_json())
        for name in ("pid", "boot_id", "volume_id"):
            del record[name]
        assert LeaseHolder.from_json(json.dumps(record)) == self._holder(pid=0, boot_id="", volume_id="")

    def test_describe_names_worker_host_shard_and_volume(self) -> None:
        assert self._holder().describe().startswith("worker w0 on host h (shard 0, volume v, pid 7, since 1970-")

    @pytest.mark.parametrize(
        ("theirs", "our_volume", "dead"),
        [
            ({"claim_id": "old"}, "1:2", True),
            ({}, "1:2", False),
            ({"claim_id": "old", "boot_id": "other-host"}, "1:2", False),
            ({"claim_id": "old", "volume_id": "3:4"}, "1:2", False),
            ({"claim_id": "old", "volume_id": "unknown"}, "unknown", False),
        ],
        ids=["same-volume-old-claim", "ourselves", "other-kernel", "other-volume", "unknown-volume"],
    )
    def test_only_a_record_of_our_volume_on_our_kernel_is_a_dead_copy(
        self, theirs: dict[str, object], our_volume: str, dead: bool
    ) -> None:
        """Taken over at once only when we hold that very volume's flock on the same kernel."""
        assert self._holder(**theirs).is_dead_copy_of(self._holder(volume_id=our_volume)) is dead


class TestLeaseState:
    def test_messages_say_what_happened(self) -> None:
        assert "leased fleet-wide" in LeaseState("held", True, 2, "redis://h:6379/0").describe()
        assert "lease is kept" in LeaseState("held", False, 2, "redis://h", "refused").describe()
        assert "not leased yet" in LeaseState("pending", False, 0, "amqp://h", "down").describe()
