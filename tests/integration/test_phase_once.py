"""At least once, and at most one completed execution per phase, at real failure points.

* After the phase finished but before its ack (a broker outage mid-phase: the ack fails and the
  message comes back): the redelivery finds the recorded outcome and runs nothing.
* Mid-job (the worker killed with SIGKILL): no outcome was recorded, so the phase runs again on the
  restarted worker, the orphaned job is swept, and the phase completes once.
"""

from __future__ import annotations

import json
from urllib.parse import unquote, urlsplit

import pytest
from celery import Celery
from testkit.phases import PhaseLab
from testkit.rabbit import rabbitmqctl
from testkit.workers import BrokerView, keys_for_shard, wait_until

from agent.config import load
from openai_standin import Behaviour, StandIn
from worker_entry.app import create_app

pytestmark = [pytest.mark.docker, pytest.mark.codex, pytest.mark.broker, pytest.mark.timeout(300)]


def send_phase(publisher: Celery, shard: int, run_id: str) -> object:
    kwargs = {"affinity_key": keys_for_shard(shard, 1)[0], "run_id": run_id, "phase": "plan", "prompt": run_id}
    return publisher.send_task("codex.phase", kwargs=kwargs)


def test_a_broker_outage_after_the_phase_ran_does_not_run_it_again(
    lab: PhaseLab, standin: StandIn, rabbitmq_vhost: str, backend_url: str,
) -> None:
    """The ack of the finished phase is lost with the connection; the redelivery is a recorded duplicate."""
    import worker_entry.tasks  # noqa: F401  (the publisher knows the shared tasks)

    publisher = create_app(load({"CELERY_BROKER_URL": rabbitmq_vhost}), result_backend=backend_url)
    shard = lab.shard(0)
    worker = lab.ready_worker(shard, rabbitmq_vhost, backend_url)
    standin.script.push(Behaviour("delay", seconds=5))
    result = send_phase(publisher, 0, "cwa-once-outage")
    worker.wait_for("codex.job.started", timeout=60, run_id="cwa-once-outage")
    vhost = unquote(urlsplit(rabbitmq_vhost).path.lstrip("/"))
    rabbitmqctl("close_all_connections", "-p", vhost, "test: a broker outage mid-phase")

    skipped = worker.wait_for("codex.phase.skipped", timeout=120, run_id="cwa-once-outage")[0]
    assert skipped["reason"] == "duplicate delivery", "the message was not redelivered: the scenario did not happen"
    assert len(standin.script.calls()) == 1, "the completed phase ran again"
    assert result.get(timeout=60)["job"]["status"] == "completed"  # type: ignore[attr-defined]
    assert len(worker.events("codex.job.finished", run_id="cwa-once-outage")) == 1


def test_a_worker_killed_mid_job_runs_the_phase_again_and_it_completes_once(
    lab: PhaseLab, standin: StandIn, broker: BrokerView, broker_url: str, backend_url: str, publisher: Celery,
    docker_client: object,
) -> None:
    """At least once: the cut-off phase runs again; its orphaned job is swept; one outcome."""
    shard = lab.shard(1)
    name = "cwa_test_once_worker"
    first = lab.ready_worker(shard, broker_url, backend_url, AGENT_WORKER_NAME=name, CELERY_VISIBILITY_TIMEOUT="10")
    standin.script.push(Behaviour("delay", seconds=60))  # the first attempt never finishes
    result = send_phase(publisher, 1, "cwa-once-kill")
    started = first.wait_for("codex.job.started", timeout=60, run_id="cwa-once-kill")[0]
    first.container.kill()  # SIGKILL: no warm shutdown, no ack, no release

    second = lab.ready_worker(shard, broker_url, backend_url, AGENT_WORKER_NAME=name, CELERY_VISIBILITY_TIMEOUT="10")
    outcome = result.get(timeout=180)["job"]  # type: ignore[attr-defined]

    assert outcome["status"] == "completed" and outcome["container_id"] != started["container_id"]
    assert len(standin.script.calls()) == 2, "the cut-off phase must run again (at least once)"
    orphan = second.wait_for("codex.job.finished", timeout=60, container_id=started["container_id"])[0]
    assert orphan["exit_code"] is None or orphan.get("reason")
    wait_until(lambda: not docker_client.containers.list(  # type: ignore[attr-defined]
        all=True, filters={"id": started["container_id"]}), 30, what="the orphaned job removed")
    recorded = json.loads((lab.artifacts / "cwa-once-kill" / "plan" / "outcome.json").read_text())
    assert recorded["task_id"] == outcome["task_id"] and recorded["container_id"] == outcome["container_id"]
