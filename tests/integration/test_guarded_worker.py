"""A real worker behind the Docker API guard: the guard going away is CODEX-E040, never a lost task or a
login failure, and its restart heals the worker with no restart; the container login check works
through the guard. Real workers (worker image, host network), a real broker, the real engine and
Codex CLI; the guard is the only holder of the socket.
"""

from __future__ import annotations

from typing import Any

import pytest
from celery import Celery

from testkit.phases import PhaseLab
from testkit.workers import BrokerView, keys_for_shard, wait_until

pytestmark = [pytest.mark.docker, pytest.mark.codex, pytest.mark.broker]

PHASE_TIMEOUT_S = 90


def probe(publisher: Celery, key: str, run_id: str) -> Any:
    """A phase without a prompt: `codex login status` in a job container of the shard."""
    return publisher.send_task("codex.phase", kwargs={"affinity_key": key, "run_id": run_id, "phase": "probe"})


@pytest.mark.parametrize("broker_url", ["redis"], indirect=True)
class TestGuardedWorker:
    def test_a_guard_outage_requeues_the_phase_and_its_restart_heals_the_worker(
        self,
        lab: PhaseLab,
        broker: BrokerView,
        broker_url: str,
        backend_url: str,
        publisher: Celery,
    ) -> None:
        """Guard stopped: the phase goes back to its queue with E040 (not failed, not a login error, the
        gate stays open); guard started again: the same worker completes it, never restarted."""
        shard = lab.shard(0)
        guard = lab.guard(shard)
        worker = lab.ready_worker(shard, broker_url, backend_url, guard=guard)
        key = keys_for_shard(0, 1)[0]
        assert probe(publisher, key, "cwa-guard-a").get(timeout=PHASE_TIMEOUT_S)["job"]["exit_code"] == 0
        started_at = worker.container.attrs["State"]["StartedAt"]

        guard.stop()
        pending = probe(publisher, key, "cwa-guard-b")
        requeued = worker.wait_for("codex.run.requeued", timeout=PHASE_TIMEOUT_S, code="CODEX-E040")
        assert requeued[0]["retry_in_s"] == 1.0 and "cwa-guard-b" == requeued[0]["run_id"]
        assert not pending.ready() and worker.status()["state"]["gate"] == "open"

        guard.start()
        result = pending.get(timeout=PHASE_TIMEOUT_S)
        assert result["job"]["exit_code"] == 0 and result["run_id"] == "cwa-guard-b"
        worker.container.reload()
        assert (
            worker.container.attrs["State"]["StartedAt"] == started_at and worker.container.attrs["RestartCount"] == 0
        )
        assert len(worker.events("codex.job.finished", run_id="cwa-guard-b")) == 1
        assert guard.events("codex.guard.created", run_id="cwa-guard-b")

    def test_the_container_login_check_runs_through_the_guard(
        self,
        lab: PhaseLab,
        broker: BrokerView,
        broker_url: str,
        backend_url: str,
    ) -> None:
        """CODEX_LOGIN_CHECK=container: the throwaway check container is created through the shard's
        endpoint (network none, the shard's login) and the gate opens."""
        shard = lab.shard(1)
        guard = lab.guard(shard)
        worker = lab.ready_worker(
            shard,
            broker_url,
            backend_url,
            guard=guard,
            CODEX_LOGIN_CHECK="container",
            CODEX_LOGIN_CHECK_IMAGE=lab.job_image,
        )
        checks = wait_until(
            lambda: guard.events("codex.guard.created", network="none"), 30, what="a login-check container"
        )
        assert checks[0]["binds"][0] == f"{shard.volume}:/home/app/.codex:rw" and checks[0]["shard"] == 1
        assert worker.status()["state"]["gate"] == "open"
        assert not guard.events("codex.guard.refused")
