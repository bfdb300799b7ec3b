"""agent.routing.chains and agent.worker.run_failures on real Celery canvases, in the form a worker receives them.

The remaining chain of a request is what Celery itself builds (``prepare_steps``) and sends as JSON;
the routes are what the app's own router (Celery's ``amqp.router``) decides for each next step.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from celery import Celery, chain, group

import worker_entry.tasks as tasks
from agent.errors import ConfigError, JobFailedError
from agent.routing.chains import accepts_pin, own_queue, pin_signatures, signatures_in
from agent.settings.config import load
from agent.settings.defaults import DEFAULT_QUEUE
from agent.settings.topology import PIN_ARG
from agent.worker.run_failures import RetryPolicy, failure_kind, failure_report, retry_policy
from worker_entry.app import create_app

RUN = {"affinity_key": "repo-a", "run_id": "run-1", "prompt": "p"}


def app_for(mode: str) -> Celery:
    env = {"CELERY_BROKER_URL": "redis://127.0.0.1:6379/0", "CODEX_QUEUE_MODE": mode, "CODEX_SHARDS": "3"}
    return create_app(load(env), result_backend="db+sqlite:///:memory:")  # chords need a backend; never used


def remaining_chain(app: Celery, canvas: Any) -> list[dict[str, Any]]:
    """What the first step's request carries as ``chain`` (last step first), through JSON like the wire."""
    steps, _ = canvas.prepare_steps((), {}, canvas.tasks, app=app)
    steps.pop()  # the first step is the message itself
    wire: list[dict[str, Any]] = json.loads(json.dumps(steps))
    return wire


def pin(app: Celery, wire: list[dict[str, Any]], shard: int) -> int:
    topology = app.conf.task_routes[0].topology  # the app's CodexRouter
    return pin_signatures(
        wire,
        queue=topology.shard_queue(shard),
        shard=shard,
        is_codex=lambda name: bool(getattr(app.tasks.get(name), "codex", False)),
        takes_pin=lambda name: accepts_pin(app.tasks.get(name)),
        codex_queues=frozenset(topology.codex_queues()),
    )


def routed_queue(app: Celery, sig: dict[str, Any]) -> str:
    """The queue Celery's router picks for a signature dict, as when the chain publishes it."""
    route = app.amqp.router.route(
        dict(sig.get("options") or {}), sig["task"], tuple(sig.get("args") or ()), sig.get("kwargs") or {}
    )
    return str(route["queue"].name)


def four_phases() -> Any:
    return chain(
        tasks.codex_step.si(phase="plan", **RUN),
        tasks.housekeeping.si("between"),
        tasks.codex_step.s(phase="build", **RUN),
        group(tasks.codex_step.si(phase="test-a", **RUN), tasks.codex_step.si(phase="test-b", **RUN)),
        tasks.codex_step.si(phase="review", **RUN),
    )


class TestPinSignatures:
    @pytest.mark.parametrize("mode", ["single", "sharded"])
    def test_every_later_codex_step_goes_to_the_first_steps_shard_and_plain_steps_stay(self, mode: str) -> None:
        """.si and .s steps, a group and a chord body: all on codex-2; housekeeping on the default queue."""
        app = app_for(mode)
        wire = remaining_chain(app, four_phases())
        assert pin(app, wire, 2) == 4
        by_phase: dict[str, str] = {}
        for sig in signatures_in(wire):
            queue = routed_queue(app, sig)
            by_phase[sig["kwargs"].get("phase", sig["task"])] = queue
            if sig["task"] == "codex.step":
                assert sig["kwargs"][PIN_ARG] == 2
        assert by_phase == {
            "build": "codex-2",
            "test-a": "codex-2",
            "test-b": "codex-2",
            "review": "codex-2",
            "housekeeping": DEFAULT_QUEUE,
        }

    def test_without_pinning_single_mode_sends_later_phases_to_the_shared_queue(self) -> None:
        """The unprotected chain: any worker may take the later phases (another login, no session)."""
        app = app_for("single")
        wire = remaining_chain(app, four_phases())
        queues = {routed_queue(app, s) for s in signatures_in(wire) if s["task"] == "codex.step"}
        assert queues == {"codex"}

    def test_an_authors_own_queue_is_kept_and_pinning_twice_changes_nothing(self) -> None:
        app = app_for("single")
        canvas = chain(
            tasks.codex_step.si(phase="a", **RUN),
            tasks.codex_step.si(phase="b", **RUN).set(queue="special"),
            tasks.codex_step.si(phase="c", **RUN),
        )
        wire = remaining_chain(app, canvas)
        assert pin(app, wire, 1) == 1
        before = json.dumps(wire, sort_keys=True)
        assert pin(app, wire, 1) == 1 and json.dumps(wire, sort_keys=True) == before
        assert [routed_queue(app, s) for s in reversed(wire)] == ["special", "codex-1"]

    def test_a_task_without_the_pin_argument_gets_only_the_queue(self) -> None:
        app = app_for("single")

        @app.task(base=tasks.CodexTask, bind=True, name="user.phase", shared=False)
        def user_phase(self: Any, affinity_key: str, run_id: str) -> None:
            """A user's own Codex task with no codex_shard parameter."""

        assert accepts_pin(user_phase) is False and accepts_pin(tasks.codex_step) is True
        wire = remaining_chain(app, chain(tasks.codex_step.si(phase="a", **RUN), user_phase.si("repo-a", "run-1")))
        assert pin(app, wire, 0) == 1
        assert PIN_ARG not in wire[0]["kwargs"] and routed_queue(app, wire[0]) == "codex-0"


@pytest.mark.parametrize(
    ("env", "queue"),
    [({}, "codex-1"), ({"CODEX_QUEUE_MODE": "single"}, "codex-1"), ({"CODEX_QUEUE": "team-a"}, "team-a")],
)
def test_own_queue_is_the_one_only_this_worker_consumes(env: dict[str, str], queue: str) -> None:
    """codex-N in both modes; a worker given its own CODEX_QUEUE keeps its run there."""
    config = load({"CODEX_SHARD_INDEX": "1", "CODEX_VOLUME_NAME": "vol1", "CODEX_SHARDS": "3", **env})
    assert own_queue(config) == queue


class TestRunFailures:
    def test_policy_from_the_environment_and_its_backoff(self) -> None:
        policy = retry_policy(load({"CODEX_JOB_RETRIES": "3", "CODEX_JOB_RETRY_BACKOFF": "2"}))
        assert policy == RetryPolicy(3, 2.0) and [policy.countdown(n) for n in range(3)] == [2.0, 4.0, 8.0]
        assert retry_policy(load({})) == RetryPolicy()

    @pytest.mark.parametrize(
        ("name", "value"),
        [("CODEX_JOB_RETRIES", "-1"), ("CODEX_JOB_RETRY_BACKOFF", "0"), ("CODEX_JOB_RETRIES", "many")],
    )
    def test_a_bad_value_names_the_variable(self, name: str, value: str) -> None:
        with pytest.raises(ConfigError, match=name):
            load({name: value})

    @pytest.mark.parametrize(
        ("code", "kind"),
        [
            ("CODEX-E034", "login"),
            ("CODEX-E030", "login"),
            ("CODEX-E011", "login"),
            ("CODEX-E042", "job"),
            ("CODEX-E043", "limit"),
            ("CODEX-E044", "request"),
            ("CODEX-E040", "engine"),
            (None, "other"),
        ],
    )
    def test_kinds(self, code: str | None, kind: str) -> None:
        assert failure_kind(code) == kind

    def test_the_report_carries_ids_and_the_code(self) -> None:
        class Request:
            id = "t-1"
            task = "codex.step"
            retries = 1
            delivery_info = {"routing_key": "codex-0"}
            kwargs = {"run_id": "run-1", "phase": "build", "prompt": "never reported"}

        error = JobFailedError(shard=0, worker="w", container_id="abc", image="img", exit_code=1, output_tail="tail")
        report = failure_report(Request(), error, 0)
        assert report == {
            "task_id": "t-1",
            "task": "codex.step",
            "run_id": "run-1",
            "phase": "build",
            "retries": 1,
            "queue": "codex-0",
            "shard": 0,
            "code": "CODEX-E042",
            "kind": "job",
            "error": "JobFailedError",
        }
