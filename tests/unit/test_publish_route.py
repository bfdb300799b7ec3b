"""agent.routing.router.routed_options: a Codex task routes itself when the publishing app has no router."""

from __future__ import annotations

from typing import Any

import pytest
from celery import Celery

from agent.errors import RoutingError
from agent.routing.router import add_router, routed_options
from agent.settings.config import load
from agent.settings.topology import shard_for
from agent.worker.task import CodexTask


def _bare_app() -> tuple[Celery, Any]:
    app = Celery("bare", broker="memory://", set_as_current=False)

    @app.task(base=CodexTask, name="bare.phase", shared=False)
    def phase(affinity_key: str, **_: Any) -> None: ...

    return app, phase


class TestRoutedOptions:
    def test_a_bare_app_gets_the_shard_queue_from_the_environment(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("CODEX_SHARDS", "5")
        _, phase = _bare_app()
        options = routed_options(phase, (), {"affinity_key": "k"}, {"priority": 3})
        assert options == {"priority": 3, "queue": f"codex-{shard_for('k', 5)}"}

    def test_an_app_with_the_router_is_left_to_it(self) -> None:
        app, phase = _bare_app()
        add_router(app, load({"CELERY_BROKER_URL": "memory://"}))
        assert routed_options(phase, (), {"affinity_key": "k"}, {}) == {}

    def test_an_explicit_queue_wins(self) -> None:
        _, phase = _bare_app()
        assert routed_options(phase, (), {"affinity_key": "k"}, {"queue": "special"}) == {"queue": "special"}

    def test_no_affinity_key_is_refused_before_sending(self) -> None:
        _, phase = _bare_app()
        with pytest.raises(RoutingError, match="affinity_key"):
            routed_options(phase, (), {}, {})
