"""agent.routing.router and agent.worker.runtime.install: routing decisions and idempotent wiring."""

from __future__ import annotations

from typing import Any

import pytest
from celery import Celery

from agent.errors import RoutingError
from agent.routing.router import CodexRouter, add_router
from agent.settings.config import load
from agent.settings.topology import shard_for
from agent.worker.gate import GateStep
from agent.worker.runtime import install
from agent.worker.task import CodexTask


def _app(**env: str) -> tuple[Celery, CodexRouter]:
    config = load({"CELERY_BROKER_URL": "memory://", **env})
    app = Celery("t", broker="memory://", set_as_current=False)

    @app.task(base=CodexTask, name="t.codex_phase", shared=False)
    def phase(affinity_key: str, **_: Any) -> None: ...

    @app.task(name="t.plain", shared=False)
    def plain() -> None: ...

    return app, add_router(app, config)


def _key_moving_from_3_to_4() -> str:
    return next(k for k in (f"k{i}" for i in range(1000)) if shard_for(k, 3) != shard_for(k, 4))


class TestCodexRouter:
    def test_routes_by_jump_hash(self) -> None:
        """A Codex task goes to codex-{shard_for(key)}."""
        app, router = _app()
        for key in ("repo-a", "repo-b", "org/project-9"):
            assert router("t.codex_phase", (), {"affinity_key": key}, {}) == {"queue": f"codex-{shard_for(key, 3)}"}

    def test_single_mode_uses_one_queue(self) -> None:
        """In single mode every Codex task goes to `codex`."""
        _, router = _app(CODEX_QUEUE_MODE="single")
        assert router("t.codex_phase", (), {"affinity_key": "x"}, {}) == {"queue": "codex"}

    def test_explicit_queue_wins(self) -> None:
        """queue= in apply_async options is left alone."""
        _, router = _app()
        assert router("t.codex_phase", (), {"affinity_key": "x"}, {"queue": "special"}) is None

    def test_non_codex_tasks_are_untouched(self) -> None:
        """Plain tasks get no route from us (the default queue applies)."""
        _, router = _app()
        assert router("t.plain", (), {}, {}) is None
        assert router("unknown.task", (), {}, {}) is None

    def test_pinned_run_keeps_its_shard_when_shards_change(self) -> None:
        """A run pinned by codex_shard stays there even where the hash would now differ."""
        key = _key_moving_from_3_to_4()
        first = shard_for(key, 3)
        _, router4 = _app(CODEX_SHARDS="4")
        assert router4("t.codex_phase", (), {"affinity_key": key}, {}) == {"queue": f"codex-{shard_for(key, 4)}"}
        assert router4("t.codex_phase", (), {"affinity_key": key, "codex_shard": first}, {}) == {
            "queue": f"codex-{first}"
        }

    @pytest.mark.parametrize(
        ("kwargs", "needle"),
        [
            ({}, "'affinity_key'"),
            ({"affinity_key": ""}, "non-empty"),
            ({"affinity_key": "k", "codex_shard": -1}, "codex_shard"),
        ],
        ids=["missing-key", "empty-key", "bad-pin"],
    )
    def test_unroutable_input_is_a_clear_error(self, kwargs: dict[str, Any], needle: str) -> None:
        """No affinity key, an empty one or a bad pin: CODEX-E050 saying what is wrong, nothing sent."""
        _, router = _app()
        with pytest.raises(RoutingError) as info:
            router("t.codex_phase", (), kwargs, {})
        assert info.value.code == "CODEX-E050" and needle in info.value.message

    def test_celery_applies_the_route(self) -> None:
        """Through Celery's own router, the task lands in its shard queue."""
        app, _ = _app()
        route = app.amqp.router.route({}, "t.codex_phase", (), {"affinity_key": "repo-a"})
        assert route["queue"].name == f"codex-{shard_for('repo-a', 3)}"


class TestInstall:
    def test_is_idempotent(self) -> None:
        """Installing twice gives the same agent, one router and one gate step."""
        app = Celery("t", broker="memory://", set_as_current=False)
        config = load({"CELERY_BROKER_URL": "memory://", "CODEX_SHARD_INDEX": "1", "HOME": "/nonexistent"})
        first = install(app, config, docker_client=None)
        second = install(app, config, docker_client=None)
        assert first is second
        assert sum(isinstance(r, CodexRouter) for r in app.conf.task_routes) == 1
        assert len([s for s in app.steps["consumer"] if isinstance(s, type) and issubclass(s, GateStep)]) == 1
        assert first.gate is not None and first.gate.queue == "codex-1"

    def test_non_codex_worker_has_no_gate(self) -> None:
        """Without CODEX_SHARD_INDEX the agent only routes and publishes state."""
        app = Celery("t", broker="memory://", set_as_current=False)
        agent = install(app, load({"CELERY_BROKER_URL": "memory://"}), docker_client=None)
        assert agent.gate is None
