"""agent.routing.drain.target_queue: where a waiting task routes after the shard count changes."""

from __future__ import annotations

from typing import Any

import pytest

from agent.errors import RoutingError
from agent.routing.drain import target_queue
from agent.settings.topology import Topology, shard_for


def by_key(key: str, shards: int) -> str:
    return f"codex-{shard_for(key, shards)}"


def codex_only(name: str, kwargs: dict[str, Any]) -> str | None:
    return "repo" if name == "codex.custom" else None


class TestTargetQueue:
    @pytest.mark.parametrize(
        ("name", "kwargs", "shards", "expected"),
        [
            ("codex.phase", {"affinity_key": "repo-a"}, 3, by_key("repo-a", 3)),
            ("codex.phase", {"affinity_key": "repo-a", "codex_shard": 1}, 3, "codex-1"),
            ("codex.phase", {"affinity_key": "repo-a", "codex_shard": 3}, 3, by_key("repo-a", 3)),
            ("housekeeping", {"label": "x"}, 3, "default"),
        ],
        ids=["by-key", "pin-kept", "pin-gone-rerouted-by-key", "non-codex-to-default"],
    )
    def test_routes_like_the_router_for_the_new_count(
        self, name: str, kwargs: dict[str, Any], shards: int, expected: str
    ) -> None:
        """Keys hash over the new count; a live pin wins; a dead pin falls back to the key."""
        assert target_queue(name, kwargs, shards=shards) == expected

    def test_uses_the_task_classes_affinity_argument(self) -> None:
        """A Codex task whose affinity argument is not ``affinity_key`` is routed by its own."""
        assert target_queue("codex.custom", {"repo": "r1"}, shards=5, kinds=codex_only) == by_key("r1", 5)
        assert target_queue("other", {"repo": "r1"}, shards=5, kinds=codex_only) == "default"

    def test_single_mode_keeps_pinned_runs_on_their_worker(self) -> None:
        """Single mode: a new run goes to the shared ``codex`` queue, a pinned one to its worker's own queue."""
        assert target_queue("codex.phase", {"affinity_key": "k"}, shards=4, mode="single") == "codex"
        assert (
            target_queue("codex.phase", {"affinity_key": "k", "codex_shard": 2}, shards=4, mode="single") == "codex-2"
        )

    def test_a_codex_task_without_key_or_live_pin_is_unroutable(self) -> None:
        """No key and a dead pin: RoutingError, so the drain stops and leaves it queued."""
        with pytest.raises(RoutingError):
            target_queue("codex.phase", {"codex_shard": 7}, shards=3)

    def test_live_queues_are_the_new_shards_and_default(self) -> None:
        """Only queues without a shard any more can be drained."""
        assert Topology(3).live_queues() == {"codex-0", "codex-1", "codex-2", "default"}
        assert Topology(2, "single").live_queues() == {"codex", "codex-0", "codex-1", "default"}


class TestWithTheAppsRegistry:
    """``codex-agent drain --app``: the app's own tasks, affinity arguments and default queue."""

    def _app(self) -> Any:
        from celery import Celery

        from agent.worker.task import CodexTask

        app = Celery("myproj")
        app.conf.task_default_queue = "myproj-default"

        @app.task(base=CodexTask, bind=True, name="myproj.review_pr", affinity_arg="repo", shared=False)
        def review_pr(self: Any, repo: str, codex_shard: int | None = None) -> None: ...

        @app.task(name="myproj.notify", shared=False)
        def notify(text: str) -> None: ...

        return app

    def test_routes_by_the_tasks_affinity_argument_and_the_apps_default_queue(self) -> None:
        from agent.routing.drain import task_kinds_from_app

        kinds = task_kinds_from_app(self._app())
        assert target_queue("myproj.review_pr", {"repo": "r1"}, shards=3, kinds=kinds) == by_key("r1", 3)
        assert (
            target_queue("myproj.notify", {"text": "x"}, shards=3, kinds=kinds, default_queue="myproj-default")
            == "myproj-default"
        )

    def test_a_task_the_app_does_not_know_is_not_guessed(self) -> None:
        """Unknown to the app: UnknownTask (the drain's CODEX-E051), not the default queue."""
        from agent.routing.drain import UnknownTask, task_kinds_from_app

        kinds = task_kinds_from_app(self._app())
        with pytest.raises(UnknownTask) as info:
            target_queue("otherproj.phase", {"affinity_key": "k"}, shards=3, kinds=kinds)
        assert (info.value.task, info.value.app) == ("otherproj.phase", "myproj")
