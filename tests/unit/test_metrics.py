"""Metrics from audit events: the real structlog chain, real auth.json files, real forked processes."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from agent.jobs.codex_output import summarize
from agent.jobs.launcher import described
from agent.login.auth import facts_from_text, inspect_auth_file
from agent.telemetry.audit import configure_logging, observe_events
from agent.telemetry.metrics import (
    CredentialCollector,
    EventMetrics,
    GateCollector,
    VolumeFacts,
    credential_families,
    exposition,
    job_outcome,
)
from testkit.monitoring import fake_jwt

ROOT = Path(__file__).resolve().parents[2]
SECRET_REFRESH = "rt-secret-never-shown-0123456789"


def write_chatgpt_login(home: Path, exp: float, last_refresh: str) -> None:
    home.mkdir(parents=True, exist_ok=True)
    (home / "auth.json").write_text(
        json.dumps(
            {
                "tokens": {"access_token": fake_jwt(exp), "refresh_token": SECRET_REFRESH, "id_token": fake_jwt(exp)},
                "last_refresh": last_refresh,
            }
        )
    )


@pytest.fixture
def events() -> Iterator[tuple[EventMetrics, CollectorRegistry]]:
    """EventMetrics fed by the real logging chain, at ERROR level (metrics still see INFO events)."""
    registry = CollectorRegistry()
    metrics = EventMetrics("3", registry=registry)
    configure_logging("ERROR", stream=io.StringIO())
    stop = observe_events(metrics.observe)
    yield metrics, registry
    stop()
    configure_logging("INFO")


def test_job_outcome_table() -> None:
    assert job_outcome({"exit_code": 0}) == "ok"
    assert job_outcome({"exit_code": 2}) == "failed"
    assert job_outcome({"exit_code": None, "timed_out": True}) == "timed_out"
    assert job_outcome({"exit_code": None}) == "error"
    assert job_outcome({"exit_code": True}) == "error"  # a bool is not an exit code


def test_audit_events_become_counts_whatever_the_log_level(events: tuple[EventMetrics, CollectorRegistry]) -> None:
    _, registry = events
    log = structlog.get_logger("t")
    log.info("codex.run.audit", task="codex.phase")
    log.info("codex.job.finished", exit_code=0, duration_s=12.5, codex_events=7)
    log.info("codex.job.finished", exit_code=1, duration_s=3.0, codex_events=2)
    log.info("codex.job.finished", exit_code=0, duration_s=0.5)  # a plain job container, not a Codex run
    log.error("codex.job.finished", exit_code=None, duration_s=60, timed_out=True)
    log.error("codex.run.requeued", code="CODEX-E034", error="x")
    log.error("codex.run.requeued", code="CODEX-E040", error="x", retry_in_s=15)
    log.error("codex.run.retrying", code="CODEX-E042", retry=1, max_retries=3, retry_in_s=30)
    log.error("codex.login.revoked", reason="refresh_token_reused")
    log.error("codex.check.failed", check="login", code="CODEX-E030")
    log.error("codex.check.failed", check="login", code="CODEX-E030", repeated=True)  # a reminder: not counted
    log.info("codex.check.passed")
    log.warning("codex.lease.refused")
    log.warning("codex.ack.lost", task_id="t-1")
    log.warning("codex.route.moved", task="codex.phase", from_shard=1, shard=2, reason="usage limit (CODEX-E036)")
    log.info("codex.unrelated.event", exit_code=0)

    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, {"shard": "3", **labels})

    assert value("codex_tasks_started_total") == 1
    assert value("codex_job_containers_total", outcome="ok") == 2
    assert value("codex_job_containers_total", outcome="failed") == 1
    assert value("codex_job_containers_total", outcome="timed_out") == 1
    assert value("codex_runs_total", outcome="ok") == 1
    assert value("codex_runs_total", outcome="failed") == 1
    assert value("codex_runs_total", outcome="timed_out") == 0  # a plain job's timed-out line: not a Codex run
    assert value("codex_run_duration_seconds_sum", outcome="ok") == 12.5
    assert value("codex_run_duration_seconds_bucket", outcome="ok", le="15.0") == 1
    assert value("codex_run_duration_seconds_bucket", outcome="ok", le="5.0") == 0
    assert value("codex_job_container_duration_seconds_count", outcome="ok") == 2
    assert value("codex_requeues_total", reason="login", code="CODEX-E034") == 1
    assert value("codex_requeues_total", reason="engine_unavailable", code="CODEX-E040") == 1
    assert value("codex_requeues_total", reason="job_failed", code="CODEX-E042") == 1
    assert value("codex_login_revoked_total", reason="refresh_token_reused") == 1
    assert value("codex_check_outcomes_total", outcome="failed", check="login", code="CODEX-E030") == 1
    assert value("codex_check_outcomes_total", outcome="passed", check="-", code="") == 1
    assert value("codex_lease_refused_total") == 1
    assert value("codex_first_phase_moves_total", from_shard="1", to_shard="2") == 1
    assert value("codex_acks_lost_total") == 1


def test_a_phase_ended_by_the_wall_clock_limit_is_counted_as_a_run(
    events: tuple[EventMetrics, CollectorRegistry],
) -> None:
    """CODEX-E043: the job is killed with no output kept, yet its line carries the phase's describe
    fields (read from no output), so codex_runs_total counts it; without them it is a plain job."""
    _, registry = events
    log = structlog.get_logger("t")
    phase_fields = described(lambda output: summarize(output).audit_fields(), "")  # CodexPhase's describe
    assert phase_fields == {"codex_session": None, "usage": None, "codex_events": 0}
    log.error("codex.job.finished", container_id="c1", exit_code=None, duration_s=6.0, timed_out=True, **phase_fields)
    log.error("codex.job.finished", container_id="c2", exit_code=None, error="engine gone", **phase_fields)
    log.error(
        "codex.job.finished", container_id="c3", exit_code=None, duration_s=6.0, timed_out=True, **described(None, "")
    )  # the same line as before the fix: no phase fields

    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, {"shard": "3", **labels})

    assert value("codex_runs_total", outcome="timed_out") == 1
    assert value("codex_runs_total", outcome="error") == 1
    assert value("codex_run_duration_seconds_count", outcome="timed_out") == 1
    assert value("codex_run_duration_seconds_sum", outcome="timed_out") == 6.0
    assert value("codex_job_containers_total", outcome="timed_out") == 2  # c3 is a job, never a run


def test_a_failing_observer_never_costs_the_audit_line() -> None:
    stream = io.StringIO()
    configure_logging("INFO", stream=stream)

    def broken(_event: object) -> None:
        raise RuntimeError("metrics bug")

    stop = observe_events(broken)
    try:
        structlog.get_logger("t").info("codex.gate.opened", queue="codex-0")
    finally:
        stop()
        configure_logging("INFO")
    assert json.loads(stream.getvalue().splitlines()[-1])["event"] == "codex.gate.opened"


def test_gate_state_and_time_since_it_changed() -> None:
    now = [1000.0]
    gate = GateCollector("0", clock=lambda: now[0])
    gate.observe({"event": "codex.gate.closed", "queue": "codex-0", "queues": ["codex-0", "codex"]})
    now[0] = 1090.0
    samples = {(s.name, s.labels["queue"]): s.value for m in gate.collect() for s in m.samples}
    assert samples[("codex_gate_open", "codex-0")] == 0 and samples[("codex_gate_open", "codex")] == 0
    assert samples[("codex_gate_seconds_since_change", "codex-0")] == 90
    assert samples[("codex_gate_last_change_timestamp_seconds", "codex")] == 1000
    gate.observe({"event": "codex.gate.opened", "queue": "codex-0", "queues": ["codex-0", "codex"]})
    now[0] = 1100.0
    samples = {(s.name, s.labels["queue"]): s.value for m in gate.collect() for s in m.samples}
    assert samples[("codex_gate_open", "codex-0")] == 1
    assert samples[("codex_gate_seconds_since_change", "codex-0")] == 10


def test_credential_numbers_come_from_auth_json_and_hold_no_secret(tmp_path: Path) -> None:
    exp = time.time() + 3600
    write_chatgpt_login(tmp_path, exp, "2026-01-01T00:00:00Z")
    text = exposition(list(CredentialCollector(tmp_path, "codex_auth_0", "0").collect()))
    assert SECRET_REFRESH not in text and str(inspect_auth_file(tmp_path).fingerprint) not in text
    values = {s.name: s.value for m in text_string_to_metric_families(text) for s in m.samples}
    assert abs(values["codex_access_token_expiry_seconds"] - (exp - time.time())) < 1.0
    assert values["codex_login_present"] == 1
    assert values["codex_last_refresh_age_seconds"] == pytest.approx(time.time() - 1767225600.0, abs=5)


def test_absent_and_unreadable_logins_read_as_absent() -> None:
    facts = [
        VolumeFacts("codex_auth_1", "1", inspect_auth_file(Path("/nonexistent"))),
        VolumeFacts("codex_auth_2", "2", facts_from_text(b"{not json", 1.0), revoked=True),
    ]
    samples = [(s.name, s.labels["volume"], s.value) for m in credential_families(facts, now=11.0) for s in m.samples]
    assert ("codex_login_present", "codex_auth_1", 0.0) in samples
    assert ("codex_login_present", "codex_auth_2", 0.0) in samples
    assert ("codex_credential_age_seconds", "codex_auth_2", 10.0) in samples  # mtime stands in
    assert ("codex_login_revoked_marker", "codex_auth_2", 1.0) in samples
    assert not [s for s in samples if s[0] == "codex_access_token_expiry_seconds"]


def _run_script(script: str, *args: str) -> Any:
    """Run ``script`` in a fresh interpreter (its own forks and metrics mode); its JSON output."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    run = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=120, env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    return json.loads(run.stdout)


_FORKED_COUNTS = r"""
import json, multiprocessing, os, socket, sys, urllib.request
from pathlib import Path
import structlog
from agent.telemetry.audit import configure_logging
configure_logging("INFO", stream=open(os.devnull, "w"))
mode, state = sys.argv[1], Path(sys.argv[2])
if mode == "multiprocess":
    from agent.telemetry.metrics import enable
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]
    enable(port, state_dir=state, codex_home=state / "home", volume="v", shard="0", addr="127.0.0.1")
else:  # counting in one process's registry: what children count never reaches the scrape
    from prometheus_client import CollectorRegistry, generate_latest
    from agent.telemetry.audit import observe_events
    from agent.telemetry.metrics import EventMetrics
    registry = CollectorRegistry(); observe_events(EventMetrics("0", registry=registry).observe)

def child():
    for _ in range(5):
        structlog.get_logger("c").info("codex.job.finished", exit_code=0, duration_s=1.0)

procs = [multiprocessing.get_context("fork").Process(target=child) for _ in range(2)]
for p in procs: p.start()
for p in procs: p.join()
if mode == "multiprocess":
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
else:
    text = generate_latest(registry).decode()
print(json.dumps(text))
"""


@pytest.mark.parametrize(("mode", "expected"), [("multiprocess", 10.0), ("one-registry", 0.0)])
def test_counts_made_in_forked_children_reach_the_scrape(tmp_path: Path, mode: str, expected: float) -> None:
    """Two forked children finish 5 jobs each: multiprocess mode scrapes 10; one registry still says 0."""
    (tmp_path / "state" / "prometheus").mkdir(parents=True)
    (tmp_path / "state" / "prometheus" / "counter_1.db").write_bytes(b"stale")  # from a previous life: emptied
    text = _run_script(_FORKED_COUNTS, mode, str(tmp_path / "state"))
    values = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for m in text_string_to_metric_families(text)
        for s in m.samples
    }
    assert values.get(("codex_job_containers_total", (("outcome", "ok"), ("shard", "0")))) == expected


_FORK_WHILE_COUNTING = r"""
import json, os, socket, sys, threading, time
from pathlib import Path
import structlog
from agent.telemetry.audit import configure_logging
from agent.telemetry.metrics import enable
configure_logging("INFO", stream=open(os.devnull, "w"))
guarded, state = sys.argv[1] == "guarded", Path(sys.argv[2])
with socket.socket() as s:
    s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]
server = enable(port, state_dir=state, codex_home=state / "home", volume="v", shard="0", addr="127.0.0.1")
audit = {"event": "codex.job.finished", "exit_code": 0, "duration_s": 0.1}
count = server.observe if guarded else server.events.observe  # the unguarded path skips FORK_GUARD
stop = threading.Event()

def watcher():  # a thread of the main process that counts, as the gate and the watcher do
    while not stop.is_set():
        count(audit)

threading.Thread(target=watcher, daemon=True).start()
forks = hung = 0
while forks < 150 and not (hung and not guarded):
    forks += 1
    pid = os.fork()
    if pid == 0:  # a pool child's first task: its audit line counts
        structlog.get_logger("child").info("codex.run.audit")
        os._exit(0)
    deadline = time.monotonic() + 3
    while not os.waitpid(pid, os.WNOHANG)[0]:
        if time.monotonic() > deadline:
            hung += 1; os.kill(pid, 9); os.waitpid(pid, 0); break
        time.sleep(0.001)
stop.set()
print(json.dumps({"forks": forks, "hung": hung}))
"""


@pytest.mark.parametrize(("mode", "hangs"), [("guarded", False), ("unguarded", True)])
def test_a_child_forked_while_a_thread_counts_never_hangs(tmp_path: Path, mode: str, hangs: bool) -> None:
    """150 forks while a main-process thread counts: no child hangs at its first count. Without
    FORK_GUARD (counting straight into prometheus_client) a child inherits its lock held and hangs."""
    seen = _run_script(_FORK_WHILE_COUNTING, mode, str(tmp_path / "state"))
    assert (seen["hung"] > 0) is hangs, seen
    if not hangs:
        assert seen["forks"] == 150


def test_codex_workers_send_task_events_by_default() -> None:
    """Flower and celery-exporter see Codex tasks without a flag (bench row 12d prices it)."""
    from agent.settings.config import load
    from worker_entry.app import create_app

    assert create_app(load({"CODEX_SHARD_INDEX": "0"})).conf.worker_send_task_events is True


@pytest.mark.parametrize("value", ["busy", "70000"])
def test_a_port_it_cannot_serve_on_stops_worker_entry_with_e001(tmp_path: Path, value: str) -> None:
    """A port in use or out of range: CODEX-E001 naming AGENT_METRICS_PORT, before Celery starts."""
    import socket

    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = str(taken.getsockname()[1]) if value == "busy" else value
        env = {
            "PATH": os.environ["PATH"],
            "HOME": str(tmp_path),
            "AGENT_STATE_DIR": str(tmp_path / "state"),
            "AGENT_METRICS_PORT": port,
            "CELERY_BROKER_URL": "redis://127.0.0.1:1/0",
        }
        run = subprocess.run(
            [str(Path(sys.executable).parent / "worker-entry")], env=env, capture_output=True, text=True, timeout=60
        )
    assert run.returncode != 0
    failed = [json.loads(line) for line in run.stdout.splitlines() if '"codex.agent.startup_failed"' in line]
    assert failed and failed[0]["code"] == "CODEX-E001" and "AGENT_METRICS_PORT" in failed[0]["error"], run.stdout[
        -2000:
    ]
