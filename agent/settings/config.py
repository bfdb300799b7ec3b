"""The environment contract, parsed and validated into one frozen object.

``load(environ)`` reads a mapping (``os.environ`` by default) so tests and tools can inject
their own, through the one table of variables (:mod:`agent.settings.variables`); every bad value raises
:class:`~agent.errors.ConfigError` naming the variable, the value and what is accepted.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal, cast

from agent.errors import ConfigError
from agent.settings import defaults, variables
from agent.settings.sandbox import Sandbox, load_sandbox
from agent.settings.topology import QueueMode, Topology

__all__ = ["AgentConfig", "load"]

LoginCheckMode = Literal["local", "container"]
WatchMode = Literal["events", "poll"]


@dataclass(frozen=True)
class AgentConfig:
    """Everything the agent needs to know about this worker, validated."""

    shard_index: int | None
    shards: int
    queue_mode: QueueMode
    codex_queue: str | None
    volume_name: str | None
    codex_home: Path
    job_home: str
    job_user: str
    login_check: LoginCheckMode
    login_check_image: str
    login_timeout: float
    recheck_interval: float
    fail_fast: bool
    state_dir: Path
    broker_url: str
    codex_bin: str
    log_level: str
    worker_name: str
    claim_stale_after: float = defaults.CLAIM_STALE_AFTER
    fleet_lease: bool = True
    watch_mode: WatchMode = "events"
    job_image: str | None = defaults.JOB_IMAGE
    job_network: str | None = None
    phase_timeout: float = defaults.PHASE_TIMEOUT
    artifacts_root: Path = Path(defaults.ARTIFACTS_ROOT)
    seed_root: Path | None = None
    """``CODEX_SEED_ROOT``: the directory phases may seed their workspace from; None: no seeding."""
    workspace_retention: float = 0.0
    """Seconds a run's workspace may stay idle before the sweep removes it (``CODEX_WORKSPACE_RETENTION``)."""
    codex_queues: tuple[str, ...] = ()
    """Every Codex queue this worker consumes (``codex_queue`` first): ``CODEX_QUEUE`` alone when set,
    else the topology's (its own ``codex-N``, and the shared ``codex`` in single mode)."""
    sandbox: Sandbox = field(default_factory=Sandbox)
    """Secure defaults of every job container (``CODEX_JOB_MEMORY``, ``CODEX_JOB_CPUS``…)."""
    metrics_port: int | None = None
    """Port of the worker's Prometheus endpoint (``AGENT_METRICS_PORT``); None serves none."""
    job_retries: int = defaults.JOB_RETRIES
    """Retries of a failed Codex job (``CODEX_JOB_RETRIES``)."""
    job_retry_backoff: float = defaults.JOB_RETRY_BACKOFF
    """Seconds before the first retry, doubled each time (``CODEX_JOB_RETRY_BACKOFF``)."""
    move_first_phase: bool = False
    """Sharded mode: a first phase leaves a shard held at its usage limit (``CODEX_MOVE_FIRST_PHASE``)."""
    codex_endpoints: tuple[tuple[str, str], ...] = ()
    """The Codex endpoint overrides set here (``CODEX_REFRESH_TOKEN_URL_OVERRIDE``…), as name and value:
    every phase's job gets them."""

    @property
    def topology(self) -> Topology:
        """Every queue rule for this shard count and mode."""
        return Topology(self.shards, self.queue_mode)

    @property
    def is_codex_worker(self) -> bool:
        """Whether this worker serves a Codex shard (``CODEX_SHARD_INDEX`` is set)."""
        return self.shard_index is not None

    @property
    def job_uid(self) -> int:
        """The numeric uid job containers run as."""
        return int(self.job_user.split(":", 1)[0])

    def shard_facts(self, volume: str | None = None) -> dict[str, Any]:
        """The shard, volume and worker that this worker's audit lines and errors name.

        Args:
            volume: the volume really mounted (the mount check's finding), when known.
        """
        return {"shard": self.shard_index, "volume": volume or self.volume_name, "worker": self.worker_name}

    def facts(self) -> dict[str, Any]:
        """Shard, volume and paths, for error messages and audit lines."""
        return {
            **self.shard_facts(),
            "queue": self.codex_queue,
            "codex_home": str(self.codex_home),
            "uid": os.getuid(),
        }


def _codex_queues(environ: Mapping[str, str], shard_index: int | None, mode: QueueMode, shards: int) -> tuple[str, ...]:
    override: str | None = variables.read(environ, "CODEX_QUEUE")
    if override is not None:
        return (override,)
    if shard_index is None:
        return ()
    return Topology(shards, mode).worker_queues(shard_index)


def load(environ: Mapping[str, str] | None = None) -> AgentConfig:
    """Read and validate the environment contract.

    Args:
        environ: the variables to read; ``os.environ`` when omitted.

    Returns:
        The validated, immutable configuration.

    Raises:
        ConfigError: a variable has a value outside what is accepted.
    """
    env: Mapping[str, str] = os.environ if environ is None else environ
    read = partial(variables.read, env)
    shards: int = read("CODEX_SHARDS")
    shard_index: int | None = read(
        "CODEX_SHARD_INDEX",
        accepted=f"an integer from 0 to {shards - 1} (CODEX_SHARDS={shards}), or unset for a non-Codex worker",
    )
    if shard_index is not None and shard_index >= shards:
        raise ConfigError(
            variable="CODEX_SHARD_INDEX",
            value=str(shard_index),
            cause=f"index must be below CODEX_SHARDS={shards}",
            accepted=f"an integer from 0 to {shards - 1}, or raise CODEX_SHARDS",
        )
    mode = cast(QueueMode, read("CODEX_QUEUE_MODE"))
    codex_home: str | None = read("CODEX_HOME")
    if codex_home is None:  # the default, $HOME/.codex, must be absolute too
        codex_home = os.path.join(read("HOME", default=os.path.expanduser("~")), ".codex")
    queues = _codex_queues(env, shard_index, mode, shards)
    return AgentConfig(
        shard_index=shard_index,
        shards=shards,
        queue_mode=mode,
        codex_queue=queues[0] if queues else None,
        codex_queues=queues,
        volume_name=read(
            "CODEX_VOLUME_NAME",
            default=None if shard_index is None else defaults.VOLUME_TEMPLATE.format(index=shard_index),
        ),
        codex_home=Path(codex_home),
        job_home=read("CODEX_JOB_HOME"),
        job_user=read("CODEX_JOB_USER"),
        login_check=cast(LoginCheckMode, read("CODEX_LOGIN_CHECK")),
        login_check_image=read("CODEX_LOGIN_CHECK_IMAGE"),
        login_timeout=read("CODEX_LOGIN_TIMEOUT"),
        recheck_interval=read("AGENT_RECHECK_INTERVAL"),
        fail_fast=read("AGENT_FAIL_FAST"),
        state_dir=Path(read("AGENT_STATE_DIR")),
        broker_url=read("CELERY_BROKER_URL"),
        codex_bin=read("CODEX_BIN"),
        log_level=read("AGENT_LOG_LEVEL"),
        worker_name=read("AGENT_WORKER_NAME", default=socket.gethostname()),
        fleet_lease=read("AGENT_FLEET_LEASE"),
        watch_mode=cast(WatchMode, read("AGENT_WATCH")),
        job_image=read("CODEX_JOB_IMAGE"),
        job_network=read("CODEX_JOB_NETWORK"),
        phase_timeout=read("CODEX_PHASE_TIMEOUT"),
        artifacts_root=Path(read("CODEX_ARTIFACTS_ROOT")),
        seed_root=read("CODEX_SEED_ROOT"),
        workspace_retention=read("CODEX_WORKSPACE_RETENTION"),
        sandbox=load_sandbox(env),
        metrics_port=read("AGENT_METRICS_PORT"),
        job_retries=read("CODEX_JOB_RETRIES"),
        job_retry_backoff=read("CODEX_JOB_RETRY_BACKOFF"),
        move_first_phase=read("CODEX_MOVE_FIRST_PHASE"),
        codex_endpoints=tuple(
            (name, value)
            for name in variables.CODEX_ENDPOINT_OVERRIDES
            if (value := variables.raw(env, name)) is not None
        ),
    )
