"""Real Codex phases counted by a real worker's metrics endpoint.

Worker containers of the project's image (``codex exec`` in guarded job containers, against the
OpenAI stand-in) serve ``AGENT_METRICS_PORT`` on the host network. What a scrape says is checked
against what ran: the runs and job containers by outcome, their durations as the audit lines give
them, and a phase ended by the wall-clock limit (CODEX-E043) counted as a ``timed_out`` run.
"""

from __future__ import annotations

import pytest
from celery import Celery

from agent.telemetry.metrics import JOB_OUTCOMES
from openai_standin import Behaviour, StandIn
from testkit.monitoring import Samples, free_port, scrape
from testkit.phases import ContainerWorker, PhaseLab
from testkit.workers import keys_for_shard, wait_until

pytestmark = [pytest.mark.docker, pytest.mark.codex, pytest.mark.broker, pytest.mark.timeout(300)]

RESULT_TIMEOUT_S = 90
LIMIT_S = 5
"""CODEX_PHASE_TIMEOUT of the worker whose phase hangs."""


def send_phase(publisher: Celery, shard: int, key: str, run_id: str) -> object:
    kwargs = {"affinity_key": key, "run_id": run_id, "phase": "plan", "prompt": f"Plan {run_id}."}
    return publisher.send_task("codex.phase", kwargs=kwargs)


def counted(samples: Samples, name: str, shard: int, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted({"shard": str(shard), **labels}.items()))))


def by_outcome(samples: Samples, name: str, shard: int) -> dict[str, float | None]:
    return {outcome: counted(samples, name, shard, outcome=outcome) for outcome in JOB_OUTCOMES}


def logged_seconds(worker: ContainerWorker, run_ids: list[str]) -> float:
    return sum(e["duration_s"] for run_id in run_ids for e in worker.events("codex.job.finished", run_id=run_id))


@pytest.mark.parametrize("broker_url", ["redis"], indirect=True)  # the broker plays no part in counting
def test_runs_and_job_containers_are_counted_as_they_ended(
    lab: PhaseLab,
    standin: StandIn,
    broker_url: str,
    backend_url: str,
    publisher: Celery,
) -> None:
    ports = {0: free_port(), 1: free_port()}
    shards = {index: lab.shard(index) for index in (0, 1)}
    workers = {
        0: lab.worker(shards[0], broker_url, backend_url, AGENT_METRICS_PORT=str(ports[0])),
        1: lab.worker(
            shards[1], broker_url, backend_url, AGENT_METRICS_PORT=str(ports[1]), CODEX_PHASE_TIMEOUT=str(LIMIT_S)
        ),
    }
    for worker in workers.values():
        worker.wait_for("codex.agent.ready", timeout=90, gate="open")

    # Shard 0: two phases that complete.
    done = [f"cwa-metrics-ok-{n}" for n in range(2)]
    for key, run_id in zip(keys_for_shard(0, 2), done, strict=False):
        result = send_phase(publisher, 0, key, run_id).get(timeout=RESULT_TIMEOUT_S)  # type: ignore[attr-defined]
        assert result["job"]["status"] == "completed" and result["job"]["exit_code"] == 0
    # Shard 1: a phase whose model endpoint hangs, killed at the limit.
    standin.script.push(Behaviour("hang"))
    hung = send_phase(publisher, 1, keys_for_shard(1, 1)[0], "cwa-metrics-hang")
    with pytest.raises(Exception, match="CODEX-E043"):
        hung.get(timeout=RESULT_TIMEOUT_S)  # type: ignore[attr-defined]
    assert workers[1].wait_for("codex.job.finished", run_id="cwa-metrics-hang")[0]["timed_out"] is True

    ok = wait_until(
        lambda: (s := scrape(ports[0])) and counted(s, "codex_runs_total", 0, outcome="ok") == 2 and s,
        30,
        interval=0.5,
        what="shard 0's two runs counted",
    )
    assert by_outcome(ok, "codex_runs_total", 0) == {"ok": 2, "failed": 0, "timed_out": 0, "error": 0}
    assert by_outcome(ok, "codex_job_containers_total", 0) == {"ok": 2, "failed": 0, "timed_out": 0, "error": 0}
    assert counted(ok, "codex_tasks_started_total", 0) == 2
    assert counted(ok, "codex_run_duration_seconds_count", 0, outcome="ok") == 2
    assert counted(ok, "codex_run_duration_seconds_sum", 0, outcome="ok") == pytest.approx(
        logged_seconds(workers[0], done), abs=1e-6
    )
    assert counted(ok, "codex_job_container_duration_seconds_count", 0, outcome="ok") == 2

    limit = scrape(ports[1])
    assert by_outcome(limit, "codex_runs_total", 1) == {"ok": 0, "failed": 0, "timed_out": 1, "error": 0}
    assert by_outcome(limit, "codex_job_containers_total", 1) == {"ok": 0, "failed": 0, "timed_out": 1, "error": 0}
    assert counted(limit, "codex_run_duration_seconds_count", 1, outcome="timed_out") == 1
    assert counted(limit, "codex_run_duration_seconds_sum", 1, outcome="timed_out") == LIMIT_S  # the limit it hit
    assert counted(limit, "codex_run_duration_seconds_bucket", 1, outcome="timed_out", le="5.0") == 1
    assert counted(limit, "codex_run_duration_seconds_bucket", 1, outcome="timed_out", le="1.0") == 0
