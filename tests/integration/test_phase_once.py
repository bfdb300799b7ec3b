"""At least once, and at most one completed execution per phase, at real failure points.

* After the phase finished but before its ack (a broker outage mid-phase: the ack fails and the
  message comes back): the redelivery finds the recorded outcome and runs nothing.
* Mid-job (the worker killed with SIGKILL): the job runs on. Whether it exits while the worker is
  down or is still running when the worker is back, the restarted worker harvests it
  (:mod:`agent.jobs.harvest`) and the redelivered task returns its result: one Codex run.
"""

from __future__ import annotations

import json
from urllib.parse import unquote, urlsplit

import pytest
from celery import Celery

from agent.jobs.acklog import ACK_LOST
from agent.settings.config import load
from openai_standin import Behaviour, StandIn
from testkit.phases import UNHARVESTED_SITE, PhaseLab
from testkit.private_brokers import PrivateRabbitMQ
from testkit.rabbit import rabbitmqctl
from testkit.workers import BrokerView, keys_for_shard, wait_until
from worker_entry.app import create_app

pytestmark = [pytest.mark.docker, pytest.mark.codex, pytest.mark.broker, pytest.mark.timeout(300)]


def send_phase(publisher: Celery, shard: int, run_id: str) -> object:
    kwargs = {"affinity_key": keys_for_shard(shard, 1)[0], "run_id": run_id, "phase": "plan", "prompt": run_id}
    return publisher.send_task("codex.phase", kwargs=kwargs)


def test_a_broker_outage_after_the_phase_ran_does_not_run_it_again(
    lab: PhaseLab,
    standin: StandIn,
    rabbitmq_vhost: str,
    backend_url: str,
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


CELERY_ACK_SITE = """\
# The unprotected variant of tests/integration/test_phase_once.py: Codex tasks acknowledged by
# Celery's own Request.acknowledge (kombu's critical lost-ack line with its traceback).
import agent.worker.task
import celery.worker.request
agent.worker.task.CodexRequest.acknowledge = celery.worker.request.Request.acknowledge
"""


@pytest.mark.parametrize("quiet", [True, False], ids=["agent-warning", "without-it-celerys-critical-traceback"])
def test_a_broker_restart_during_a_codex_task_leaves_one_warning_and_no_traceback(
    lab: PhaseLab,
    standin: StandIn,
    backend_url: str,
    quiet: bool,
) -> None:
    """A RabbitMQ of the test's own restarts while a phase runs: the task's ack is lost with the
    connection. The worker's log holds one codex.ack.lost warning naming the task (and that the
    redelivery is skipped by the completion record), no critical "Couldn't ack" and no traceback.
    Without the agent's ack (the unprotected variant) Celery's critical line and traceback are there."""
    import worker_entry.tasks  # noqa: F401

    broker = PrivateRabbitMQ()
    broker.start()
    try:
        publisher = create_app(load({"CELERY_BROKER_URL": broker.url}), result_backend=backend_url)
        env = {} if quiet else lab.site("celery-ack-site", CELERY_ACK_SITE)
        worker = lab.ready_worker(lab.shard(2), broker.url, backend_url, **env)
        run_id = f"cwa-once-ack-lost-{'on' if quiet else 'off'}"
        standin.script.push(Behaviour("delay", seconds=8))
        result = send_phase(publisher, 2, run_id)
        worker.wait_for("codex.job.started", timeout=60, run_id=run_id)
        broker.stop()
        broker.start()

        worker.wait_for("codex.phase.skipped", timeout=120, run_id=run_id)
        assert result.get(timeout=60)["job"]["status"] == "completed"  # type: ignore[attr-defined]
        assert len(standin.script.calls()) == 1
        lines = worker.lines()
        celerys = [line for line in lines if "Couldn't ack" in str(line.get("event"))]
        tracebacks = [line for line in lines if "Traceback" in json.dumps(line)]
        if not quiet:
            assert celerys and celerys[0]["level"] == "critical" and tracebacks, "the ack was not lost: no scenario"
            assert not worker.events(ACK_LOST)
            return
        lost = worker.events(ACK_LOST)
        assert len(lost) == 1 and lost[0]["task_id"] == result.id  # type: ignore[attr-defined]
        assert (lost[0]["level"], lost[0]["shard"], lost[0]["phase"], lost[0]["run_id"]) == (
            "warning",
            2,
            "plan",
            run_id,
        )
        assert lost[0]["next"] == "redelivery, skipped by the completion record (codex.phase.skipped)"
        assert "ConnectionError" in lost[0]["reason"]
        assert not celerys and not tracebacks, "a traceback in the worker's log"
    finally:
        broker.close()


def _job_state(docker_client: object, container_id: str) -> dict[str, object]:
    return docker_client.containers.get(container_id).attrs["State"]  # type: ignore[attr-defined, no-any-return]


@pytest.mark.parametrize(
    ("kind", "harvest"),
    [("rabbitmq", True), ("redis", True), ("rabbitmq", False)],
    ids=["harvested-rabbitmq", "harvested-redis", "without-the-harvest-runs-twice"],
)
def test_a_job_that_exits_while_its_worker_is_dead_completes_the_phase_once(
    lab: PhaseLab,
    standin: StandIn,
    backend_url: str,
    docker_client: object,
    kind: str,
    harvest: bool,
    request: pytest.FixtureRequest,
) -> None:
    """The worker is killed (SIGKILL) mid-job; the job exits 0 while it is down; the restarted worker
    harvests it: one Codex run, and the redelivered task returns the first run's result (RabbitMQ
    redelivers at the kill, Redis after the visibility timeout). Without the harvest (the unprotected
    variant) the redelivered task runs Codex a second time."""
    import worker_entry.tasks  # noqa: F401

    url: str = request.getfixturevalue("rabbitmq_vhost" if kind == "rabbitmq" else "redis_url")
    if kind == "redis":
        BrokerView(url).purge()
    publisher = create_app(load({"CELERY_BROKER_URL": url}), result_backend=backend_url)
    shard = lab.shard(1)
    name = f"cwa_test_harvest_{kind}_{'on' if harvest else 'off'}"
    env = {"AGENT_WORKER_NAME": name, "CELERY_VISIBILITY_TIMEOUT": "10"}
    if not harvest:
        env.update(lab.site("unharvested-site", UNHARVESTED_SITE))
    run_id = f"cwa-once-exited-{kind}-{'on' if harvest else 'off'}"
    first = lab.ready_worker(shard, url, backend_url, **env)
    standin.script.push(Behaviour("delay", seconds=6))
    result = send_phase(publisher, 1, run_id)
    started = first.wait_for("codex.job.started", timeout=60, run_id=run_id)[0]
    first.container.kill()  # SIGKILL: no ack; the job (the guard's) runs on
    wait_until(
        lambda: _job_state(docker_client, started["container_id"])["Status"] == "exited",
        120,
        what="the job to exit while its worker is dead",
    )
    assert _job_state(docker_client, started["container_id"])["ExitCode"] == 0

    second = lab.ready_worker(shard, url, backend_url, **env)
    outcome = result.get(timeout=180)["job"]  # type: ignore[attr-defined]
    recorded = json.loads((lab.artifacts / run_id / "plan" / "outcome.json").read_text())
    if kind == "redis":
        BrokerView(url).purge()
    if not harvest:
        assert len(standin.script.calls()) == 2, "the unprotected variant must run Codex again"
        assert outcome["container_id"] != started["container_id"] and not outcome.get("skipped")
        return
    assert len(standin.script.calls()) == 1, "the phase ran Codex twice"
    assert outcome["skipped"] is True and outcome["container_id"] == started["container_id"]
    assert outcome["harvested"] in ("reconcile", "redelivery") and outcome["status"] == "completed"
    assert recorded["container_id"] == started["container_id"] and recorded["session_id"] == outcome["session_id"]
    skipped = second.wait_for("codex.phase.skipped", timeout=30, run_id=run_id)[0]
    assert skipped["reason"] == "duplicate delivery"
    finished = second.wait_for("codex.job.finished", timeout=60, container_id=started["container_id"])
    assert len(finished) == 1 and finished[0]["reconciled"] is True
    assert finished[0]["harvested"] in ("completed", "recorded_earlier")
    assert not second.events("codex.job.started", run_id=run_id)
    wait_until(
        lambda: (
            not docker_client.containers.list(  # type: ignore[attr-defined]
                all=True, filters={"id": started["container_id"]}
            )
        ),
        30,
        what="the harvested job removed",
    )


def test_a_job_still_running_when_its_worker_returns_is_awaited_not_run_twice(
    lab: PhaseLab,
    standin: StandIn,
    rabbitmq_vhost: str,
    backend_url: str,
    docker_client: object,
) -> None:
    """The worker is killed mid-job and back before the job ends: the job is waited for and harvested;
    one Codex run, whose result the redelivered task returns; the job is removed once."""
    import worker_entry.tasks  # noqa: F401

    publisher = create_app(load({"CELERY_BROKER_URL": rabbitmq_vhost}), result_backend=backend_url)
    shard = lab.shard(1)
    name = "cwa_test_once_worker"
    run_id = "cwa-once-kill"
    first = lab.ready_worker(shard, rabbitmq_vhost, backend_url, AGENT_WORKER_NAME=name)
    standin.script.push(Behaviour("delay", seconds=40))  # still at work when the worker is back
    result = send_phase(publisher, 1, run_id)
    started = first.wait_for("codex.job.started", timeout=60, run_id=run_id)[0]
    first.container.kill()  # SIGKILL: no warm shutdown, no ack, no release

    second = lab.ready_worker(shard, rabbitmq_vhost, backend_url, AGENT_WORKER_NAME=name)
    assert _job_state(docker_client, started["container_id"])["Status"] == "running", "the scenario did not happen"
    outcome = result.get(timeout=180)["job"]  # type: ignore[attr-defined]

    assert outcome["status"] == "completed" and outcome["container_id"] == started["container_id"]
    assert outcome["skipped"] is True
    assert len(standin.script.calls()) == 1, "the phase ran Codex twice"
    assert second.events("codex.reconcile.awaiting", container_id=started["container_id"]) or second.events(
        "codex.phase.awaiting", container_id=started["container_id"]
    )
    finished = second.wait_for("codex.job.finished", timeout=60, container_id=started["container_id"])
    assert len(finished) == 1 and finished[0]["killed"] is False
    wait_until(
        lambda: (
            not docker_client.containers.list(  # type: ignore[attr-defined]
                all=True, filters={"id": started["container_id"]}
            )
        ),
        30,
        what="the harvested job removed",
    )
    recorded = json.loads((lab.artifacts / run_id / "plan" / "outcome.json").read_text())
    assert recorded["task_id"] == outcome["task_id"] and recorded["container_id"] == outcome["container_id"]
