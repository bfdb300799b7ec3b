"""The login lifecycle at scale, and the test of the test.

* Steady state: 180 real Codex phases over 3 shards whose access tokens keep entering Codex's
  refresh window, so every shard refreshes many times; the stand-in must see no reuse, no login
  made again, and each volume must hold its family's newest token.
* Without the agent: one login copied into two volumes, used by two raw job containers, reproduces
  ``refresh_token_reused`` at the stand-in and kills the family for both copies.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import pytest
from celery import Celery

from openai_standin import StandIn
from testkit.phases import APP_UID, JOB_HOME, PhaseLab
from testkit.workers import BrokerView, keys_for_shard

pytestmark = [pytest.mark.docker, pytest.mark.codex, pytest.mark.broker]

SHARDS = 3
PHASES = 180
ACCESS_TTL = 305.0  # enters Codex's 5-minute refresh window 5 s after each refresh


@pytest.mark.parametrize("broker_url", ["redis"], indirect=True)
def test_steady_state_180_phases_over_3_shards_refresh_without_a_single_reuse(
    lab: PhaseLab,
    standin: StandIn,
    broker: BrokerView,
    broker_url: str,
    backend_url: str,
    publisher: Celery,
) -> None:
    """Every phase completes on its shard's login; refreshes happen, reuse never does."""
    shards = [lab.shard(i, access_ttl=ACCESS_TTL) for i in range(SHARDS)]
    families = {s.tokens.family: s for s in shards if s.tokens}
    workers = [lab.worker(s, broker_url, backend_url) for s in shards]
    for worker in workers:
        worker.wait_for("codex.agent.ready", timeout=90, gate="open")
    time.sleep(6)  # every stored token is inside the refresh window now
    keys = {i: keys_for_shard(i, PHASES // SHARDS) for i in range(SHARDS)}
    results = [
        publisher.send_task(
            "codex.phase",
            kwargs={"affinity_key": key, "run_id": f"cwa-steady-{i}-{n}", "phase": "plan", "prompt": f"phase {n}"},
        )
        for i in range(SHARDS)
        for n, key in enumerate(keys[i])
    ]
    outcomes = [r.get(timeout=600)["job"] for r in results]

    assert len(outcomes) == PHASES and all(o["status"] == "completed" for o in outcomes)
    per_shard = Counter(o["shard"] for o in outcomes)
    assert per_shard == {i: PHASES // SHARDS for i in range(SHARDS)}
    stats = standin.authority.stats()
    assert set(stats) == set(families), "a login was made again"
    for name, shard in families.items():
        family = stats[name]
        assert family.reuses == 0 and family.revocations == 0 and family.revoked is None
        assert family.model_calls == per_shard[shard.index], "model calls do not match the shard's phases"
        assert family.refreshes >= 3, f"shard {shard.index} refreshed only {family.refreshes} times"
        newest = standin.authority.current(name)
        assert shard.auth()["tokens"]["refresh_token"] == newest.refresh_token, "the volume lost its newest token"


def test_without_the_agent_a_copied_login_dies_of_refresh_token_reused(
    lab: PhaseLab,
    standin: StandIn,
    docker_client: Any,
    images: Any,
) -> None:
    """The unprotected lifecycle: two volumes with one login, raw containers.run, no agent."""
    original = lab.shard(0, access_ttl=ACCESS_TTL)
    copy = lab.shard(1, login=False)
    lab.copy_login(original, copy)
    assert original.tokens is not None
    time.sleep(6)

    def raw_phase(volume: str) -> int:
        container = docker_client.containers.run(
            images.job,
            ["codex", "exec", "--json", "--skip-git-repo-check", "-C", "/tmp", "hello"],
            detach=True,
            user=f"{APP_UID}:{APP_UID}",
            network_mode="host",
            environment={"CODEX_HOME": JOB_HOME, "CODEX_REFRESH_TOKEN_URL_OVERRIDE": standin.refresh_url},
            volumes={volume: {"bind": JOB_HOME, "mode": "rw"}},
            labels={"codex.volume": volume},
        )
        try:
            return int(container.wait(timeout=120)["StatusCode"])
        finally:
            container.remove(force=True)

    assert raw_phase(original.volume) == 0  # refreshes: the copy now holds a used refresh token
    assert raw_phase(copy.volume) != 0
    family = standin.authority.stats()[original.tokens.family]
    assert family.reuses >= 1 and family.revoked == "refresh_token_reused"
    assert raw_phase(original.volume) != 0, "reuse revokes the whole family: the original dies too"


def test_with_the_agent_a_copied_login_is_stopped_before_any_refresh(
    lab: PhaseLab,
    standin: StandIn,
    broker: BrokerView,
    broker_url: str,
    backend_url: str,
    publisher: Celery,
) -> None:
    """The same copy as above, now behind the agent: the copy's worker is refused (CODEX-E013), 0 reuse."""
    original = lab.shard(0, access_ttl=ACCESS_TTL)
    copy = lab.shard(1, login=False)
    lab.copy_login(original, copy)
    assert original.tokens is not None
    holder = lab.ready_worker(original, broker_url, backend_url)
    refused = lab.worker(copy, broker_url, backend_url)
    failure = refused.wait_for("codex.check.failed", timeout=90, code="CODEX-E013")[0]
    assert holder.name in failure["error"], "the refusal must name the worker holding the login"
    time.sleep(6)  # both copies are inside the refresh window now

    waiting = publisher.send_task(
        "codex.phase",
        kwargs={"affinity_key": keys_for_shard(1, 1)[0], "run_id": "cwa-copy-1", "phase": "plan", "prompt": "copy"},
    )
    done = publisher.send_task(
        "codex.phase",
        kwargs={"affinity_key": keys_for_shard(0, 1)[0], "run_id": "cwa-copy-0", "phase": "plan", "prompt": "original"},
    )
    assert done.get(timeout=120)["job"]["status"] == "completed"

    family = standin.authority.stats()[original.tokens.family]
    assert family.refreshes >= 1, "the original refreshed: its copy now holds a spent refresh token"
    assert family.reuses == 0 and family.revoked is None
    assert refused.status()["state"]["gate"] == "closed" and not waiting.ready()
    assert broker.count("codex-1") == 1, "the copy's task waits, untouched"
