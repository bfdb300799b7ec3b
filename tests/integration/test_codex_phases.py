"""Real Codex phases: ``codex exec --json`` in guarded job containers, launched by real workers on
real brokers, against the OpenAI stand-in (the only stand-in: OpenAI cannot be reached here).

Covers the login lifecycle of issue 9: a phase and its artifacts, session resume within a run,
a family revoked during a run (requeued, gate closed until a new login, then completed), and a
hung model endpoint ending at the wall-clock limit with no container left behind.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from agent.jobs.policy import workspace_name
from openai_standin import Behaviour, StandIn
from testkit.phases import PhaseLab
from testkit.workers import BrokerView, keys_for_shard, wait_until

pytestmark = [pytest.mark.docker, pytest.mark.codex, pytest.mark.broker]

PHASE_TIMEOUT_S = 90


def phase(publisher: Celery, key: str, run_id: str, name: str, prompt: str, **kwargs: Any) -> Any:
    return publisher.send_task(
        "codex.phase", kwargs={"affinity_key": key, "run_id": run_id, "phase": name, "prompt": prompt, **kwargs}
    )


class TestPhase:
    def test_a_phase_runs_codex_exec_and_keeps_its_artifacts(
        self,
        lab: PhaseLab,
        standin: StandIn,
        broker: BrokerView,
        broker_url: str,
        backend_url: str,
        publisher: Celery,
        tmp_path: Path,
    ) -> None:
        """codex exec runs in the job with the shard's login; events, message and outcome are kept."""
        shard = lab.shard(0)
        worker = lab.ready_worker(shard, broker_url, backend_url)
        key = keys_for_shard(0, 1)[0]

        result = phase(publisher, key, "cwa-run-a", "plan", "Plan the change. MARKER-A").get(timeout=PHASE_TIMEOUT_S)

        job = result["job"]
        assert job["status"] == "completed" and job["exit_code"] == 0 and job["shard"] == 0
        assert job["session_id"] and job["usage"]["output_tokens"] >= 1
        directory = lab.artifact_dir(job)
        assert directory == lab.artifacts / "cwa-run-a" / "plan"
        events = [json.loads(line) for line in (directory / "events.jsonl").read_text().splitlines()]
        assert {e["type"] for e in events} >= {"thread.started", "turn.completed"}
        assert (directory / "last_message.txt").read_text() == "stand-in reply 1"
        assert json.loads((directory / "outcome.json").read_text())["task_id"] == result["task_id"]
        calls = standin.script.calls()
        assert len(calls) == 1 and calls[0].family == shard.tokens.family and "MARKER-A" in calls[0].texts[-1]
        finished = worker.wait_for("codex.job.finished", run_id="cwa-run-a")[0]
        assert finished["exit_code"] == 0 and finished["codex_session"] == job["session_id"]
        assert finished["usage"]["output_tokens"] >= 1

    def test_a_completed_phase_is_not_run_again(
        self,
        lab: PhaseLab,
        standin: StandIn,
        broker: BrokerView,
        broker_url: str,
        backend_url: str,
        publisher: Celery,
        tmp_path: Path,
    ) -> None:
        """The same run and phase published again returns the recorded outcome; no model call."""
        shard = lab.shard(0)
        worker = lab.ready_worker(shard, broker_url, backend_url)
        key = keys_for_shard(0, 1)[0]
        first = phase(publisher, key, "cwa-run-b", "plan", "once").get(timeout=PHASE_TIMEOUT_S)
        again = phase(publisher, key, "cwa-run-b", "plan", "once").get(timeout=PHASE_TIMEOUT_S)
        assert again["job"]["skipped"] is True and again["job"]["task_id"] == first["task_id"]
        assert len(standin.script.calls()) == 1
        assert worker.events("codex.phase.skipped", reason="completed earlier", run_id="cwa-run-b")


class TestSessionResume:
    def test_the_second_phase_resumes_the_first_phases_session_on_the_same_shard(
        self,
        lab: PhaseLab,
        standin: StandIn,
        broker: BrokerView,
        broker_url: str,
        backend_url: str,
        publisher: Celery,
        tmp_path: Path,
    ) -> None:
        """Phase two runs ``codex exec resume`` from the shard's CODEX_HOME: the model sees phase one."""
        shard = lab.shard(1)
        worker = lab.ready_worker(shard, broker_url, backend_url)
        key = keys_for_shard(1, 1)[0]
        phase(publisher, key, "cwa-run-c", "one", "Remember MARKER-ONE", next_phases=["two"]).get(
            timeout=PHASE_TIMEOUT_S
        )
        wait_until(lambda: len(standin.script.calls()) >= 2, PHASE_TIMEOUT_S, what="the second phase's model call")
        worker.wait_for("codex.job.finished", count=2, run_id="cwa-run-c")

        first, second = standin.script.calls()
        assert "MARKER-ONE" in first.texts[-1]
        assert any("MARKER-ONE" in text for text in second.texts[:-1]), "phase two did not carry phase one's turn"
        assert "stand-in reply 1" in second.texts, "phase two did not carry phase one's reply"
        # The outcome is written just after the job's finished line: wait for it, not for the line.
        wait_until(
            lambda: (lab.artifacts / "cwa-run-c" / "two" / "outcome.json").exists(),
            PHASE_TIMEOUT_S,
            what="phase two's outcome",
        )
        one = json.loads((lab.artifacts / "cwa-run-c" / "one" / "outcome.json").read_text())
        two = json.loads((lab.artifacts / "cwa-run-c" / "two" / "outcome.json").read_text())
        assert two["resumed_session"] == one["session_id"] and one["shard"] == two["shard"] == 1


class TestRevokedDuringRun:
    def test_a_revoked_family_requeues_the_task_closes_the_gate_and_a_new_login_completes_it(
        self,
        lab: PhaseLab,
        standin: StandIn,
        broker: BrokerView,
        broker_url: str,
        backend_url: str,
        publisher: Celery,
    ) -> None:
        """E034: not a job failure; the gate ignores a passing `login status` until a new login."""
        shard = lab.shard(2)
        worker = lab.ready_worker(shard, broker_url, backend_url)
        key = keys_for_shard(2, 1)[0]
        phase(publisher, key, "cwa-run-d", "one", "works").get(timeout=PHASE_TIMEOUT_S)
        dead = shard.tokens
        assert dead is not None
        standin.authority.revoke(dead.family)  # the service killed the family (a copy elsewhere reused it)

        pending = phase(publisher, key, "cwa-run-d", "two", "second phase")
        worker.wait_for("codex.run.requeued", timeout=PHASE_TIMEOUT_S, code="CODEX-E034")
        wait_until(lambda: broker.count("codex-2") == 1, 30, what="the task back in codex-2")
        status = wait_until(
            lambda: (
                (s := worker.status())["state"]["gate"] == "closed"
                and [r["code"] for r in s["state"]["reason"]] == ["CODEX-E034"]
                and s
            ),
            30,
            what="the gate closed on CODEX-E034",
        )
        assert status["exit_code"] == 1 and shard.volume in status["state"]["reason"][0]["message"]
        volumes = subprocess.run(
            [str(Path(sys.executable).parent / "codex-agent"), "volumes", "--json", shard.volume],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        listed = json.loads(volumes.stdout)["volumes"][0]
        assert listed["revoked"]["reason"] == "refresh_token_invalidated" and listed["revoked"]["run_id"] == "cwa-run-d"
        code, _ = worker.container.exec_run(["codex", "login", "status"])
        assert code == 0, "the trap: codex login status passes on a revoked login"
        assert not pending.ready()
        wait_until(lambda: len(worker.events("codex.check.failed", code="CODEX-E034")) >= 1, 30, what="a re-check")
        assert worker.status()["state"]["gate"] == "closed", "a passing login status must not reopen a revoked login"
        assert broker.count("codex-2") == 1

        fresh = lab.login(shard)  # the runbook's re-login of this one volume
        result = pending.get(timeout=PHASE_TIMEOUT_S)
        assert result["job"]["status"] == "completed" and result["job"]["phase"] == "two"
        stats = standin.authority.stats()
        assert stats[fresh.family].model_calls == 1 and stats[fresh.family].reuses == 0
        assert stats[dead.family].model_calls == 1, "only phase one ran on the dead family"
        assert worker.status()["state"]["gate"] == "open"
        assert not (shard.source / ".codex-agent-revoked.json").exists()


class TestWallClockLimit:
    def test_a_hung_model_endpoint_ends_at_the_limit_with_its_code_and_no_container_left(
        self,
        lab: PhaseLab,
        standin: StandIn,
        broker: BrokerView,
        broker_url: str,
        backend_url: str,
        publisher: Celery,
        docker_client: Any,
    ) -> None:
        """CODEX-E043, the job is killed and removed, the task is failed (never dropped), the gate stays open."""
        shard = lab.shard(0)
        worker = lab.ready_worker(shard, broker_url, backend_url, CODEX_PHASE_TIMEOUT="6")
        standin.script.push(Behaviour("hang"))
        result = phase(publisher, keys_for_shard(0, 1)[0], "cwa-run-e", "plan", "hang please")
        with pytest.raises(Exception, match="CODEX-E043") as failure:
            result.get(timeout=PHASE_TIMEOUT_S)
        assert "6.0s limit" in str(failure.value)
        finished = worker.wait_for("codex.job.finished", run_id="cwa-run-e")[0]
        assert finished["timed_out"] is True
        assert docker_client.containers.list(all=True, filters={"label": "codex.run_id=cwa-run-e"}) == []
        assert result.state == "FAILURE" and worker.status()["state"]["gate"] == "open"
        assert not (lab.artifacts / "cwa-run-e" / "plan" / "outcome.json").exists()


SECRET = "ghp_cwa-integration-s3cret-9f3e"


class TestShapedPhase:
    def test_model_effort_and_env_shape_the_phase_and_the_result_holds_the_final_message(
        self,
        lab: PhaseLab,
        standin: StandIn,
        broker: BrokerView,
        broker_url: str,
        backend_url: str,
        publisher: Celery,
    ) -> None:
        """The model and the reasoning effort reach the model call; the result has the final message,
        usage and session; the env value is in no log line, result or artifact; a refused argument is E044."""
        shard = lab.shard(0)
        worker = lab.ready_worker(shard, broker_url, backend_url)
        key = keys_for_shard(0, 1)[0]
        task = publisher.tasks["codex.phase"]
        result = task.apply_async(
            kwargs={
                "affinity_key": key,
                "run_id": "cwa-run-f",
                "phase": "plan",
                "prompt": "Shape me. MARKER-F",
                "model": "standin-model-b",
                "codex_args": ["-c", "model_reasoning_effort=high"],
                "env": {"CWA_GIT_TOKEN": SECRET},
            }
        ).get(timeout=PHASE_TIMEOUT_S)

        job = result["job"]
        assert job["final_message"] == "stand-in reply 1" and job["session_id"] and job["usage"]["output_tokens"] >= 1
        assert (job["model"], job["reasoning_effort"], job["env_names"]) == (
            "standin-model-b",
            "high",
            ["CWA_GIT_TOKEN"],
        )
        (call,) = standin.script.calls()
        assert call.model == "standin-model-b" and call.reasoning_effort == "high" and "MARKER-F" in call.texts[-1]
        worker.wait_for("codex.job.finished", run_id="cwa-run-f")
        kept = "".join(p.read_text() for p in (lab.artifacts / "cwa-run-f").rglob("*") if p.is_file())
        assert SECRET not in json.dumps(result) and SECRET not in worker.log_text() and SECRET not in kept
        assert lab.guards and all(SECRET not in guard.log_text() for guard in lab.guards)

        refused = task.apply_async(
            kwargs={
                "affinity_key": key,
                "run_id": "cwa-run-f",
                "phase": "two",
                "prompt": "x",
                "codex_args": ["--dangerously-bypass-approvals-and-sandbox"],
            }
        )
        with pytest.raises(Exception, match="CODEX-E044") as failure:
            refused.get(timeout=PHASE_TIMEOUT_S)
        assert "codex_args" in str(failure.value) and len(standin.script.calls()) == 1

    def test_a_seed_under_the_root_fills_the_new_workspace_once_and_one_outside_is_refused(
        self,
        lab: PhaseLab,
        standin: StandIn,
        broker: BrokerView,
        broker_url: str,
        backend_url: str,
        publisher: Celery,
        docker_client: Any,
    ) -> None:
        """The seed job unpacks the directory into the run's workspace before the first phase; a later
        phase does not seed again; a path out of CODEX_SEED_ROOT is E044 before anything runs."""
        seeds = lab.base / "seeds"
        (seeds / "repo" / "src").mkdir(parents=True)
        (seeds / "repo" / "src" / "main.py").write_text("print('seeded')\n")
        (seeds / "repo" / "link").symlink_to("/home/app/.codex/auth.json")
        for path in (seeds, *seeds.rglob("*")):
            if not path.is_symlink():
                path.chmod(0o755 if path.is_dir() else 0o644)
        shard = lab.shard(0)
        worker = lab.ready_worker(
            shard,
            broker_url,
            backend_url,
            CODEX_SEED_ROOT="/var/seeds",
            mounts={str(seeds): {"bind": "/var/seeds", "mode": "ro"}},
        )
        key = keys_for_shard(0, 1)[0]
        first = phase(publisher, key, "cwa-run-g", "one", "Read the seed", seed="repo").get(timeout=PHASE_TIMEOUT_S)
        assert first["job"]["status"] == "completed" and first["job"]["seed"]["files"] == 1
        second = phase(publisher, key, "cwa-run-g", "two", "Again", seed="repo", resume=True).get(
            timeout=PHASE_TIMEOUT_S
        )
        assert second["job"]["seed"] is None
        assert len(worker.events("codex.workspace.seeded", run_id="cwa-run-g")) == 1

        workspace = docker_client.volumes.get(workspace_name(shard.volume, "cwa-run-g"))
        tree = Path(workspace.attrs["Mountpoint"])
        assert (tree / "src" / "main.py").read_text() == "print('seeded')\n" and not (tree / "link").exists()
        assert (tree / "src" / "main.py").stat().st_uid == 1000

        outside = phase(publisher, key, "cwa-run-h", "one", "x", seed="../../etc")
        with pytest.raises(Exception, match="CODEX-E044"):
            outside.get(timeout=PHASE_TIMEOUT_S)
        assert not worker.events("codex.job.started", run_id="cwa-run-h")


class TestWorkspaceLifetime:
    def test_the_last_phase_removes_the_workspace_and_the_sweep_removes_idle_ones(
        self,
        lab: PhaseLab,
        standin: StandIn,
        docker_client: Any,
        rabbitmq_url: str,
        backend_url: str,
    ) -> None:
        """A run whose last phase says ``final`` leaves no workspace; a run idle past
        CODEX_WORKSPACE_RETENTION loses its workspace at the next worker's start, a recent one keeps it,
        and with no retention set (the unprotected variant) the idle one stays too."""
        from agent.settings.config import load
        from worker_entry.app import create_app

        publisher = create_app(load({"CELERY_BROKER_URL": rabbitmq_url}), result_backend=backend_url)
        view = BrokerView(rabbitmq_url)
        view.purge()
        shard = lab.shard(0)
        worker = lab.ready_worker(shard, rabbitmq_url, backend_url)
        key = keys_for_shard(0, 1)[0]
        volumes = lambda: {v.name for v in docker_client.volumes.list(filters={"name": "codex_ws_"})}  # noqa: E731
        phase(publisher, key, "cwa-ws-done", "one", "first", next_phases=["two"], final=True).get(
            timeout=PHASE_TIMEOUT_S
        )
        wait_until(lambda: worker.events("codex.workspace.removed"), PHASE_TIMEOUT_S, what="the final phase's removal")
        assert worker.events("codex.workspace.removed")[0]["reason"] == "run completed"
        assert workspace_name(shard.volume, "cwa-ws-done") not in volumes()
        for run_id in ("cwa-ws-idle", "cwa-ws-recent"):
            phase(publisher, key, run_id, "one", "kept").get(timeout=PHASE_TIMEOUT_S)
        idle, recent = workspace_name(shard.volume, "cwa-ws-idle"), workspace_name(shard.volume, "cwa-ws-recent")
        assert {idle, recent} <= volumes()
        old = time.time() - 7200
        for path in (lab.artifacts / "cwa-ws-idle").rglob("*"):
            os.utime(path, (old, old))
        os.utime(lab.artifacts / "cwa-ws-idle", (old, old))
        worker.stop()
        lab.ready_worker(shard, rabbitmq_url, backend_url).stop()  # no retention: the startup sweep keeps both
        assert {idle, recent} <= volumes()
        third = lab.ready_worker(shard, rabbitmq_url, backend_url, CODEX_WORKSPACE_RETENTION="3600")
        wait_until(lambda: third.events("codex.reconcile.done"), 60, what="the startup sweep")
        assert idle not in volumes() and recent in volumes()
        assert third.events("codex.workspace.removed")[0]["reason"] == "retention"
        view.purge()
