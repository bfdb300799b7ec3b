"""`worker-entry`: bad input, a user's own Celery app, and runs pinned to their shard."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from agent.settings.topology import shard_for
from testkit import make_api_key_login
from testkit.workers import (
    BrokerView,
    ShardHome,
    WorkerFactory,
    agent_status,
    keys_for_shard,
    wait_until,
)

ENTRY = str(Path(sys.executable).parent / "worker-entry")


def _run_entry(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    base = {"PATH": os.environ["PATH"], "HOME": "/tmp"}
    return subprocess.run([ENTRY, *args], env={**base, **env}, capture_output=True, text=True, timeout=60)


class TestBadInput:
    @pytest.mark.parametrize(
        ("env", "needle"),
        [
            ({"CODEX_SHARD_INDEX": "9"}, "CODEX_SHARD_INDEX='9' is invalid"),
            ({"CODEX_SHARD_INDEX": "0", "CODEX_LOGIN_TIMEOUT": "soon"}, "CODEX_LOGIN_TIMEOUT='soon' is invalid"),
            ({"CODEX_QUEUE_MODE": "fanout"}, "accepted: sharded or single"),
        ],
        ids=["index", "timeout", "mode"],
    )
    def test_bad_config_stops_with_a_clear_message(self, env: dict[str, str], needle: str) -> None:
        """Invalid configuration: exit 2, the variable, value and accepted values on stderr and as a JSON line."""
        done = _run_entry(env)
        assert done.returncode == 2
        assert needle in done.stderr and "fix:" in done.stderr
        line = json.loads(done.stdout.strip().splitlines()[-1])
        assert line["event"] == "codex.agent.startup_failed" and line["code"] == "CODEX-E001"

    def test_unimportable_app_is_a_clear_error(self) -> None:
        """--app pointing nowhere: exit 2 naming the value and the accepted form."""
        done = _run_entry({}, "--app", "no_such_module:app")
        assert done.returncode == 2
        assert "--app='no_such_module:app' is invalid" in done.stderr
        assert "module:attribute of a Celery app" in done.stderr


USER_APP = """
from celery import Celery
from agent.settings.config import load
from agent.worker.task import CodexTask
from agent.routing.router import add_router

app = Celery("user_app")
app.conf.update(task_acks_late=True, worker_hijack_root_logger=False)
add_router(app, load())  # publishers route Codex tasks to their shard


@app.task(base=CodexTask, bind=True, name="user.review", shared=False)
def review(self, affinity_key, pr):
    return {**self.codex_context(), "pr": pr}
"""


class TestUserApp:
    def test_agent_gates_a_users_own_app(
        self,
        workers: WorkerFactory,
        shard_homes: Callable[..., ShardHome],
        codex_bin: str,
        broker_url: str,
        backend_url: str,
        broker: BrokerView,
        tmp_path: Path,
    ) -> None:
        """worker-entry --app module:attr installs the agent into any Celery app."""
        (tmp_path / "user_app.py").write_text(textwrap.dedent(USER_APP))
        home = shard_homes()
        make_api_key_login(codex_bin, home.codex_home)
        worker = workers(shard=0, home=home, app="user_app:app", PYTHONPATH=str(tmp_path))
        worker.wait_for("codex.gate.consuming", timeout=30)

        sys.path.insert(0, str(tmp_path))
        try:
            os.environ["CELERY_BROKER_URL"] = broker_url
            import user_app  # type: ignore[import-not-found]

            user_app.app.conf.update(broker_url=broker_url, result_backend=backend_url)
            key = keys_for_shard(0, 1, prefix="pr")[0]
            result = user_app.review.apply_async(kwargs={"affinity_key": key, "pr": 7}).get(timeout=30)
        finally:
            sys.path.remove(str(tmp_path))
            os.environ.pop("CELERY_BROKER_URL", None)
            sys.modules.pop("user_app", None)
        assert (result["queue"], result["shard"], result["pr"]) == ("codex-0", 0, 7)
        assert worker.events("codex.run.audit", task="user.review")


class TestPinnedRuns:
    def test_every_phase_of_a_run_stays_on_its_first_shard(
        self,
        workers: WorkerFactory,
        shard_homes: Callable[..., ShardHome],
        codex_bin: str,
        publisher: Celery,
        broker: BrokerView,
    ) -> None:
        """The first phase routes with 3 shards; the worker (now with 4) keeps later phases on that shard."""
        key = next(k for k in keys_for_shard(0, 200) if shard_for(k, 4) != 0)
        home = shard_homes()
        make_api_key_login(codex_bin, home.codex_home)
        worker = workers(shard=0, home=home, CODEX_SHARDS="4")
        worker.wait_for("codex.gate.consuming", timeout=30)
        publisher.send_task(
            "codex.phase",
            kwargs={"affinity_key": key, "run_id": "run-pinned", "phase": "plan", "next_phases": ["apply", "verify"]},
        )
        audits = worker.wait_for("codex.run.audit", timeout=60, count=3, run_id="run-pinned")
        assert [a["queue"] for a in audits] == ["codex-0"] * 3
        wait_until(lambda: broker.count(f"codex-{shard_for(key, 4)}") == 0, 5, what="nothing on the hashed queue")


class TestInfrastructureFailure:
    def test_an_unreachable_engine_requeues_the_phase_until_it_answers(
        self,
        workers: WorkerFactory,
        shard_homes: Callable[..., ShardHome],
        codex_bin: str,
        publisher: Celery,
        broker: BrokerView,
        tmp_path: Path,
        images: Any,
    ) -> None:
        """No Docker engine for the job: the phase goes back to its queue (CODEX-E040, not a login
        error, the gate stays open) and runs once the engine answers again, with no worker restart."""
        home = shard_homes()
        make_api_key_login(codex_bin, home.codex_home)
        engine = tmp_path / "engine.sock"
        worker = workers(
            shard=0,
            home=home,
            CODEX_JOB_IMAGE="codex-worker-agent/job:dev",
            DOCKER_HOST=f"unix://{engine}",
            CODEX_JOB_RETRIES="0",
        )
        worker.wait_for("codex.gate.consuming", timeout=30)
        key = keys_for_shard(0, 1, prefix="infra")[0]
        run = publisher.send_task("codex.phase", kwargs={"affinity_key": key, "run_id": "run-infra", "phase": "plan"})
        requeues = worker.wait_for("codex.run.requeued", timeout=30, count=2, run_id="run-infra")
        assert {r["code"] for r in requeues} == {"CODEX-E040"}
        assert not run.ready(), "a phase whose engine is away must not fail"
        assert not worker.events("codex.preflight.failed")
        status = agent_status(worker)
        assert status["healthy"] is True and status["state"]["gate"] == "open"

        engine.symlink_to("/var/run/docker.sock")  # the engine is back: the next retry reaches it
        worker.wait_for("codex.job.finished", timeout=60, run_id="run-infra")
        with pytest.raises(Exception) as info:
            run.get(timeout=30)
        # The job itself ran and gave its own verdict: uid 1000 in the job cannot read the volume of
        # this root-run test worker (CODEX-E042, no retries here). What matters is that it is not E040.
        assert str(info.value).startswith("CODEX-E042"), info.value
