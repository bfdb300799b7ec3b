"""The agent inside a worker: ``install(app)`` wires it into any Celery app.

``install`` connects the Celery signals (in one place, never at import), registers the
:class:`~agent.worker.gate.GateStep` consumer bootstep and prepends the :class:`~agent.routing.router.CodexRouter`.
At ``worker_init`` the agent runs the checks and sets the gate; the
:class:`~agent.volume.watch.VolumeWatcher` then re-checks at once when the volume changes (login,
marker, permissions, owner, mount) and every ``AGENT_RECHECK_INTERVAL`` while the gate is
closed, so a broken volume closes the gate and a fixed one reopens it with no restart. Job
containers a lost run left behind are swept at startup and after each broker reconnect
(:mod:`agent.jobs.reconcile`).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Mapping
from typing import Any

import psutil
import structlog
from celery import signals

from agent.engine.client import client_from_env
from agent.engine.optional import client_for_mount_check
from agent.errors import AgentError, ConfigError, UsageLimitError
from agent.fleet.lease import lease_for
from agent.fleet.roster import publisher_for
from agent.fleet.state import AgentState
from agent.fleet.state_publisher import StatePublisher
from agent.jobs.launcher import JobLauncher
from agent.jobs.reconcile import JobReconciler
from agent.login import usage
from agent.routing.router import add_router
from agent.settings import config as config_mod
from agent.settings.config import AgentConfig
from agent.settings.defaults import SINGLE_QUEUE
from agent.telemetry.audit import configure_logging
from agent.util.host import start_ticks
from agent.util.services import Service, Services
from agent.volume.claim import claim_for
from agent.volume.identity import stat_home
from agent.volume.watch import VolumeWatcher
from agent.worker.checks import Checker, CheckReport, local_login_check
from agent.worker.gate import Gate, GateStep
from agent.worker.preflight import Preflight
from agent.worker.settings import apply_worker_settings

__all__ = ["Agent", "install", "bind", "agent_for", "FailFastExit"]

log = structlog.get_logger(__name__)


class FailFastExit(SystemExit):
    """``AGENT_FAIL_FAST=1`` and a check failed: the worker exits instead of waiting."""


def _login_check_for(config: AgentConfig) -> Any:
    if config.login_check == "container":
        from agent.login.container import container_login_check

        return container_login_check
    return local_login_check


class Agent:
    """Claim, checks, gate, pre-flight and published state for one worker process."""

    def __init__(self, app: Any, config: AgentConfig, *, docker_client: Any = None) -> None:
        self.app = app
        self.config = config
        self.docker_client = docker_client
        login_check = _login_check_for(config)
        self.claim = claim_for(config)
        self.lease = lease_for(config)
        self.checker = Checker(
            config, docker_client=docker_client, login_check=login_check, claim=self.claim, lease=self.lease
        )
        self.preflight = Preflight(config, login_check, self.claim)
        self.gate: Gate | None = Gate(app, config.codex_queues) if config.codex_queues else None
        self.report: CheckReport | None = None
        self.consumer: Any = None
        """The running Celery consumer (GateStep hands it over), for gate changes; None between runs."""
        self._check_lock = threading.Lock()
        lease = self.lease
        self.drain_thresholds = usage.drain_thresholds()
        self.draining_until: float | None = None
        """Single mode: while set, the shared ``codex`` queue is not consumed (a login near its limit)."""
        self.watcher = VolumeWatcher(
            config,
            self.run_checks,
            self._gate_open,
            extra=(lambda: lease.changes) if lease is not None else None,
            due=self._limit_reopen_at,
        )
        self.reconciler = JobReconciler(config, may_sweep=lambda: self.claim.held)
        self.state = StatePublisher(config, self._state, publisher_for(config))
        """Writes this worker's state for ``codex-agent status`` and posts it for ``codex-agent fleet``."""
        self.services = Services(self._services())
        self._consumer_starts = 0
        self._jobs_client: tuple[int, Any] | None = None
        self._process = psutil.Process()
        self._process_ticks = start_ticks(self._process.pid)  # fixed for the life of the process

    def _services(self) -> list[Service]:
        """The background work, in start order: the state first (stopped last, it posts ``stopped``)."""
        if not self.config.is_codex_worker:
            return [self.state]
        claim = self.claim.heartbeat_service(max(1.0, self.config.claim_stale_after / 4))
        lease = [self.lease.heartbeat_service()] if self.lease is not None else []
        return [self.state, claim, *lease, self.watcher, self.reconciler]

    @property
    def volume_name(self) -> str | None:
        """The volume the mount check found at CODEX_HOME (what job containers get)."""
        return self.checker.mounted_volume or self.config.volume_name

    # -- checks and gate ------------------------------------------------------------------

    def run_checks(self) -> CheckReport:
        """Run every check, set the gate from the result and publish the state."""
        with self._check_lock:
            home = stat_home(self.config.codex_home)  # before the check: a change during it is not vouched for
            report = self.checker.run()
            mount_ok = any(r.name == "mount" and r.ok for r in report.results)
            self.preflight.volume.vouch(home if mount_ok else None)
            self.report = report
            if report.ok:
                self.preflight.forget()  # a fresh full check: the next task re-runs the CLI once
            if self.gate is not None:
                reasons = [r.problem for r in report.failures if r.problem is not None]
                self.gate.set(report.ok, reasons, consumer=self.consumer)
            self.publish()
            return report

    def on_preflight_failed(self, error: AgentError, queue: str | None) -> None:
        """A task's login failed in a pool child: stop consuming before the requeue.

        Called from the task request's failure callback, on the consumer's thread.
        """
        log.error("codex.preflight.gate_closed", code=error.code, error=error.message, queue=queue)
        if self.gate is not None and (queue is None or queue in self.gate.queues):
            self.gate.set(False, [error.problem(check="preflight")], consumer=self.consumer, on_consumer_thread=True)
        elif self.gate is None and queue and self.consumer is not None:
            # A Codex queue reached a worker with no shard: stop taking it, the task was requeued.
            self.consumer.call_soon(self.consumer.cancel_task_queue, queue)
        self.preflight.forget()
        self.publish()

    # -- usage limits ---------------------------------------------------------------------

    def _limit_reopen_at(self) -> float | None:
        """The watcher's due time: a usage limit's reset (plus margin), so the gate reopens then, or
        the end of a drain, so the shared queue is consumed again."""
        limit = usage.read(self.config.codex_home)
        dues = [t for t in (limit.reopen_at if limit is not None else None, self.draining_until) if t is not None]
        return min(dues) if dues else None

    def usage_view(self) -> dict[str, Any] | None:
        """The login's headroom (newest snapshot) and limit, for the state; None off a Codex worker.

        Also drains before the wall: in single mode a login at its thresholds stops taking new runs
        from the shared queue until the window resets; its own ``codex-N`` keeps its runs flowing.
        """
        if not self.config.is_codex_worker:
            return None
        headroom = usage.read_headroom(self.config.codex_home)
        view = usage.view(headroom, usage.read(self.config.codex_home))
        self._drain(self.drain_thresholds.until(headroom))
        view["draining_until"] = self.draining_until
        return view

    def _drain(self, until: float | None) -> None:
        shared = SINGLE_QUEUE
        if self.gate is None or self.config.queue_mode != "single" or shared not in self.gate.queues:
            return
        self.draining_until = until
        if self.gate.drain(frozenset({shared}) if until is not None else frozenset(), consumer=self.consumer):
            log.warning(
                "codex.usage.draining" if until is not None else "codex.usage.drain_ended",
                queue=shared,
                until=until,
                shard=self.config.shard_index,
                volume=self.volume_name,
            )

    def after_job(self) -> None:
        """A Codex task ended (any outcome): publish the login's newest headroom. Never raises."""
        try:
            self.publish()
        except Exception:  # the consumer thread must survive anything
            log.exception("codex.state.error")

    # -- published state ------------------------------------------------------------------

    def publish(self) -> None:
        """Write and post the live state for ``codex-agent status`` and ``codex-agent fleet``."""
        self.state.publish()

    def _state(self, stopped: bool = False) -> AgentState:
        gate = self.gate
        holder = self.claim.holder if self.claim.held else None
        return AgentState(
            worker=self.config.worker_name,
            pid=self._process.pid,
            process_start=self._process.create_time(),
            process_ticks=self._process_ticks,
            codex_worker=self.config.is_codex_worker,
            gate="stopped" if stopped else ("open" if gate is None or gate.is_open else "closed"),
            gate_since=gate.since if gate is not None else time.time(),
            shard=self.config.shard_index,
            queue=self.config.codex_queue,
            volume=self.volume_name,
            codex_home=str(self.config.codex_home) if self.config.is_codex_worker else None,
            reason=[p.to_dict() for p in gate.reason] if gate is not None else [],
            checks=self.report.to_dict() if self.report is not None else None,
            claim={"holder": holder.describe(), "claim_id": holder.claim_id, "since": holder.claimed_at}
            if holder is not None
            else None,
            usage=self.usage_view(),
        )

    # -- the watcher ----------------------------------------------------------------------

    def _gate_open(self) -> bool:
        return self.gate is not None and self.gate.is_open

    # -- orphaned job containers ---------------------------------------------------------

    def consumer_started(self, consumer: Any) -> None:
        """GateStep: the consumer (re)started; apply the gate before it consumes, and after a
        broker reconnect sweep orphaned job containers again."""
        self.consumer = consumer
        if self.gate is not None:
            self.gate.apply(consumer)
        self._consumer_starts += 1
        if self._consumer_starts > 1:
            self.reconciler.sweep_soon("reconnect")  # only the claim holder: the one live worker

    def consumer_stopped(self) -> None:
        """GateStep: the consumer is stopping or reconnecting."""
        self.consumer = None

    # -- job containers -------------------------------------------------------------------

    def launcher(self, context: Mapping[str, Any]) -> JobLauncher:
        """The job launcher for a running task (its audit ``context``), with this process's client.

        A forked pool child never reuses its parent's sockets: the client is made per process.

        Raises:
            DockerUnavailableError: no engine answers (CODEX-E040).
        """
        if self._jobs_client is None or self._jobs_client[0] != os.getpid():
            self._jobs_client = (os.getpid(), client_from_env(self.config.shard_facts(self.volume_name)))
        return JobLauncher(self._jobs_client[1], self.config, self.volume_name, context)

    # -- Celery signal handlers -----------------------------------------------------------

    def on_worker_init(self, **_: Any) -> None:
        """``worker_init``: claim, verify, check; set the gate before any consuming starts."""
        if not self.config.is_codex_worker:
            self.publish()
            self.services.start()
            log.info("codex.agent.ready", codex_worker=False, worker=self.config.worker_name)
            return
        report = self.run_checks()
        # A usage limit ends by itself at its reset: fail-fast waits for it instead of a restart loop.
        held = all(f.code == UsageLimitError.code for f in report.failures)
        if not report.ok and self.config.fail_fast and not held:
            failure = report.failures[0]
            log.critical(
                "codex.agent.fail_fast", code=failure.code, error=failure.message, remediation=failure.remediation
            )
            self.services.stop()  # releases the claim and the lease, posts ``stopped``
            raise FailFastExit(1)
        self.services.start()  # heartbeats, watcher, fleet poster, startup sweep
        log.info(
            "codex.agent.ready",
            codex_worker=True,
            gate="open" if report.ok else "closed",
            queue=self.config.codex_queue,
            shard=self.config.shard_index,
            volume=self.volume_name,
        )

    def on_worker_process_init(self, **_: Any) -> None:
        """``worker_process_init`` (pool child): drop every service's inherited threads and descriptors."""
        self.services.close_inherited()
        self._process = psutil.Process()
        self._process_ticks = start_ticks(self._process.pid)  # fixed for the life of the process

    def on_worker_shutdown(self, **_: Any) -> None:
        """``worker_shutdown``: stop watching, release the lease and the claim, publish ``stopped``."""
        self.services.stop()

    def on_setup_logging(self, **_: Any) -> None:
        """``setup_logging``: Celery's own lines go through our JSON chain."""
        configure_logging(self.config.log_level)


_ATTRIBUTE = "codex_agent"
"""The one attribute of a Celery app that holds its agent: read and written here alone."""


def bind(app: Any, agent: Agent) -> None:
    """Remember ``agent`` as the one installed in ``app`` (Celery hands requests and bootsteps the app)."""
    setattr(app, _ATTRIBUTE, agent)


def agent_for(app: Any) -> Agent | None:
    """The agent installed in ``app``, or None (a publisher, or a worker without the agent)."""
    agent: Agent | None = getattr(app, _ATTRIBUTE, None)
    return agent


def _check_worker_user(config: AgentConfig, uid: int | None = None) -> None:
    """A worker that is not root must run as ``CODEX_JOB_USER``: its volume is private (0700) to the
    worker's uid, and its jobs read the login as the job user. A root worker (tests, some dev setups)
    is only warned, by the mount check (CODEX-W002).

    Raises:
        ConfigError: CODEX-E001 naming ``CODEX_JOB_USER`` and the worker's uid.
    """
    uid = os.getuid() if uid is None else uid
    if config.job_image is None or uid in (0, config.job_uid):
        return
    raise ConfigError(
        variable="CODEX_JOB_USER",
        value=config.job_user,
        cause=f"this worker runs as uid {uid}, so its 0700 volume is unreadable to jobs running as {config.job_user}",
        accepted=f"the worker's own uid:gid ({uid}:{os.getgid()}), or run the worker as uid {config.job_uid}",
    )


def install(app: Any, config: AgentConfig | None = None, *, docker_client: Any = None) -> Agent:
    """Connect the agent to a Celery app: worker settings, signals, gate bootstep and router. Idempotent.

    On a Codex worker the app gets the settings the guarantees rest on
    (:func:`agent.worker.settings.apply_worker_settings`): late acks, reject on worker lost, prefetch
    1, task events, a Redis visibility timeout longer than ``CODEX_PHASE_TIMEOUT``.

    Args:
        app: any Celery app, ours or a user's; call before the worker starts.
        config: the validated configuration; read from the environment when omitted.
        docker_client: for the mount check inside a container; found from the environment
            when omitted (None outside a container or when there is no engine).

    Raises:
        ConfigError: the environment is invalid, or a non-root worker does not run as ``CODEX_JOB_USER``.
        UnsafeSettingError: the app explicitly sets one of those settings to a breaking value (CODEX-E003).
    """
    existing = agent_for(app)
    if existing is not None:
        return existing
    config = config or config_mod.load()
    if config.is_codex_worker:  # before anything is connected: an unsafe app never starts (CODEX-E003)
        _check_worker_user(config)
        settings = apply_worker_settings(app, config)
        log.info(
            "codex.settings.applied",
            app=app.main,
            **{k: v for k, v in settings.items() if k != "broker_transport_options"},
            visibility_timeout=settings["broker_transport_options"]["visibility_timeout"],
        )
    if docker_client is None:
        docker_client = client_for_mount_check()
    agent = Agent(app, config, docker_client=docker_client)
    bind(app, agent)

    add_router(app, config)
    app.steps["consumer"].add(GateStep.bound(agent))

    def same_app(sender: Any) -> bool:
        return getattr(sender, "app", app) is app

    def worker_init(sender: Any = None, **kw: Any) -> None:
        if same_app(sender):
            agent.on_worker_init(**kw)

    def worker_shutdown(sender: Any = None, **kw: Any) -> None:
        agent.on_worker_shutdown(**kw)

    signals.worker_init.connect(worker_init, weak=False)
    signals.worker_process_init.connect(agent.on_worker_process_init, weak=False)
    signals.worker_shutdown.connect(worker_shutdown, weak=False)
    signals.setup_logging.connect(agent.on_setup_logging, weak=False)
    return agent
