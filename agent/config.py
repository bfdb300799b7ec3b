"""The environment contract, parsed and validated into one frozen object.

``load(environ)`` reads a mapping (``os.environ`` by default) so tests and tools can inject
their own; every bad value raises :class:`~agent.errors.ConfigError` naming the variable, the
value and what is accepted.
"""

from __future__ import annotations

import math
import os
import re
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypeVar, cast
from urllib.parse import urlsplit

from agent import defaults
from agent.errors import ConfigError
from agent.routing import QueueMode, Topology
from agent.sandbox import Sandbox, load_sandbox

__all__ = ["AgentConfig", "load"]

LoginCheckMode = Literal["local", "container"]
WatchMode = Literal["events", "poll"]

_VOLUME_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]+$")
_QUEUE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$")
_JOB_USER = re.compile(r"^(\d+):(\d+)$")
_NETWORK_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")
_BROKER_SCHEMES = ("amqp", "amqps", "pyamqp", "redis", "rediss", "sentinel", "memory")
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")

T = TypeVar("T")


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
    codex_queues: tuple[str, ...] = ()
    """Every Codex queue this worker consumes (``codex_queue`` first): ``CODEX_QUEUE`` alone when set,
    else the topology's (its own ``codex-N``, and the shared ``codex`` in single mode)."""
    sandbox: Sandbox = field(default_factory=Sandbox)
    """Secure defaults of every job container (``CODEX_JOB_MEMORY``, ``CODEX_JOB_CPUS``…)."""
    metrics_port: int | None = None
    """Port of the worker's Prometheus endpoint (``AGENT_METRICS_PORT``); None serves none."""

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

    def facts(self) -> dict[str, object]:
        """Shard, volume and paths, for error messages and audit lines."""
        return {
            "shard": self.shard_index,
            "volume": self.volume_name,
            "queue": self.codex_queue,
            "codex_home": str(self.codex_home),
            "worker": self.worker_name,
            "uid": os.getuid(),
        }


def _get(environ: Mapping[str, str], name: str) -> str | None:
    value = environ.get(name)
    if value is None or value.strip() == "":
        return None
    return value.strip()


def _parse(
    environ: Mapping[str, str],
    name: str,
    convert: Callable[[str], T],
    accepted: str,
    default: T,
) -> T:
    raw = _get(environ, name)
    if raw is None:
        return default
    try:
        return convert(raw)
    except (ValueError, TypeError) as e:
        raise ConfigError(variable=name, value=raw, cause=str(e) or "bad value", accepted=accepted) from e


def _int_at_least(minimum: int) -> Callable[[str], int]:
    def convert(raw: str) -> int:
        value = int(raw)
        if value < minimum:
            raise ValueError(f"must be >= {minimum}")
        return value

    return convert


def _positive_seconds(raw: str) -> float:
    value = float(raw)
    if not math.isfinite(value) or value <= 0:
        raise ValueError("must be a positive finite number of seconds")
    return value


def _port(raw: str) -> int:
    value = int(raw)
    if not 1 <= value <= 65535:
        raise ValueError("must be a TCP port between 1 and 65535")
    return value


def _bool(raw: str) -> bool:
    lowered = raw.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError("not a boolean")


def _choice(*choices: str) -> Callable[[str], str]:
    def convert(raw: str) -> str:
        if raw not in choices:
            raise ValueError("unknown value")
        return raw

    return convert


def _matching(pattern: re.Pattern[str]) -> Callable[[str], str]:
    def convert(raw: str) -> str:
        if not pattern.match(raw):
            raise ValueError("malformed")
        return raw

    return convert


def _absolute_path(raw: str) -> str:
    if not raw.startswith("/"):
        raise ValueError("not an absolute path")
    if "\x00" in raw:
        raise ValueError("a path has no NUL byte")
    return os.path.normpath(raw)


def _job_user(raw: str) -> str:
    match = _JOB_USER.match(raw)
    if not match:
        raise ValueError("not numeric uid:gid")
    if int(match.group(1)) == 0 or int(match.group(2)) == 0:
        raise ValueError("job containers never run as root")
    return raw


def _broker_url(raw: str) -> str:
    scheme = raw.split("://", 1)[0].split("+", 1)[0] if "://" in raw else ""
    if scheme not in _BROKER_SCHEMES:
        raise ValueError("unsupported broker scheme")
    try:  # a bad port or IPv6 host fails here, not later as a traceback in kombu or the drain
        urlsplit(raw).port
    except ValueError as e:
        raise ValueError(f"not a URL ({e})") from None
    return raw


_IMAGE_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_IMAGE_REF = re.compile(
    rf"^(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*(?::[0-9]+)?/)?"
    rf"{_IMAGE_COMPONENT}(?:/{_IMAGE_COMPONENT})*(?::[A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}})?(?:@sha256:[0-9a-f]{{64}})?$"
)
"""A Docker image reference: ``[registry[:port]/]name[/name...][:tag][@sha256:digest]``."""
_IMAGE_ACCEPTED = "a Docker image reference, e.g. codex-worker-agent/job:dev or registry:5000/team/job:1.2"


def _image(raw: str) -> str:
    if len(raw) > 255 or not _IMAGE_REF.match(raw):
        raise ValueError("not a Docker image reference")
    return raw


def _job_image(raw: str) -> str | None:
    """``CODEX_JOB_IMAGE`` when set: an image reference, or None for ``none`` (no job container)."""
    return None if raw.lower() == "none" else _image(raw)


def _executable(raw: str) -> str:
    """``CODEX_BIN``: a command found on PATH or an absolute path, never one relative to the cwd.

    Whether it exists is the login check's verdict (CODEX-E031, the gate reopens once it is there).
    """
    if "\x00" in raw:
        raise ValueError("a command name or path has no NUL byte")
    if "/" in raw and not raw.startswith("/"):
        raise ValueError("a relative path depends on the working directory")
    return raw


def _codex_queues(
    environ: Mapping[str, str], shard_index: int | None, mode: QueueMode, shards: int
) -> tuple[str, ...]:
    override = _parse(
        environ, "CODEX_QUEUE", _matching(_QUEUE_NAME), "a queue name of letters, digits, . _ : -", None
    )
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

    shards = _parse(env, "CODEX_SHARDS", _int_at_least(1), "an integer >= 1", defaults.SHARDS)
    shard_index = _parse(
        env,
        "CODEX_SHARD_INDEX",
        _int_at_least(0),
        f"an integer from 0 to {shards - 1} (CODEX_SHARDS={shards}), or unset for a non-Codex worker",
        None,
    )
    if shard_index is not None and shard_index >= shards:
        raise ConfigError(
            variable="CODEX_SHARD_INDEX",
            value=str(shard_index),
            cause=f"index must be below CODEX_SHARDS={shards}",
            accepted=f"an integer from 0 to {shards - 1}, or raise CODEX_SHARDS",
        )
    mode = cast(
        QueueMode,
        _parse(env, "CODEX_QUEUE_MODE", _choice("sharded", "single"), "sharded or single", str(defaults.QUEUE_MODE)),
    )
    volume_default = (
        defaults.VOLUME_TEMPLATE.format(index=shard_index) if shard_index is not None else None
    )
    home = _get(env, "HOME") or os.path.expanduser("~")
    codex_home = _parse(env, "CODEX_HOME", _absolute_path, "an absolute path", None)
    if codex_home is None:  # the default, $HOME/.codex, must be absolute too
        home = _parse(env, "HOME", _absolute_path, "an absolute path, or set CODEX_HOME", home)
        codex_home = os.path.join(home, ".codex")
    login_check = cast(
        LoginCheckMode,
        _parse(env, "CODEX_LOGIN_CHECK", _choice("local", "container"), "local or container", str(defaults.LOGIN_CHECK)),
    )
    queues = _codex_queues(env, shard_index, mode, shards)
    return AgentConfig(
        shard_index=shard_index,
        shards=shards,
        queue_mode=mode,
        codex_queue=queues[0] if queues else None,
        codex_queues=queues,
        volume_name=_parse(
            env,
            "CODEX_VOLUME_NAME",
            _matching(_VOLUME_NAME),
            "a Docker volume name ([a-zA-Z0-9][a-zA-Z0-9_.-]+)",
            volume_default,
        ),
        codex_home=Path(
            codex_home
        ),
        job_home=_parse(env, "CODEX_JOB_HOME", _absolute_path, "an absolute path", defaults.JOB_HOME),
        job_user=_parse(
            env, "CODEX_JOB_USER", _job_user, "numeric uid:gid other than root, e.g. 1000:1000", defaults.JOB_USER
        ),
        login_check=login_check,
        login_check_image=_parse(env, "CODEX_LOGIN_CHECK_IMAGE", _image, _IMAGE_ACCEPTED, defaults.LOGIN_CHECK_IMAGE),
        login_timeout=_parse(
            env, "CODEX_LOGIN_TIMEOUT", _positive_seconds, "a positive number of seconds", defaults.LOGIN_TIMEOUT
        ),
        recheck_interval=_parse(
            env,
            "AGENT_RECHECK_INTERVAL",
            _positive_seconds,
            "a positive number of seconds",
            defaults.RECHECK_INTERVAL,
        ),
        fail_fast=_parse(env, "AGENT_FAIL_FAST", _bool, "0 or 1 (also true/false, yes/no)", False),
        state_dir=Path(
            _parse(env, "AGENT_STATE_DIR", _absolute_path, "an absolute path", defaults.STATE_DIR)
        ),
        broker_url=_parse(
            env,
            "CELERY_BROKER_URL",
            _broker_url,
            "a URL with scheme " + ", ".join(_BROKER_SCHEMES),
            defaults.BROKER_URL,
        ),
        codex_bin=_parse(env, "CODEX_BIN", _executable, "a command on PATH (codex) or an absolute path", defaults.CODEX_BIN),
        log_level=_parse(
            env,
            "AGENT_LOG_LEVEL",
            lambda raw: _choice("DEBUG", "INFO", "WARNING", "ERROR")(raw.upper()),
            "DEBUG, INFO, WARNING or ERROR",
            defaults.LOG_LEVEL,
        ),
        worker_name=_get(env, "AGENT_WORKER_NAME") or socket.gethostname(),
        fleet_lease=_parse(env, "AGENT_FLEET_LEASE", _bool, "on or off (also 1/0, true/false, yes/no)", True),
        watch_mode=cast(
            WatchMode,
            _parse(env, "AGENT_WATCH", _choice("events", "poll"), "events or poll", str(defaults.WATCH_MODE)),
        ),
        job_image=_parse(env, "CODEX_JOB_IMAGE", _job_image, f"{_IMAGE_ACCEPTED}, or none", cast("str | None", defaults.JOB_IMAGE)),
        job_network=_parse(
            env, "CODEX_JOB_NETWORK", _matching(_NETWORK_NAME), "a Docker network name (e.g. bridge, host, codex_jobs)", None
        ),
        phase_timeout=_parse(
            env, "CODEX_PHASE_TIMEOUT", _positive_seconds, "a positive number of seconds", defaults.PHASE_TIMEOUT
        ),
        artifacts_root=Path(
            _parse(env, "CODEX_ARTIFACTS_ROOT", _absolute_path, "an absolute path", defaults.ARTIFACTS_ROOT)
        ),
        seed_root=_parse(env, "CODEX_SEED_ROOT", lambda raw: Path(_absolute_path(raw)),
                         "an absolute path, or unset for no workspace seeds", None),
        sandbox=load_sandbox(env),
        metrics_port=_parse(env, "AGENT_METRICS_PORT", _port, "a TCP port (1-65535), or unset for no metrics", None),
    )
