"""Real Codex phases: ``codex exec --json`` in guarded job containers, launched by real workers on
real brokers, against the OpenAI stand-in (the only stand-in: OpenAI cannot be reached here).

Covers the login lifecycle of issue 9: a phase and its artifacts, session resume within a run,
a family revoked during a run (requeued, gate closed until a new login, then completed), and a
hung model endpoint ending at the wall-clock limit with no container left behind.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from support.phases import PhaseLab
from support.workers import BrokerView, agent_status, keys_for_shard, wait_until

from openai_standin import Behaviour, StandIn

pytestmark = [pytest.mark.docker, pytest.mark.codex, pytest.mark.broker]

PHASE_TIMEOUT_S = 90


@pytest.fixture
def standin() -> Iterator[StandIn]:
    with StandIn() as server:
        yield server


@pytest.fixture
def lab(docker_client: Any, standin: StandIn, images: Any) -> Iterator[PhaseLab]:
    made = PhaseLab(docker_client, standin, images.worker, images.job)
    yield made
    made.close()


def phase(publisher: Celery, key: str, run_id: str, name: str, prompt: str, **kwargs: Any) -> Any:
    return publisher.send_task(
        "codex.phase", kwargs={"affinity_key": key, "run_id": run_id, "phase": name, "prompt": prompt, **kwargs}
    )


class TestPhase:
    def test_a_phase_runs_codex_exec_and_keeps_its_artifacts(
        self, lab: PhaseLab, standin: StandIn, broker: BrokerView, broker_url: str, backend_url: str,
        publisher: Celery, tmp_path: Path,
    ) -> None:
        """codex exec runs in the job with the shard's login; events, message and outcome are kept."""
        shard = lab.shard(0)
        worker = lab.worker(shard, broker_url, backend_url)
        worker.wait_for("codex.agent.ready", timeout=60, gate="open")
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
        self, lab: PhaseLab, standin: StandIn, broker: BrokerView, broker_url: str, backend_url: str,
        publisher: Celery, tmp_path: Path,
    ) -> None:
        """The same run and phase published again returns the recorded outcome; no model call."""
        shard = lab.shard(0)
        worker = lab.worker(shard, broker_url, backend_url)
        worker.wait_for("codex.agent.ready", timeout=60, gate="open")
        key = keys_for_shard(0, 1)[0]
        first = phase(publisher, key, "cwa-run-b", "plan", "once").get(timeout=PHASE_TIMEOUT_S)
        again = phase(publisher, key, "cwa-run-b", "plan", "once").get(timeout=PHASE_TIMEOUT_S)
        assert again["job"]["skipped"] is True and again["job"]["task_id"] == first["task_id"]
        assert len(standin.script.calls()) == 1
        assert worker.events("codex.phase.skipped", reason="completed earlier", run_id="cwa-run-b")


class TestSessionResume:
    def test_the_second_phase_resumes_the_first_phases_session_on_the_same_shard(
        self, lab: PhaseLab, standin: StandIn, broker: BrokerView, broker_url: str, backend_url: str,
        publisher: Celery, tmp_path: Path,
    ) -> None:
        """Phase two runs ``codex exec resume`` from the shard's CODEX_HOME: the model sees phase one."""
        shard = lab.shard(1)
        worker = lab.worker(shard, broker_url, backend_url)
        worker.wait_for("codex.agent.ready", timeout=60, gate="open")
        key = keys_for_shard(1, 1)[0]
        phase(publisher, key, "cwa-run-c", "one", "Remember MARKER-ONE", next_phases=["two"]).get(timeout=PHASE_TIMEOUT_S)
        wait_until(lambda: len(standin.script.calls()) >= 2, PHASE_TIMEOUT_S, what="the second phase's model call")
        worker.wait_for("codex.job.finished", count=2, run_id="cwa-run-c")

        first, second = standin.script.calls()
        assert "MARKER-ONE" in first.texts[-1]
        assert any("MARKER-ONE" in text for text in second.texts[:-1]), "phase two did not carry phase one's turn"
        assert "stand-in reply 1" in second.texts, "phase two did not carry phase one's reply"
        one = json.loads((lab.artifacts / "cwa-run-c" / "one" / "outcome.json").read_text())
        two = json.loads((lab.artifacts / "cwa-run-c" / "two" / "outcome.json").read_text())
        assert two["resumed_session"] == one["session_id"] and one["shard"] == two["shard"] == 1
