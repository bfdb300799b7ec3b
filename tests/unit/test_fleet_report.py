"""agent.fleet.roster: reading the board's records into shards (pure; the brokers are in tests/integration)."""

from __future__ import annotations

import json

import pytest

from agent.fleet.roster import FleetEntry, FleetReport, newest_per_worker


def entry(
    worker: str, shard: int | None, gate: str = "open", posted_at: float = 100.0, codes: list[str] | None = None
) -> FleetEntry:
    return FleetEntry(
        worker=worker,
        host="h",
        pid=1,
        codex_worker=shard is not None,
        gate=gate,
        gate_since=1.0,
        shard=shard,
        queue=None if shard is None else f"codex-{shard}",
        volume=None,
        codes=codes or [],
        posted_at=posted_at,
    )


class TestRecords:
    def test_the_newest_record_of_each_worker_wins(self) -> None:
        """RabbitMQ hands back every record of the last TTL; only each worker's newest counts."""
        records = [
            entry("a", 0, "closed", 1.0).to_json(),
            entry("a", 0, "open", 2.0).to_json(),
            entry("b", 1, "closed", 1.5).to_json(),
        ]
        assert [(e.worker, e.gate) for e in newest_per_worker(records)] == [("a", "open"), ("b", "closed")]

    @pytest.mark.parametrize(
        "record", ["", "not json", "[]", "{}", json.dumps({"worker": 3, "gate": "open"}), json.dumps({"worker": "x"})]
    )
    def test_a_record_not_ours_is_skipped(self, record: str) -> None:
        """Anything else in the queue or under the prefix is ignored, never a crash."""
        assert newest_per_worker([record, entry("a", 0).to_json()]) == [entry("a", 0)]

    def test_two_processes_of_one_name_are_two_workers(self) -> None:
        """Containers on a host network share the host's name: the key is host, name and pid."""
        first, second = entry("vm", 0), FleetEntry(**{**entry("vm", None).to_dict(), "pid": 2})
        assert newest_per_worker([first.to_json(), second.to_json()]) == [first, second]
        assert first.key != second.key

    def test_a_record_round_trips(self) -> None:
        original = entry("a", 2, "closed", codes=["CODEX-E030"])
        assert FleetEntry.from_json(original.to_json()) == original


class TestShards:
    def test_every_shard_is_listed_and_a_missing_one_fails(self) -> None:
        """Shards 0..N-1 appear even with no worker; the report is ok only when every one is open."""
        report = FleetReport("b", 3, 0.0, [entry("a", 0), entry("b", 1, "closed"), entry("c", None)])
        assert [(r.shard, r.status) for r in report.rows] == [(0, "open"), (1, "closed"), (2, "missing")]
        assert [e.worker for e in report.others] == ["c"] and not report.ok

    def test_an_open_worker_wins_over_a_refused_copy_and_extra_shards_show(self) -> None:
        """A shard with one open worker (and a refused copy beside it) is open; a shard beyond N is listed."""
        report = FleetReport("b", 1, 0.0, [entry("a", 0, "closed"), entry("b", 0), entry("c", 4, "stopped")])
        assert [(r.shard, r.status) for r in report.rows] == [(0, "open"), (4, "stopped")]
        assert not report.ok
        assert FleetReport("b", 1, 0.0, [entry("b", 0)]).to_dict()["ok"] is True


class TestUsage:
    def test_the_board_says_when_every_login_is_limited_and_the_earliest_reset(self) -> None:
        limited = [
            FleetEntry(
                **{
                    **entry(f"w{n}", n, "closed", codes=["CODEX-E036"]).to_dict(),
                    "limited_until": 500.0 + n,
                    "used_5h": 100.0,
                }
            )
            for n in range(2)
        ]
        report = FleetReport("b", 2, 0.0, limited)
        assert report.all_limited and report.earliest_reset == 500.0
        assert report.to_dict()["all_limited"] is True
        mixed = FleetReport("b", 2, 0.0, [limited[0], entry("w1", 1)])
        assert not mixed.all_limited and mixed.earliest_reset == 500.0
        assert FleetEntry.from_json(limited[0].to_json()) == limited[0]

    @pytest.mark.parametrize("value", ["90", True, [1], {"a": 1}])
    def test_a_usage_field_of_the_wrong_type_is_not_ours(self, value: object) -> None:
        record = json.loads(entry("a", 0).to_json())
        assert FleetEntry.from_json(json.dumps({**record, "used_weekly": value})) is None
        assert FleetEntry.from_json(json.dumps({**record, "used_weekly": 95.5})) is not None

    def test_an_older_agents_record_has_no_usage(self) -> None:
        record = json.loads(entry("a", 0).to_json())
        for name in ("used_5h", "used_weekly", "limited_until"):
            del record[name]
        assert FleetEntry.from_json(json.dumps(record)) == entry("a", 0)
