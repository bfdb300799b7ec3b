"""Codex runs written as plain Celery chains (issue 15), with real workers, real brokers, real
PostgreSQL as the result backend and the OpenAI stand-in.

* A 4-phase chain (immutable and partial signatures, a non-Codex step in the middle) stays on the
  shard that took its first phase, in both queue modes and on both brokers, with no pin written by
  hand; later phases resume the first phase's Codex session; results are read back from PostgreSQL
  after every worker stopped, and hold no token.
* Single mode: a group inside a chain runs every member on the shard that took the chain's first step
  (two chains, two workers, each worker took a first step); a worker without ``agent.routing.chains``'
  re-routing takes the members from the shared ``codex`` queue instead.
* A phase failing on its second attempt calls ``link_error`` once with its code; the same run
  submitted again skips the completed phase (no model call for it) and starts at the failed one.
* A pool process killed with ``kill -9`` mid-chain: the chain completes, no completed phase runs again.
* A login revoked mid-chain: the step is requeued (CODEX-E034) and the gate closes, with no retry
  spent and no ``link_error``; the volume's re-login completes the chain.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from celery import Celery, chain, group
from celery.result import AsyncResult
from kombu import Connection, Queue

import worker_entry.tasks  # noqa: F401  (the publisher knows the shared tasks)
from agent.settings.config import load
from openai_standin import Behaviour, StandIn
from testkit.phases import ARTIFACTS_IN_WORKER, ContainerWorker, PhaseLab
from testkit.postgres import postgres_backend_or_skip, result_rows
from testkit.workers import BrokerView, WorkerFactory, keys_for_shard, wait_until
from worker_entry.app import create_app

pytestmark = [pytest.mark.docker, pytest.mark.codex, pytest.mark.broker]

TIMEOUT_S = 180
PHASES = ("plan", "build", "test", "review")
MODES = {"sharded": {"CODEX_SHARDS": "2"}, "single": {"CODEX_SHARDS": "2", "CODEX_QUEUE_MODE": "single"}}


@pytest.fixture
def pg_backend() -> str:
    return postgres_backend_or_skip()


def app_for(broker_url: str, backend: str, env: dict[str, str]) -> Celery:
    return create_app(load({"CELERY_BROKER_URL": broker_url, **env}), result_backend=backend)


def step(app: Celery, key: str, run_id: str, phase: str, *, partial: bool = False, **extra: Any) -> Any:
    """One Codex phase as a signature, by name: immutable (``.si``) or partial (``.s``)."""
    kwargs = {"affinity_key": key, "run_id": run_id, "phase": phase, "prompt": f"PHASE={phase} of {run_id}", **extra}
    return app.signature("codex.step", kwargs=kwargs, immutable=not partial)


def four_phases(app: Celery, key: str, run_id: str, *, with_plain_step: bool = False, **extra: dict[str, Any]) -> Any:
    """plan (.si), [housekeeping], build (.s), test (.si), review (.s); ``extra[phase]`` adds kwargs."""
    steps = [
        step(app, key, run_id, name, partial=name in ("build", "review"), **extra.get(name, {})) for name in PHASES
    ]
    if with_plain_step:
        steps.insert(1, app.signature("housekeeping", args=("between phases",), immutable=True))
    return chain(*steps)


def chain_results(last: AsyncResult) -> list[AsyncResult]:
    """Every result of a chain, first step first."""
    found = []
    node: AsyncResult | None = last
    while node is not None:
        found.append(node)
        node = node.parent
    return list(reversed(found))


def outcome(lab: PhaseLab, run_id: str, phase: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((lab.artifacts / run_id / phase / "outcome.json").read_text())
    return data


def last_texts(standin: StandIn) -> list[str]:
    return [call.texts[-1] for call in standin.script.calls()]


@pytest.mark.parametrize("mode", list(MODES))
def test_a_four_phase_chain_stays_on_one_shard_and_its_results_outlive_the_workers(
    mode: str,
    lab: PhaseLab,
    standin: StandIn,
    broker: BrokerView,
    broker_url: str,
    pg_backend: str,
    workers: WorkerFactory,
) -> None:
    """No pin by hand: every Codex phase on the first phase's shard, sessions resumed, results in PostgreSQL."""
    env = MODES[mode]
    codex_workers = [lab.ready_worker(lab.shard(i), broker_url, pg_backend, **env) for i in (0, 1)]
    plain = workers(CELERY_RESULT_BACKEND=pg_backend, **env)  # the default queue's worker
    publisher = app_for(broker_url, pg_backend, env)
    run_id = f"cwa-chain-{mode}-{uuid.uuid4().hex[:6]}"  # a run's workspace volume is named by it
    key = keys_for_shard(1, 1, shards=2)[0]

    last = four_phases(publisher, key, run_id, with_plain_step=True).apply_async(
        link_error=publisher.signature("codex.run_failed")
    )
    final = last.get(timeout=TIMEOUT_S)
    results = [r.get(timeout=10) for r in chain_results(last)]
    codex_results = [r for r in results if "job" in r]
    plain_result = next(r for r in results if "label" in r)

    assert [r["phase"] for r in codex_results] == list(PHASES) and final["phase"] == "review"
    shards = {r["shard"] for r in codex_results}
    assert len(shards) == 1, f"the run hopped between logins: {[(r['phase'], r['shard']) for r in codex_results]}"
    shard = shards.pop()
    if mode == "sharded":
        assert shard == 1 and {r["queue"] for r in codex_results} == {"codex-1"}
    else:
        assert [r["queue"] for r in codex_results] == ["codex", *[f"codex-{shard}"] * 3]
    assert plain_result["queue"] == "default", "a non-Codex step stays on the default queue"
    assert codex_results[1]["after"] is None and codex_results[3]["after"] == "test", "partial steps got their input"

    owner = codex_workers[shard]
    audits = owner.events("codex.run.audit", run_id=run_id)
    assert [a["shard"] for a in audits] == [shard] * 4 and {a["volume"] for a in audits} == {lab.shards[shard].volume}
    assert not codex_workers[1 - shard].events("codex.run.audit", run_id=run_id)
    assert owner.events("codex.chain.pinned", run_id=run_id, to_queue=f"codex-{shard}")

    outcomes = [outcome(lab, run_id, name) for name in PHASES]
    assert outcomes[0]["resumed_session"] is None
    for before, after in zip(outcomes, outcomes[1:], strict=False):
        assert after["resumed_session"] == before["session_id"], "a later phase did not resume the run's session"
    calls = standin.script.calls()
    assert len(calls) == 4 and {c.family for c in calls} == {lab.shards[shard].tokens.family}  # type: ignore[union-attr]
    assert all(any(f"PHASE=plan of {run_id}" in t for t in c.texts) for c in calls), "the session's history was lost"

    for worker in codex_workers:
        worker.container.stop(timeout=30)  # stopped, not removed: the lab keeps its logs until teardown
    plain.stop()
    reader = app_for(broker_url, pg_backend, env)
    ids = [r.id for r in chain_results(last)]
    assert [AsyncResult(i, app=reader).get(timeout=10)["phase"] for i in ids if i != chain_results(last)[1].id] == list(
        PHASES
    )
    rows = result_rows(ids)
    assert {status for status, _ in rows.values()} == {"SUCCESS"} and len(rows) == 5
    stored = b"".join(blob for _, blob in rows.values())
    for login in lab.shards:
        for secret in (login.tokens.access_token, login.tokens.refresh_token, login.tokens.id_token):  # type: ignore[union-attr]
            assert secret.encode() not in stored, "a result holds a token"


UNPINNED_SITE = """\
# The unprotected variant of a test in tests/integration/test_chains.py: a worker whose Codex tasks
# no longer re-route the rest of their chain (agent.worker.task imports this name from agent.routing.chains).
import agent.routing.chains
agent.routing.chains.keep_chain_on_shard = lambda task, config: agent.routing.chains.own_queue(config)
"""


def chain_with_group(app: Celery, key: str, run_id: str, **first: Any) -> Any:
    """``chain(plan, group(review-b, review-c))``: each member its own run (no shared session), one key."""
    members = [step(app, key, f"{run_id}-{side}", f"review-{side}") for side in ("b", "c")]
    return chain(step(app, key, run_id, "plan", **first), group(*members))


def test_single_mode_a_group_inside_a_chain_stays_on_the_first_steps_shard(
    lab: PhaseLab,
    standin: StandIn,
    redis_url: str,
    pg_backend: str,
) -> None:
    """Single mode, two workers, two chains ``chain(plan, group(review-b, review-c))`` published at once.

    Each plan holds 3 s, and a worker takes one task at a time (concurrency 1, prefetch 1, late
    ack), so the two plans go to the two workers from the shared ``codex`` queue: both workers take
    work from it. Every group member must then run on its chain's plan shard and volume, delivered
    from that shard's own ``codex-N`` queue, which the other worker does not consume.

    What would break: without ``agent.routing.chains`` every member is published to the shared ``codex``
    queue, where either worker takes it, so a member may run under the other login (another
    account's quota and ``CODEX_HOME``, not the run's). The last part runs that variant, a worker
    whose ``keep_chain_on_shard`` is replaced (``UNPINNED_SITE``) with no re-routing: its chain's
    members are delivered from ``codex`` and no ``codex.chain.pinned`` line is logged.
    """
    broker = BrokerView(redis_url)
    broker.purge()
    env = MODES["single"]
    codex_workers = [lab.ready_worker(lab.shard(i), redis_url, pg_backend, **env) for i in (0, 1)]
    publisher = app_for(redis_url, pg_backend, env)
    key, tag = "repo-group", uuid.uuid4().hex[:6]
    run_ids = [f"cwa-chain-group-{tag}-{n}" for n in (1, 2)]

    lasts = [chain_with_group(publisher, key, run_id, hold_s=3).apply_async() for run_id in run_ids]
    members = [last.get(timeout=TIMEOUT_S) for last in lasts]
    plans = [last.parent.get(timeout=10) for last in lasts]

    assert [p["queue"] for p in plans] == ["codex", "codex"] and {p["shard"] for p in plans} == {0, 1}, (
        f"both workers take a chain's first step from the shared queue: {[(p['run_id'], p['shard']) for p in plans]}"
    )
    for run_id, plan, pair in zip(run_ids, plans, members, strict=False):
        shard = plan["shard"]
        volume = lab.shards[shard].volume
        assert [m["run_id"] for m in pair] == [f"{run_id}-b", f"{run_id}-c"]
        assert [(m["shard"], m["volume"], m["queue"]) for m in pair] == [(shard, volume, f"codex-{shard}")] * 2, (
            f"a group member left its chain's shard {shard}: {[(m['phase'], m['shard'], m['queue']) for m in pair]}"
        )
        assert plan["volume"] == volume
        owner, other = codex_workers[shard], codex_workers[1 - shard]
        assert owner.events("codex.chain.pinned", run_id=run_id, pinned_steps=2, to_queue=f"codex-{shard}")
        for member in (run_id, f"{run_id}-b", f"{run_id}-c"):
            audits = owner.events("codex.run.audit", run_id=member)
            assert [(a["shard"], a["volume"]) for a in audits] == [(shard, volume)], member
            assert not other.events("codex.run.audit", run_id=member), f"{member} ran on the other login"
        for side in ("b", "c"):
            assert outcome(lab, f"{run_id}-{side}", f"review-{side}")["status"] == "completed"
    calls = standin.script.calls()
    assert len(calls) == 6
    families = {login.index: login.tokens.family for login in lab.shards}  # type: ignore[union-attr]
    for run_id, plan in zip(run_ids, plans, strict=False):
        mine = [c.family for c in calls if any(f" of {run_id}" in t for t in c.texts)]
        assert mine == [families[plan["shard"]]] * 3, f"{run_id}: model calls on another login"

    # The unprotected variant: one worker without the re-routing, the same canvas.
    for worker in codex_workers:
        worker.container.stop(timeout=30)  # stopped, not removed: the lab keeps its logs until teardown
    site = lab.artifacts / "unpinned-site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(UNPINNED_SITE)
    bare = lab.ready_worker(
        lab.shards[0], redis_url, pg_backend, PYTHONPATH=f"{ARTIFACTS_IN_WORKER}/unpinned-site", **env
    )
    run_id = f"cwa-chain-group-{tag}-bare"
    last = chain_with_group(publisher, key, run_id).apply_async()
    pair = last.get(timeout=TIMEOUT_S)
    assert last.parent.get(timeout=10)["queue"] == "codex"
    assert [m["queue"] for m in pair] == ["codex", "codex"], (
        "the members were re-routed: the variant is not unprotected"
    )
    assert not bare.events("codex.chain.pinned", run_id=run_id)
    broker.purge()


def test_a_phase_failing_twice_calls_link_error_once_and_the_resubmitted_run_starts_at_it(
    lab: PhaseLab,
    standin: StandIn,
    redis_url: str,
    pg_backend: str,
) -> None:
    """Single mode, two workers: E042 retried once with backoff, then link_error once with the code and
    the shard; the run re-submitted pinned to that shard skips plan (no model call) and starts at build."""
    broker = BrokerView(redis_url)
    broker.purge()
    env = {**MODES["single"], "CODEX_JOB_RETRIES": "1", "CODEX_JOB_RETRY_BACKOFF": "1"}
    codex_workers = [lab.ready_worker(lab.shard(i), redis_url, pg_backend, **env) for i in (0, 1)]
    publisher = app_for(redis_url, pg_backend, MODES["single"])
    key, run_id = "repo-fails", f"cwa-chain-fail-{uuid.uuid4().hex[:6]}"
    standin.script.push(Behaviour("reply"), Behaviour("fail", status=400), Behaviour("fail", status=400))

    first = four_phases(publisher, key, run_id).apply_async(link_error=publisher.signature("codex.run_failed"))
    with pytest.raises(Exception, match="CODEX-E042"):
        first.get(timeout=TIMEOUT_S, propagate=True)

    def failures() -> list[dict[str, Any]]:
        return [line for w in codex_workers for line in w.events("codex.run.failed", run_id=run_id)]

    failed = wait_until(failures, 30, what="the link_error callback")
    shard = failed[0]["shard"]
    worker = codex_workers[shard]
    assert len(standin.script.calls()) == 3, "plan once, build twice (the first attempt and its one retry)"
    assert worker.events("codex.run.retrying", run_id=run_id, code="CODEX-E042", retry=1)
    assert failed[0]["code"] == "CODEX-E042" and failed[0]["kind"] == "job" and failed[0]["phase"] == "build"
    assert failed[0]["retries"] == 1 and failed[0]["queue"] == f"codex-{shard}"
    assert not (lab.artifacts / run_id / "build" / "outcome.json").exists()

    again = four_phases(publisher, key, run_id, plan={"codex_shard": shard}).apply_async(
        link_error=publisher.signature("codex.run_failed")
    )
    assert again.get(timeout=TIMEOUT_S)["phase"] == "review"
    texts = last_texts(standin)
    assert len(texts) == 6 and [t.split(" ")[0] for t in texts[3:]] == ["PHASE=build", "PHASE=test", "PHASE=review"]
    assert sum(f"PHASE=plan of {run_id}" in t for t in texts) == 1, "the completed phase ran again"
    assert worker.events("codex.phase.skipped", run_id=run_id, phase="plan", reason="completed earlier")
    assert len(worker.events("codex.run.audit", run_id=run_id)) == 2 + 2 + 3, (
        "plan twice (once skipped), build three times, test and review once"
    )
    assert not codex_workers[1 - shard].events("codex.run.audit", run_id=run_id)
    assert outcome(lab, run_id, "build")["resumed_session"] == outcome(lab, run_id, "plan")["session_id"]
    assert len(failures()) == 1, "link_error more than once"
    broker.purge()


POOL_CHILDREN = r"""
import os
procs = {}
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        ppid = int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1])
        procs[int(pid)] = (ppid, open(f"/proc/{pid}/cmdline", "rb").read())
    except OSError:
        pass
print(" ".join(str(p) for p, (pp, cmd) in procs.items() if pp in procs and procs[pp][1] == cmd and b"worker-entry" in cmd))
"""


def pool_children(worker: ContainerWorker) -> list[str]:
    """Pids of the worker's pool processes (forks of worker-entry), inside its container."""
    code, output = worker.container.exec_run(["python3", "-c", POOL_CHILDREN])
    assert code == 0, output
    return output.decode().split()


def test_a_pool_process_killed_mid_chain_the_chain_completes_and_no_completed_phase_runs_twice(
    lab: PhaseLab,
    standin: StandIn,
    rabbitmq_url: str,
    pg_backend: str,
) -> None:
    """kill -9 while build holds its finished phase: redelivered, build skipped, test and review run."""
    broker = BrokerView(rabbitmq_url)
    broker.purge()
    worker = lab.ready_worker(lab.shard(0), rabbitmq_url, pg_backend)
    publisher = app_for(rabbitmq_url, pg_backend, {})
    run_id = f"cwa-chain-kill-{uuid.uuid4().hex[:6]}"
    last = four_phases(publisher, keys_for_shard(0, 1)[0], run_id, build={"hold_s": 60}).apply_async()

    done = lab.artifacts / run_id / "build" / "outcome.json"
    wait_until(done.exists, TIMEOUT_S, what="build completed (and holding)")
    build_before = outcome(lab, run_id, "build")
    children = pool_children(worker)
    assert len(children) == 1, children
    code, output = worker.container.exec_run(["python3", "-c", f"import os; os.kill({int(children[0])}, 9)"])  # kill -9
    assert code == 0, output

    assert last.get(timeout=TIMEOUT_S)["phase"] == "review"
    texts = last_texts(standin)
    assert [t.split(" ")[0] for t in texts] == ["PHASE=plan", "PHASE=build", "PHASE=test", "PHASE=review"]
    assert pool_children(worker) != children, "the pool process was not replaced"
    skipped = worker.events("codex.phase.skipped", run_id=run_id, phase="build")
    assert len(skipped) == 1 and skipped[0]["reason"] == "duplicate delivery"
    assert outcome(lab, run_id, "build") == build_before and outcome(lab, run_id, "plan")["status"] == "completed"
    assert len(worker.events("codex.run.audit", run_id=run_id)) == 5, "build delivered twice, every other phase once"
    broker.purge()


def queued_headers(broker_url: str, queue: str) -> list[dict[str, Any]]:
    """Celery headers (id, task, retries) of the messages waiting in ``queue``; each is put back."""
    found, held = [], []
    with Connection(broker_url, connect_timeout=5) as connection:
        bound_queue = Queue(queue, durable=True)(connection.default_channel)
        while (message := bound_queue.get(no_ack=False)) is not None:
            found.append(dict(message.headers))
            held.append(message)
        for message in held:
            message.requeue()
    return found


def test_a_login_revoked_mid_chain_requeues_the_step_without_spending_a_retry_and_the_relogin_completes_the_chain(
    lab: PhaseLab,
    standin: StandIn,
    broker: BrokerView,
    broker_url: str,
    pg_backend: str,
) -> None:
    """Issue 15: "a login problem never consumes a retry: the task is requeued and the gate closes".

    plan runs, then its family is revoked at the stand-in while plan holds; build meets the dead login
    inside ``codex exec`` (pre-flight's ``login status`` still passes) and must be requeued as it was
    published: the very message back in ``codex-1`` with ``retries`` 0, no ``codex.run.retrying``, no
    ``link_error`` (``codex.run.failed``) although ``CODEX_JOB_RETRIES`` is 1, and the gate closed on
    CODEX-E034. The volume's re-login then completes the chain with that same message.

    What makes it fail: ``CodexTask.__call__`` (agent/worker/preflight.py) sending ``LoginError`` down the
    ``JobFailedError`` path (``self.retry`` with backoff) instead of ``PreflightRejected``. Tried once
    in a worker image derived with that change: build logged ``codex.run.retrying`` (CODEX-E034),
    was republished with ``retries`` 1, met the dead login again a second later, and the second E034
    used up ``CODEX_JOB_RETRIES``: ``codex.run.failed`` (kind ``login``, retries 1), the run lost
    before the operator could log in. This test failed at its first assertion on the login outcome.
    """
    env = {**MODES["sharded"], "CODEX_JOB_RETRIES": "1", "CODEX_JOB_RETRY_BACKOFF": "1"}
    shard = lab.shard(1)
    worker = lab.ready_worker(shard, broker_url, pg_backend, **env)
    publisher = app_for(broker_url, pg_backend, MODES["sharded"])
    key, run_id = keys_for_shard(1, 1, shards=2)[0], f"cwa-chain-revoked-{uuid.uuid4().hex[:6]}"
    dead = shard.tokens
    assert dead is not None

    last = chain(
        step(publisher, key, run_id, "plan", hold_s=4), step(publisher, key, run_id, "build", partial=True)
    ).apply_async(link_error=publisher.signature("codex.run_failed"))
    wait_until(
        (lab.artifacts / run_id / "plan" / "outcome.json").exists, TIMEOUT_S, what="plan completed (and holding)"
    )
    standin.authority.revoke(dead.family)  # while plan holds: build is the phase that meets it

    def login_outcome() -> list[dict[str, Any]]:
        events = ("codex.run.requeued", "codex.run.retrying", "codex.run.failed")
        if (lab.artifacts / run_id / "build" / "outcome.json").exists():
            raise AssertionError("build completed: the revoke came after its model call (plan's hold too short)")
        return [line for name in events for line in worker.events(name, run_id=run_id)]

    outcome_lines = wait_until(login_outcome, TIMEOUT_S, what="build meeting the revoked login")
    assert [(line["event"], line.get("code")) for line in outcome_lines] == [("codex.run.requeued", "CODEX-E034")], (
        "a login problem was treated as a failure (retried or failed) instead of requeued"
    )
    build_id = outcome_lines[0]["task_id"]
    wait_until(lambda: broker.count("codex-1") == 1, 30, what="build back in codex-1")
    waiting = queued_headers(broker_url, "codex-1")
    assert [(h["id"], h["task"], h["retries"]) for h in waiting] == [(build_id, "codex.step", 0)], "a retry was spent"
    wait_until(
        lambda: (
            (s := worker.status())["state"]["gate"] == "closed"
            and [r["code"] for r in s["state"]["reason"]] == ["CODEX-E034"]
        ),
        30,
        what="the gate closed on CODEX-E034",
    )
    assert not last.ready() and AsyncResult(build_id, app=publisher).state != "RETRY"

    fresh = lab.login(shard)  # the runbook's re-login of this one volume
    final = last.get(timeout=TIMEOUT_S)
    assert final["phase"] == "build" and final["task_id"] == build_id and final["after"] == "plan"
    assert outcome(lab, run_id, "build")["resumed_session"] == outcome(lab, run_id, "plan")["session_id"]
    stats = standin.authority.stats()
    assert stats[dead.family].model_calls == 1 and stats[fresh.family].model_calls == 1, (
        "plan on the old login, build on the new"
    )
    assert not worker.events("codex.run.retrying", run_id=run_id) and not worker.events(
        "codex.run.failed", run_id=run_id
    )
    assert not [
        line for line in worker.lines() if build_id in (e := str(line.get("event", ""))) and "retry" in e.lower()
    ], "Celery logged a retry of build"
    assert [a["task_id"] for a in worker.events("codex.run.audit", run_id=run_id)].count(build_id) == 2, (
        "build ran twice as one message: once requeued, once completed"
    )
    assert worker.status()["state"]["gate"] == "open"
