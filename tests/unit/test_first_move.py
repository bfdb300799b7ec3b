"""agent.routing.first_move: which shard a first phase goes to when its own is held at its usage limit.

The board records are the ones workers post (:class:`agent.fleet.roster.FleetEntry`); the real broker read
is exercised by tests/integration/test_first_move.py.
"""

from __future__ import annotations

from typing import Any

import pytest
from celery import Celery

from agent.errors import FleetUnreadableError
from agent.fleet.roster import FleetEntry, FleetReport
from agent.routing.first_move import FirstPhaseMover, Move, choose_shard, mover_for
from agent.routing.router import add_router
from agent.settings.config import load
from agent.settings.topology import PIN_ARG, shard_for
from agent.worker.task import CodexTask

NOW = 1_800_000_000.0


def entry(shard: int, gate: str = "open", limited: float | None = None, **used: float) -> FleetEntry:
    return FleetEntry(
        worker=f"w{shard}",
        host="h",
        pid=100 + shard,
        codex_worker=True,
        gate=gate,
        gate_since=NOW - 60,
        shard=shard,
        queue=f"codex-{shard}",
        volume=f"codex_auth_{shard}",
        codes=["CODEX-E036"] if limited else [],
        posted_at=NOW - 1,
        used_5h=used.get("h5"),
        used_weekly=used.get("weekly"),
        limited_until=limited,
    )


LIMITED = NOW + 600


class TestChooseShard:
    def test_an_open_shard_is_kept(self) -> None:
        assert choose_shard([entry(0), entry(1, h5=50.0)], 0, 2, NOW) is None

    def test_a_limited_shard_moves_to_the_open_one_with_the_most_headroom(self) -> None:
        board = [
            entry(0, "closed", LIMITED, h5=100.0),
            entry(1, h5=70.0, weekly=20.0),
            entry(2, h5=10.0, weekly=60.0),
            entry(3, h5=30.0, weekly=30.0),
        ]
        assert choose_shard(board, 0, 4, NOW) == Move(3, LIMITED, 30.0, 30.0)

    def test_unknown_headroom_ranks_after_known_and_ties_go_to_the_lower_shard(self) -> None:
        assert choose_shard([entry(0, "closed", LIMITED), entry(1), entry(2, h5=95.0)], 0, 3, NOW) == Move(
            2, LIMITED, 95.0, None
        )
        assert choose_shard([entry(2, "closed", LIMITED), entry(1), entry(0)], 2, 3, NOW) == Move(
            0, LIMITED, None, None
        )
        tie = [entry(1, "closed", LIMITED), entry(2, h5=40.0), entry(0, h5=40.0)]
        assert choose_shard(tie, 1, 3, NOW) == Move(0, LIMITED, 40.0, None)

    @pytest.mark.parametrize(
        "others",
        [
            [entry(1, "closed", LIMITED)],  # every shard limited
            [entry(1, "closed")],  # gate closed for another reason
            [entry(1, "stopped")],  # stopped
            [entry(1, h5=100.0)],  # a whole window used, not (yet) limited
            [entry(5)],  # beyond the shard count
            [],  # no other worker at all
        ],
    )
    def test_no_open_shard_keeps_the_phase_on_its_own(self, others: list[FleetEntry]) -> None:
        assert choose_shard([entry(0, "closed", LIMITED), *others], 0, 3, NOW) == 0

    def test_a_reset_passed_or_a_live_unlimited_worker_is_not_limited(self) -> None:
        assert choose_shard([entry(0, "open", NOW - 1), entry(1)], 0, 2, NOW) is None
        two_workers = [entry(0, "closed", LIMITED), FleetEntry(**{**entry(0).to_dict(), "pid": 9}), entry(1)]
        assert choose_shard(two_workers, 0, 2, NOW) is None
        assert choose_shard([entry(1)], 0, 2, NOW) is None, "nothing known of the own shard: route as usual"


def _report(entries: list[FleetEntry]) -> FleetReport:
    return FleetReport("amqp://board", 3, NOW, entries)


class TestMover:
    def test_one_board_read_serves_the_ttl_and_an_unreadable_board_keeps_the_shard(self) -> None:
        clock = [NOW]
        reads: list[int] = []

        def reader(url: str, shards: int) -> FleetReport:
            reads.append(shards)
            if len(reads) == 2:
                raise FleetUnreadableError(broker=url, cause="refused")
            return _report([entry(0, "closed", LIMITED), entry(1, h5=5.0)])

        mover = FirstPhaseMover("amqp://board", 3, reader=reader, ttl=2.0, clock=lambda: clock[0])
        assert [mover.target(0, task="t") for _ in range(5)] == [1] * 5 and len(reads) == 1
        clock[0] += 2.0
        assert mover.target(0, task="t") == 0 and len(reads) == 2, "unreadable: keep the affinity shard"
        clock[0] += 2.0
        assert mover.target(0, task="t") == 1

    def test_a_surprise_from_the_reader_never_fails_routing(self) -> None:
        def reader(url: str, shards: int) -> FleetReport:
            raise OSError("connection reset")

        assert FirstPhaseMover("amqp://board", 3, reader=reader).target(2, task="t") == 2


def _app(**env: str) -> tuple[Celery, Any]:
    config = load({"CELERY_BROKER_URL": "memory://", "CODEX_SHARDS": "3", **env})
    app = Celery("t", broker="memory://", set_as_current=False)

    @app.task(base=CodexTask, name="t.phase", shared=False)
    def phase(affinity_key: str, codex_shard: int | None = None) -> None: ...

    @app.task(base=CodexTask, name="t.unpinnable", shared=False)
    def unpinnable(affinity_key: str) -> None: ...

    return app, add_router(app, config)


def _key(shard: int) -> str:
    return next(k for k in (f"key{i}" for i in range(1000)) if shard_for(k, 3) == shard)


class TestRouterMove:
    def _armed(self, **env: str) -> Any:
        _, router = _app(**env)
        if router.mover is not None:
            board = [entry(1, "closed", LIMITED), entry(0, h5=80.0), entry(2, h5=20.0)]
            router.mover = FirstPhaseMover("memory://", 3, reader=lambda url, shards: _report(board), clock=lambda: NOW)
        return router

    def test_a_first_phase_moves_pinned_and_a_pinned_phase_stays(self) -> None:
        router = self._armed(CODEX_MOVE_FIRST_PHASE="1")
        first = {"affinity_key": _key(1)}
        assert router("t.phase", (), first, {}) == {"queue": "codex-2"} and first[PIN_ARG] == 2
        later = {"affinity_key": _key(1), PIN_ARG: 1}
        assert router("t.phase", (), later, {}) == {"queue": "codex-1"}
        open_key = {"affinity_key": _key(0)}
        assert router("t.phase", (), open_key, {}) == {"queue": "codex-0"} and PIN_ARG not in open_key

    def test_off_by_default_in_single_mode_and_for_a_task_without_the_pin(self) -> None:
        for env in ({}, {"CODEX_MOVE_FIRST_PHASE": "1", "CODEX_QUEUE_MODE": "single"}):
            router = self._armed(**env)
            assert router.mover is None
        router = self._armed(CODEX_MOVE_FIRST_PHASE="1")
        plain = {"affinity_key": _key(1)}
        assert router("t.unpinnable", (), plain, {}) == {"queue": "codex-1"} and PIN_ARG not in plain
        assert router("t.phase", (), {"affinity_key": _key(1)}, {"queue": "mine"}) is None

    def test_every_router_of_a_process_shares_one_mover(self) -> None:
        """An app's router and the per-publish router of a bare app read the board once per TTL together."""
        (_, first), (_, second) = _app(CODEX_MOVE_FIRST_PHASE="1"), _app(CODEX_MOVE_FIRST_PHASE="1")
        assert first.mover is second.mover is mover_for("memory://", 3)
        assert mover_for("memory://", 4) is not first.mover

    def test_a_phase_published_by_a_running_codex_task_never_moves(self) -> None:
        """A later phase sent without its pin from inside a Codex task stays by its key (its session lives there)."""
        app, router = _app(CODEX_MOVE_FIRST_PHASE="1")
        board = [entry(1, "closed", LIMITED), entry(0)]
        router.mover = FirstPhaseMover("memory://", 3, reader=lambda url, shards: _report(board), clock=lambda: NOW)
        seen: list[Any] = []

        @app.task(name="t.runner", shared=False)
        def runner() -> None:
            later = {"affinity_key": _key(1)}
            seen.append((router("t.phase", (), later, {}), later))

        runner.codex = True  # as CodexTask declares it
        runner.apply()  # run here, as a worker runs it: celery.current_task is this task
        assert seen == [({"queue": "codex-1"}, {"affinity_key": _key(1)})]
        assert router("t.phase", (), {"affinity_key": _key(1)}, {}) == {"queue": "codex-0"}, "outside a task it moves"
