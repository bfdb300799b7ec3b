"""Prometheus metrics of a Codex worker, derived from its audit events.

One home for counting: :func:`agent.telemetry.audit.observe_events` hands every structlog event to
:meth:`EventMetrics.observe`, which turns event names and fields (``codex.gate.closed``,
``codex.job.finished`` with ``exit_code``/``duration_s``/``timed_out``, ``codex.run.requeued``…)
into counters and histograms. No other module calls prometheus_client.

Celery's prefork pool runs tasks (and so job containers, requeues, revocations) in child
processes, while the HTTP endpoint lives in the main process. Counts made in a child must not be
lost, so :func:`enable` uses prometheus_client's multiprocess mode: ``PROMETHEUS_MULTIPROC_DIR``
is set to ``AGENT_STATE_DIR/prometheus`` (emptied at startup, so a restarted worker starts from
zero as Prometheus expects) before prometheus_client picks its value class, every process writes
its own mmap file, and a scrape sums them. Counting only in the main process from events that
reach it would miss what children log. Gauges need no such care: the gate lives in the main
process (:class:`GateCollector` remembers its last change there) and the credential facts are read
from ``auth.json`` at scrape time (:class:`CredentialCollector`), numbers only, never a secret.

Forks: prometheus_client's multiprocess values share one lock and do nothing at fork, so a pool
child forked while a thread of the main process (the watcher, the gate) was counting would inherit
that lock held and hang at its first count, its task never run. Every update here holds
:data:`FORK_GUARD`, and the fork itself takes it first (``os.register_at_fork``).
"""

from __future__ import annotations

import math
import os
import shutil
import threading
import time
from collections import Counter as Counter_
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from agent.errors import ConfigError
from agent.login import revocation, usage
from agent.login.auth import AuthFacts, inspect_auth_file
from agent.telemetry.audit import JOB_FINISHED, RUN_AUDIT, observe_events

if TYPE_CHECKING:
    from agent.volume.inventory import VolumesReport

__all__ = [
    "DURATION_BUCKETS",
    "JOB_OUTCOMES",
    "EventMetrics",
    "GateCollector",
    "CredentialCollector",
    "UsageCollector",
    "usage_families",
    "VolumeFacts",
    "credential_families",
    "exposition",
    "volumes_exposition",
    "job_outcome",
    "MetricsServer",
    "enable",
]

DURATION_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0, math.inf)
"""Seconds: a job container takes from a second to CODEX_PHASE_TIMEOUT (an hour by default)."""

JOB_OUTCOMES = ("ok", "failed", "timed_out", "error")

MULTIPROC_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
"""Set (never read) by :func:`enable`: prometheus_client reads it."""


def job_outcome(event: Mapping[str, Any]) -> str:
    """``ok``, ``failed`` (non-zero exit), ``timed_out`` (CODEX-E043) or ``error`` (no exit code)."""
    if event.get("timed_out"):
        return "timed_out"
    code = event.get("exit_code")
    if isinstance(code, bool) or not isinstance(code, int):
        return "error"
    return "ok" if code == 0 else "failed"


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


FORK_GUARD = threading.RLock()
"""Held by every metric update and gate read, and across each fork of this process, so that no
thread is inside prometheus_client's (or the gate's) lock when a pool child is forked."""
os.register_at_fork(before=FORK_GUARD.acquire, after_in_parent=FORK_GUARD.release, after_in_child=FORK_GUARD.release)


class EventMetrics:
    """Counters and histograms fed by audit events; the same in every process of the worker.

    Args:
        shard: this worker's shard (a label on every series; one worker serves one shard).
        registry: where to register; None in multiprocess mode (a scrape reads the files).
    """

    def __init__(self, shard: str, registry: CollectorRegistry | None = None) -> None:
        self.shard = shard
        self.tasks = Counter(
            "codex_tasks_started",
            "Codex tasks that passed pre-flight and started (codex.run.audit).",
            ["shard"],
            registry=registry,
        )
        self.checks = Counter(
            "codex_check_outcomes",
            "Check outcome changes by check and code (a repeated reminder line is not counted).",
            ["shard", "outcome", "check", "code"],
            registry=registry,
        )
        self.jobs = Counter(
            "codex_job_containers",
            "Job containers finished, by outcome (ok, failed, timed_out, error).",
            ["shard", "outcome"],
            registry=registry,
        )
        self.job_seconds = Histogram(
            "codex_job_container_duration_seconds",
            "Wall-clock seconds of finished job containers.",
            ["shard", "outcome"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.runs = Counter(
            "codex_runs",
            "Codex phases (codex exec) finished, by outcome.",
            ["shard", "outcome"],
            registry=registry,
        )
        self.run_seconds = Histogram(
            "codex_run_duration_seconds",
            "Wall-clock seconds of finished Codex phases.",
            ["shard", "outcome"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.requeues = Counter(
            "codex_requeues",
            "Codex tasks sent back to their shard queue: login, engine_unavailable or job_failed (a retry).",
            ["shard", "reason", "code"],
            registry=registry,
        )
        self.revoked = Counter(
            "codex_login_revoked",
            "Logins found dead during a run (CODEX-E034), by reason.",
            ["shard", "reason"],
            registry=registry,
        )
        self.limited = Counter(
            "codex_usage_limited",
            "Runs that met their login's usage limit (CODEX-E036), by window and 429 type.",
            ["shard", "window", "limit"],
            registry=registry,
        )
        self.moves = Counter(
            "codex_first_phase_moves",
            "First phases this process published away from their limited shard (CODEX_MOVE_FIRST_PHASE).",
            ["shard", "from_shard", "to_shard"],
            registry=registry,
        )
        self.lease_refused = Counter(
            "codex_lease_refused",
            "Fleet lease refusals: this login is held elsewhere (CODEX-E013).",
            ["shard"],
            registry=registry,
        )
        self.lease_refused.labels(shard)  # series from 0, so that increase() sees the first event
        self.acks_lost = Counter(
            "codex_acks_lost",
            "Codex task acks lost with the broker connection (codex.ack.lost): redelivered.",
            ["shard"],
            registry=registry,
        )
        self.acks_lost.labels(shard)
        for outcome in JOB_OUTCOMES:
            self.jobs.labels(shard, outcome)
            self.runs.labels(shard, outcome)
        self._handlers: dict[str, Callable[[Mapping[str, Any]], None]] = {
            RUN_AUDIT: lambda e: self.tasks.labels(self.shard).inc(),
            "codex.check.failed": lambda e: self._check(e, "failed"),
            "codex.check.warning": lambda e: self._check(e, "warning"),
            "codex.check.passed": lambda e: self._check(e, "passed"),
            JOB_FINISHED: self._job,
            "codex.run.requeued": self._requeued,
            "codex.run.retrying": lambda e: self.requeues.labels(
                self.shard, "job_failed", str(e.get("code") or "")
            ).inc(),
            "codex.login.revoked": lambda e: self.revoked.labels(self.shard, str(e.get("reason") or "unknown")).inc(),
            "codex.lease.refused": lambda e: self.lease_refused.labels(self.shard).inc(),
            "codex.ack.lost": lambda e: self.acks_lost.labels(self.shard).inc(),
            "codex.route.moved": lambda e: self.moves.labels(
                self.shard, str(e.get("from_shard")), str(e.get("shard"))
            ).inc(),
            "codex.usage.limited": lambda e: self.limited.labels(
                self.shard, str(e.get("window") or "unknown"), str(e.get("limit") or "unknown")
            ).inc(),
        }

    def observe(self, event: Mapping[str, Any]) -> None:
        """Update the metrics an audit event speaks of; any other event costs one dict lookup."""
        handler = self._handlers.get(str(event.get("event")))
        if handler is not None:
            handler(event)

    def _check(self, event: Mapping[str, Any], outcome: str) -> None:
        if event.get("repeated"):
            return
        self.checks.labels(self.shard, outcome, str(event.get("check") or "-"), str(event.get("code") or "")).inc()

    def _job(self, event: Mapping[str, Any]) -> None:
        outcome = job_outcome(event)
        seconds = _number(event.get("duration_s"))
        self.jobs.labels(self.shard, outcome).inc()
        if seconds is not None:
            self.job_seconds.labels(self.shard, outcome).observe(seconds)
        if "codex_events" in event:  # the phase's describe() marks a codex exec job
            self.runs.labels(self.shard, outcome).inc()
            if seconds is not None:
                self.run_seconds.labels(self.shard, outcome).observe(seconds)

    def _requeued(self, event: Mapping[str, Any]) -> None:
        reason = "engine_unavailable" if "retry_in_s" in event else "login"
        if event.get("code") == "CODEX-E036":
            reason = "usage_limit"
        self.requeues.labels(self.shard, reason, str(event.get("code") or "")).inc()


@dataclass
class _GateChange:
    is_open: bool
    at: float


class GateCollector(Collector):
    """The gate of each queue (1 open, 0 closed) and when it last changed, from gate events.

    Fed in the main process, where the gate lives; seconds since the change are computed per scrape.
    """

    def __init__(self, shard: str, clock: Callable[[], float] = time.time) -> None:
        self.shard = shard
        self._clock = clock
        self._gates: dict[str, _GateChange] = {}

    def observe(self, event: Mapping[str, Any]) -> None:
        """Remember a ``codex.gate.opened``/``closed`` for each queue it names."""
        name = event.get("event")
        if name not in ("codex.gate.opened", "codex.gate.closed"):
            return
        queues = event.get("queues") or [event.get("queue")]
        change = _GateChange(name == "codex.gate.opened", self._clock())
        with FORK_GUARD:
            for queue in queues:
                if isinstance(queue, str):
                    self._gates[queue] = change

    def collect(self) -> Iterator[Metric]:
        state = GaugeMetricFamily(
            "codex_gate_open", "1 when the shard queue's gate is open, 0 when closed.", labels=["shard", "queue"]
        )
        since = GaugeMetricFamily(
            "codex_gate_seconds_since_change",
            "Seconds since the gate last opened or closed.",
            labels=["shard", "queue"],
        )
        stamp = GaugeMetricFamily(
            "codex_gate_last_change_timestamp_seconds",
            "When the gate last opened or closed.",
            labels=["shard", "queue"],
        )
        now = self._clock()
        with FORK_GUARD:
            gates = dict(self._gates)
        for queue, change in sorted(gates.items()):
            state.add_metric([self.shard, queue], 1.0 if change.is_open else 0.0)
            since.add_metric([self.shard, queue], max(0.0, now - change.at))
            stamp.add_metric([self.shard, queue], change.at)
        yield from (state, since, stamp)


@dataclass(frozen=True)
class VolumeFacts:
    """What the credential metrics say of one volume: its name, shard and ``auth.json`` facts."""

    volume: str
    shard: str
    auth: AuthFacts
    revoked: bool = False


def credential_families(volumes: Iterable[VolumeFacts], now: float | None = None) -> list[Metric]:
    """Per-volume gauges from auth.json facts: numbers only (no token, no fingerprint)."""
    now = time.time() if now is None else now
    labels = ["volume", "shard"]
    present = GaugeMetricFamily("codex_login_present", "1 when the volume holds a readable login.", labels=labels)
    age = GaugeMetricFamily(
        "codex_credential_age_seconds",
        "Seconds since the login was last written (last_refresh, else auth.json mtime).",
        labels=labels,
    )
    refresh = GaugeMetricFamily(
        "codex_last_refresh_age_seconds", "Seconds since the login's last_refresh.", labels=labels
    )
    expiry = GaugeMetricFamily(
        "codex_access_token_expiry_seconds",
        "Seconds until the access token's exp (negative once expired).",
        labels=labels,
    )
    revoked = GaugeMetricFamily(
        "codex_login_revoked_marker",
        "1 while a run's revocation marker stands for the credential in auth.json (CODEX-E034).",
        labels=labels,
    )
    for facts in volumes:
        key = [facts.volume, facts.shard]
        auth = facts.auth
        present.add_metric(key, 1.0 if auth.present and auth.unreadable is None else 0.0)
        stamp = auth.last_refresh or auth.modified_at
        if stamp is not None:
            age.add_metric(key, now - stamp)
        if auth.last_refresh is not None:
            refresh.add_metric(key, now - auth.last_refresh)
        if auth.access_token_expires_at is not None:
            expiry.add_metric(key, auth.access_token_expires_at - now)
        revoked.add_metric(key, 1.0 if facts.revoked else 0.0)
    return [present, age, refresh, expiry, revoked]


class CredentialCollector(Collector):
    """This worker's own login, read from ``CODEX_HOME/auth.json`` at each scrape."""

    def __init__(self, codex_home: Path, volume: str, shard: str) -> None:
        self.codex_home = Path(codex_home)
        self.volume = volume
        self.shard = shard

    def collect(self) -> Iterator[Metric]:
        auth = inspect_auth_file(self.codex_home)
        revoked = revocation.still_revoked(revocation.read(self.codex_home), auth)
        yield from credential_families([VolumeFacts(self.volume, self.shard, auth, revoked)])


def usage_families(views: Iterable[tuple[str, str, Mapping[str, Any]]]) -> list[Metric]:
    """Per-volume gauges of logins' headroom: numbers only.

    Args:
        views: ``(volume, shard, view)`` for each login, ``view`` as :func:`agent.login.usage.view` makes it.
    """
    labels = ["volume", "shard", "window"]
    used = GaugeMetricFamily(
        "codex_usage_used_percent",
        "Percent of the login's usage window used (newest snapshot in the volume's sessions).",
        labels=labels,
    )
    resets = GaugeMetricFamily(
        "codex_usage_resets_at_timestamp_seconds", "When the login's usage window resets.", labels=labels
    )
    limited = GaugeMetricFamily(
        "codex_usage_limited",
        "1 while the login is held at its usage limit (CODEX-E036), 0 otherwise.",
        labels=["volume", "shard"],
    )
    reopen = GaugeMetricFamily(
        "codex_usage_limit_reopen_timestamp_seconds",
        "When the gate of a limited login reopens by itself (reset time plus margin).",
        labels=["volume", "shard"],
    )
    for volume, shard, view in views:
        headroom = view.get("headroom")
        for window in headroom.get("windows", []) if isinstance(headroom, dict) else []:
            percent, stamp = _number(window.get("used_percent")), _number(window.get("resets_at"))
            key = [volume, shard, str(window.get("window"))]
            if percent is not None:
                used.add_metric(key, percent)
            if stamp is not None:
                resets.add_metric(key, stamp)
        limit = view.get("limit")
        limited.add_metric([volume, shard], 1.0 if view.get("limited") else 0.0)
        stamp = _number(limit.get("resets_at")) if isinstance(limit, dict) else None
        if stamp is not None:
            reopen.add_metric([volume, shard], stamp + usage.REOPEN_MARGIN_S)
    return [used, resets, limited, reopen]


class UsageCollector(Collector):
    """This worker's login headroom, read from the newest session rollout at each scrape (a bounded read)."""

    def __init__(self, codex_home: Path, volume: str, shard: str) -> None:
        self.codex_home = Path(codex_home)
        self.volume = volume
        self.shard = shard

    def collect(self) -> Iterator[Metric]:
        view = usage.view(usage.read_headroom(self.codex_home), usage.read(self.codex_home))
        yield from usage_families([(self.volume, self.shard, view)])


class _Families(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        yield from self.families


def exposition(families: list[Metric]) -> str:
    """The Prometheus text format of ``families`` (for a node-exporter textfile collector)."""
    from prometheus_client import generate_latest

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(families))
    return generate_latest(registry).decode()


def volumes_exposition(report: VolumesReport, now: float | None = None) -> str:
    """``codex-agent volumes --prometheus``: every volume's credential numbers, its login verdict,
    how many volumes hold its refresh token (more than 1: a forked login, CODEX-W031) and its
    headroom: used percent and reset per window, and whether a usage limit holds it (CODEX-E036)."""
    copies = Counter_(v.auth.fingerprint for v in report.volumes if _refreshes(v.auth))
    labels = ["volume", "shard"]
    ok = GaugeMetricFamily("codex_login_ok", "1 when codex login status passed on the volume.", labels=labels)
    shared = GaugeMetricFamily(
        "codex_login_copies",
        "Volumes holding this volume's refresh token (1 is normal; more is a forked login).",
        labels=labels,
    )
    facts = []
    views: list[tuple[str, str, Mapping[str, Any]]] = []
    for volume in report.volumes:
        shard = volume.labels.get("codex.shard") or _suffix_shard(volume.name)
        facts.append(VolumeFacts(volume.name, shard, volume.auth, volume.revoked is not None))
        views.append((volume.name, shard, volume.usage or {"limited": volume.limited is not None}))
        ok.add_metric([volume.name, shard], 1.0 if volume.logged_in else 0.0)
        if _refreshes(volume.auth):
            shared.add_metric([volume.name, shard], float(copies[volume.auth.fingerprint]))
    return exposition([*credential_families(facts, now), ok, shared, *usage_families(views)])


def _refreshes(auth: AuthFacts) -> bool:
    """A login whose copies break each other: a refresh token (not an API key, not unreadable)."""
    return bool(auth.fingerprint) and auth.auth_mode not in (None, "apikey", "unreadable")


def _suffix_shard(name: str) -> str:
    head, _, tail = name.rpartition("_")
    return tail if head and tail.isdigit() else ""


@dataclass
class MetricsServer:
    """A running metrics endpoint: its port, registry and the observers fed by audit events."""

    port: int
    directory: Path
    registry: CollectorRegistry
    events: EventMetrics
    gate: GateCollector
    stop_observing: Callable[[], None] = lambda: None

    def observe(self, event: Mapping[str, Any]) -> None:
        """The audit observer: counters for every process, gate state for this one."""
        with FORK_GUARD:
            self.events.observe(event)
            self.gate.observe(event)


def _fresh_directory(path: Path) -> None:
    """An empty directory for the processes' files: a restart starts every counter from zero."""
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True, mode=0o700)


def enable(
    port: int,
    *,
    state_dir: Path,
    codex_home: Path,
    volume: str,
    shard: str,
    addr: str = "0.0.0.0",
) -> MetricsServer:
    """Serve this worker's metrics on ``port`` and count audit events from every pool process.

    Call in the main process before the pool forks (worker-entry does, before the app is imported).

    Raises:
        ConfigError: CODEX-E001 naming AGENT_METRICS_PORT when the port cannot be listened on.
    """
    from prometheus_client import start_http_server, values
    from prometheus_client.multiprocess import MultiProcessCollector

    directory = Path(state_dir) / "prometheus"
    _fresh_directory(directory)
    os.environ[MULTIPROC_DIR_VARIABLE] = str(directory)
    values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]  # chosen at import: again now
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(directory))  # type: ignore[no-untyped-call]
    gate = GateCollector(shard)
    registry.register(gate)
    registry.register(CredentialCollector(codex_home, volume, shard))
    registry.register(UsageCollector(codex_home, volume, shard))
    server = MetricsServer(port, directory, registry, EventMetrics(shard), gate)
    try:
        start_http_server(port, addr=addr, registry=registry)
    except OSError as e:
        raise ConfigError(
            variable="AGENT_METRICS_PORT",
            value=str(port),
            cause=f"cannot listen on {addr}:{port} ({e.strerror or e})",
            accepted="a free TCP port on this host (or unset for no metrics)",
        ) from e
    server.stop_observing = observe_events(server.observe)
    return server
