"""Every environment variable the agent reads, declared once: name, parser, what is accepted, default, meaning.

In the manner of celery's ``app/defaults.py`` options: :data:`VARIABLES` is the one table.
:func:`agent.settings.config.load` (the worker's :class:`~agent.settings.config.AgentConfig`, its sandbox and retry
policy), :func:`agent.guard.config.load_guard_config` and the worker settings read their variables
through :func:`read`, once, when the process starts; nothing reads the environment later. Every
bad value is :class:`~agent.errors.ConfigError` (CODEX-E001) naming the variable, the value and
what is accepted. The README's variable tables are checked against this table by
``tests/unit/test_variables.py``, which also starts a worker with each ``invalid`` example.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from docker.utils import parse_bytes

from agent.errors import ConfigError
from agent.settings import defaults

__all__ = ["Variable", "VARIABLES", "PASSED_THROUGH", "read", "raw"]

_NOT_GIVEN: Any = object()


@dataclass(frozen=True)
class Variable:
    """One environment variable of the contract."""

    name: str
    parse: Callable[[str], Any]
    accepted: str
    default: Any
    meaning: str
    invalid: str
    """A value the parser refuses: the start-time test sets it and expects CODEX-E001."""


# -- parsers: each raises ValueError saying what is wrong ------------------------------------------


def int_at_least(minimum: int) -> Callable[[str], int]:
    """An integer >= ``minimum``."""

    def convert(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise ValueError(f"must be >= {minimum}")
        return value

    return convert


def positive_seconds(text: str) -> float:
    """A positive, finite number of seconds."""
    value = float(text)
    if not math.isfinite(value) or value <= 0:
        raise ValueError("must be a positive finite number of seconds")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 65535:
        raise ValueError("must be a TCP port between 1 and 65535")
    return value


def flag(text: str) -> bool:
    """1/0, true/false, yes/no, on/off."""
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError("not a boolean")


def choice(*choices: str, fold: Callable[[str], str] = str) -> Callable[[str], str]:
    """One of ``choices`` (after ``fold``)."""

    def convert(text: str) -> str:
        if fold(text) not in choices:
            raise ValueError("unknown value")
        return fold(text)

    return convert


def matching(pattern: str) -> Callable[[str], str]:
    """A whole match of ``pattern``."""
    compiled = re.compile(pattern)

    def convert(text: str) -> str:
        if not compiled.fullmatch(text):
            raise ValueError("malformed")
        return text

    return convert


def absolute_path(text: str) -> str:
    """An absolute path, normalised."""
    if not text.startswith("/"):
        raise ValueError("not an absolute path")
    if "\x00" in text:
        raise ValueError("a path has no NUL byte")
    return os.path.normpath(text)


def _job_user(text: str) -> str:
    match = re.fullmatch(r"(\d+):(\d+)", text)
    if not match:
        raise ValueError("not numeric uid:gid")
    if int(match.group(1)) == 0 or int(match.group(2)) == 0:
        raise ValueError("job containers never run as root")
    return text


BROKER_SCHEMES = ("amqp", "amqps", "pyamqp", "redis", "rediss", "sentinel", "memory")


def _broker_url(text: str) -> str:
    scheme = text.split("://", 1)[0].split("+", 1)[0] if "://" in text else ""
    if scheme not in BROKER_SCHEMES:
        raise ValueError("unsupported broker scheme")
    try:  # a bad port or IPv6 host fails here, not later as a traceback in kombu or the drain
        urlsplit(text).port  # noqa: B018  (reading it validates it)
    except ValueError as e:
        raise ValueError(f"not a URL ({e})") from None
    return text


_IMAGE_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_IMAGE_REF = re.compile(
    rf"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*(?::[0-9]+)?/)?"
    rf"{_IMAGE_COMPONENT}(?:/{_IMAGE_COMPONENT})*(?::[A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}})?(?:@sha256:[0-9a-f]{{64}})?"
)
IMAGE_ACCEPTED = "a Docker image reference, e.g. codex-worker-agent/job:dev or registry:5000/team/job:1.2"


def image(text: str) -> str:
    """A Docker image reference: ``[registry[:port]/]name[/name...][:tag][@sha256:digest]``."""
    if len(text) > 255 or not _IMAGE_REF.fullmatch(text):
        raise ValueError("not a Docker image reference")
    return text


def _job_image(text: str) -> str | None:
    return None if text.lower() == "none" else image(text)


def _executable(text: str) -> str:
    """A command found on PATH or an absolute path, never one relative to the cwd (whether it exists is
    the login check's verdict, CODEX-E031, and the gate reopens once it is there)."""
    if "\x00" in text:
        raise ValueError("a command name or path has no NUL byte")
    if "/" in text and not text.startswith("/"):
        raise ValueError("a relative path depends on the working directory")
    return text


def _seconds_or_zero(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or value < 0:
        raise ValueError("must be a finite number of seconds >= 0")
    return value


def size(text: str) -> int:
    """A size of at least Docker's minimum of 6m (bytes, or 512m, 4g…)."""
    try:
        value = int(parse_bytes(text.lower()))
    except Exception as e:  # docker.errors.DockerException for "4x", "g"…
        raise ValueError(str(e) or "not a size") from None
    if value < 6 * 1024**2:
        raise ValueError("below Docker's minimum of 6m")
    return value


def _cpus(text: str) -> int:
    value = float(text)
    if not value > 0 or value != value or value > 1024:
        raise ValueError("must be a positive number of CPUs")
    return int(value * 1e9)


def _percent(text: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and 0 < value <= 100):
        raise ValueError("must be above 0 and at most 100")
    return value


_NAME = r"[a-zA-Z0-9][a-zA-Z0-9_.-]+"
_SECONDS = "a positive number of seconds"
_FLAG = "0 or 1 (also true/false, yes/no, on/off)"
_PATH = "an absolute path"

VARIABLES: dict[str, Variable] = {
    v.name: v
    for v in (
        # -- which worker this is
        Variable(
            "CODEX_SHARD_INDEX",
            int_at_least(0),
            "an integer from 0 to CODEX_SHARDS - 1, or unset for a non-Codex worker",
            None,
            "this worker's shard number (0-based); unset = not a Codex worker",
            "-1",
        ),
        Variable(
            "CODEX_SHARDS",
            int_at_least(1),
            "an integer >= 1",
            defaults.SHARDS,
            "number of Codex shards (workers and publishers must agree)",
            "0",
        ),
        Variable(
            "CODEX_QUEUE_MODE",
            choice("sharded", "single"),
            "sharded or single",
            defaults.QUEUE_MODE,
            "sharded (queues codex-N) or single (the shared durable queue codex)",
            "fanout",
        ),
        Variable(
            "CODEX_QUEUE",
            matching(r"[A-Za-z0-9][A-Za-z0-9_.:-]*"),
            "a queue name of letters, digits, . _ : -",
            None,
            "override of this worker's Codex queue name",
            "-bad",
        ),
        Variable(
            "CODEX_VOLUME_NAME",
            matching(_NAME),
            "a Docker volume name ([a-zA-Z0-9][a-zA-Z0-9_.-]+)",
            None,
            "the Docker volume this shard must own (default codex_auth_{index})",
            "../x",
        ),
        Variable(
            "CODEX_HOME",
            absolute_path,
            _PATH,
            None,
            "where the volume is mounted in the worker ($HOME/.codex)",
            "relative/.codex",
        ),
        Variable("HOME", absolute_path, "an absolute path, or set CODEX_HOME", None, "the worker user's home", "home"),
        # -- job containers
        Variable(
            "CODEX_JOB_HOME",
            absolute_path,
            _PATH,
            defaults.JOB_HOME,
            "where job containers get the volume",
            "home/.codex",
        ),
        Variable(
            "CODEX_JOB_USER",
            _job_user,
            "numeric uid:gid other than root, e.g. 1000:1000",
            defaults.JOB_USER,
            "uid:gid job containers run as (never root)",
            "0:0",
        ),
        Variable(
            "CODEX_JOB_IMAGE",
            _job_image,
            f"{IMAGE_ACCEPTED}, or none",
            defaults.JOB_IMAGE,
            "image of a Codex phase's job container; none runs no container",
            "not an image",
        ),
        Variable(
            "CODEX_JOB_NETWORK",
            matching(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*"),
            "a Docker network name (e.g. bridge, host, codex_jobs)",
            None,
            "the network every job container joins (unset: Docker's default)",
            "bad network",
        ),
        Variable(
            "CODEX_JOB_MEMORY",
            size,
            "a size of at least 6m, e.g. 512m or 4g",
            defaults.JOB_MEMORY,
            "memory limit of a job container",
            "lots",
        ),
        Variable(
            "CODEX_JOB_CPUS",
            _cpus,
            "a positive number of CPUs, e.g. 1.5",
            None,
            "CPUs a job container may use (default 2, or the host's count when it has fewer)",
            "-1",
        ),
        Variable(
            "CODEX_JOB_PIDS_LIMIT",
            int_at_least(16),
            "an integer >= 16",
            defaults.JOB_PIDS_LIMIT,
            "processes and threads a job container may hold",
            "3",
        ),
        Variable("CODEX_JOB_READ_ONLY", flag, _FLAG, True, "1: the job's root filesystem is read-only", "maybe"),
        Variable(
            "CODEX_JOB_TMP_SIZE",
            size,
            "a size of at least 6m, e.g. 512m",
            defaults.JOB_TMP_SIZE,
            "size of the job's private /tmp (also the cap of its shm)",
            "x",
        ),
        Variable(
            "CODEX_JOB_RETRIES",
            int_at_least(0),
            "an integer >= 0",
            defaults.JOB_RETRIES,
            "retries of a failed Codex job (CODEX-E042) on the same shard",
            "-1",
        ),
        Variable(
            "CODEX_JOB_RETRY_BACKOFF",
            positive_seconds,
            _SECONDS,
            defaults.JOB_RETRY_BACKOFF,
            "seconds before the first retry, doubling",
            "0",
        ),
        Variable(
            "CODEX_PHASE_TIMEOUT",
            positive_seconds,
            _SECONDS,
            defaults.PHASE_TIMEOUT,
            "wall-clock seconds a Codex phase may run (CODEX-E043)",
            "soon",
        ),
        Variable(
            "CODEX_ARTIFACTS_ROOT",
            absolute_path,
            _PATH,
            defaults.ARTIFACTS_ROOT,
            "where each run keeps its artifacts and completion records",
            "artifacts",
        ),
        Variable(
            "CODEX_WORKSPACE_RETENTION",
            _seconds_or_zero,
            "a number of seconds >= 0 (0: keep every workspace)",
            0.0,
            "seconds a run's workspace volume may stay idle before the sweep removes it (0: kept)",
            "-1",
        ),
        Variable(
            "CODEX_SEED_ROOT",
            lambda text: Path(absolute_path(text)),
            "an absolute path, or unset for no workspace seeds",
            None,
            "the directory a phase's seed= may name (a directory or a tar under it)",
            "seeds",
        ),
        # -- the login check
        Variable(
            "CODEX_LOGIN_CHECK",
            choice("local", "container"),
            "local or container",
            defaults.LOGIN_CHECK,
            "local (codex login status in the worker) or container (a throwaway container)",
            "remote",
        ),
        Variable(
            "CODEX_LOGIN_CHECK_IMAGE",
            image,
            IMAGE_ACCEPTED,
            defaults.LOGIN_CHECK_IMAGE,
            "image of the throwaway login-check container",
            "job:",
        ),
        Variable(
            "CODEX_LOGIN_TIMEOUT",
            positive_seconds,
            _SECONDS,
            defaults.LOGIN_TIMEOUT,
            "seconds before a login check counts as failed",
            "-5",
        ),
        Variable(
            "CODEX_BIN",
            _executable,
            "a command on PATH (codex) or an absolute path",
            defaults.CODEX_BIN,
            "the Codex CLI the local login check runs",
            "bin/codex",
        ),
        # -- the agent
        Variable(
            "AGENT_RECHECK_INTERVAL",
            positive_seconds,
            _SECONDS,
            defaults.RECHECK_INTERVAL,
            "seconds between re-checks while the gate is closed",
            "0",
        ),
        Variable("AGENT_FAIL_FAST", flag, _FLAG, False, "1: exit instead of waiting with a closed gate", "sometimes"),
        Variable(
            "AGENT_STATE_DIR",
            absolute_path,
            _PATH,
            defaults.STATE_DIR,
            "where the agent publishes its live state for status and HEALTHCHECK",
            "state",
        ),
        Variable(
            "AGENT_LOG_LEVEL",
            choice("DEBUG", "INFO", "WARNING", "ERROR", fold=str.upper),
            "DEBUG, INFO, WARNING or ERROR",
            defaults.LOG_LEVEL,
            "level of the JSON log lines",
            "LOUD",
        ),
        Variable(
            "AGENT_WORKER_NAME",
            matching(r"[\x21-\x7e]{1,255}"),
            "printable characters, no spaces",
            None,
            "the worker's name in audit lines (default: the host name)",
            "a b",
        ),
        Variable(
            "AGENT_FLEET_LEASE",
            flag,
            "on or off (also 1/0, true/false, yes/no)",
            True,
            "lease each login fleet-wide in the broker (CODEX-E013 for a copy)",
            "perhaps",
        ),
        Variable(
            "AGENT_WATCH",
            choice("events", "poll"),
            "events or poll",
            defaults.WATCH_MODE,
            "events (inotify and the mount table) or poll (a 0.5 s stat loop)",
            "magic",
        ),
        Variable(
            "AGENT_METRICS_PORT",
            _port,
            "a TCP port (1-65535), or unset for no metrics",
            None,
            "port of the worker's Prometheus endpoint",
            "70000",
        ),
        # -- Celery
        Variable(
            "CELERY_BROKER_URL",
            _broker_url,
            "a URL with scheme " + ", ".join(BROKER_SCHEMES),
            defaults.BROKER_URL,
            "broker (RabbitMQ or Redis)",
            "ftp://broker",
        ),
        Variable(
            "CELERY_VISIBILITY_TIMEOUT",
            positive_seconds,
            "a positive number of seconds, longer than the longest phase",
            None,
            "Redis: seconds before an unacknowledged task is delivered again",
            "never",
        ),
        # -- usage limits
        Variable(
            "CODEX_DRAIN_5H_PERCENT",
            _percent,
            "a percent above 0 and at most 100",
            defaults.DRAIN_5H_PERCENT,
            "single mode: at or above this percent of its 5-hour window a shard takes no new runs (100: never)",
            "150",
        ),
        Variable(
            "CODEX_DRAIN_WEEKLY_PERCENT",
            _percent,
            "a percent above 0 and at most 100",
            defaults.DRAIN_WEEKLY_PERCENT,
            "the same for the weekly window",
            "0",
        ),
        Variable(
            "CODEX_MOVE_FIRST_PHASE",
            flag,
            _FLAG,
            False,
            "sharded mode: a run's first phase whose shard is held at its usage limit moves, pinned, "
            "to the open shard with the most headroom (the run gives up its key's shard)",
            "sometimes",
        ),
        # -- the Docker API guard
        Variable(
            "CODEX_GUARD_SOCKET_DIR",
            absolute_path,
            "an absolute directory, e.g. /run/codex-guard",
            defaults.GUARD_SOCKET_DIR,
            "directory of the per-shard endpoints",
            "run",
        ),
        Variable(
            "CODEX_GUARD_SHARDS",
            matching(r"\s*\d+=[a-zA-Z0-9][a-zA-Z0-9_.-]+\s*(,\s*\d+=[a-zA-Z0-9][a-zA-Z0-9_.-]+\s*)*,?"),
            "distinct index=volume pairs, e.g. 0=codex_auth_0,1=codex_auth_1",
            None,
            "the shards the guard serves (unset: discovered by volume name)",
            "zero=a",
        ),
        Variable(
            "CODEX_GUARD_VOLUME_PREFIX",
            matching(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*"),
            "the start of a Docker volume name, e.g. codex_auth_",
            None,
            "every volume <prefix>N is served as shard N (default codex_auth_)",
            "../x",
        ),
        Variable(
            "CODEX_GUARD_UPSTREAM",
            lambda text: absolute_path(text.removeprefix("unix://")),
            "e.g. /var/run/docker.sock or unix:///var/run/docker.sock",
            defaults.GUARD_UPSTREAM,
            "the real engine's socket, which only the guard holds",
            "tcp://x:2375",
        ),
        Variable(
            "CODEX_GUARD_SOCKET_OWNER",
            matching(r"\d+:\d+"),
            "numeric uid:gid, e.g. 1000:1000 (the workers' user)",
            None,
            "uid:gid owning each endpoint socket (default CODEX_JOB_USER)",
            "app",
        ),
    )
}
"""The one table of the environment contract."""

CODEX_ENDPOINT_OVERRIDES = ("CODEX_REFRESH_TOKEN_URL_OVERRIDE", "CODEX_REVOKE_TOKEN_URL_OVERRIDE")
"""Codex's own endpoint overrides, handed from the worker to its jobs when set (staging, tests)."""

PASSED_THROUGH = (
    "CELERY_RESULT_BACKEND",
    "DOCKER_HOST",
    *CODEX_ENDPOINT_OVERRIDES,
    "PROMETHEUS_MULTIPROC_DIR",
)
"""Variables the agent hands on unread: to Celery, the docker SDK, the Codex CLI or prometheus_client."""


def raw(environ: Mapping[str, str], name: str) -> str | None:
    """The stripped value of a declared variable, None when unset or blank."""
    assert name in VARIABLES or name in PASSED_THROUGH, f"{name} is not declared in agent.settings.variables"
    value = environ.get(name)
    if value is None or not value.strip():
        return None
    return value.strip()


def read(environ: Mapping[str, str], name: str, *, default: Any = _NOT_GIVEN, accepted: str | None = None) -> Any:
    """The parsed value of variable ``name``, or its declared default (or ``default``) when unset.

    Args:
        environ: the variables (``os.environ`` or an injected mapping).
        name: a variable of :data:`VARIABLES`.
        default: overrides the declared default (one derived from another variable).
        accepted: overrides the declared accepted text (one that names another variable's value).

    Raises:
        ConfigError: CODEX-E001 naming the variable, the value and what is accepted.
    """
    variable = VARIABLES[name]
    text = raw(environ, name)
    if text is None:
        return variable.default if default is _NOT_GIVEN else default
    try:
        return variable.parse(text)
    except (ValueError, TypeError, OverflowError) as e:
        raise ConfigError(
            variable=name, value=text, cause=str(e) or "bad value", accepted=accepted or variable.accepted
        ) from e
