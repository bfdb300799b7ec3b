"""Defaults of the environment contract (DESIGN.md), one documented constant each."""

from __future__ import annotations

__all__ = [
    "SHARDS",
    "QUEUE_MODE",
    "SHARDED_QUEUE_TEMPLATE",
    "SINGLE_QUEUE",
    "DEFAULT_QUEUE",
    "VOLUME_TEMPLATE",
    "JOB_HOME",
    "JOB_USER",
    "LOGIN_CHECK",
    "LOGIN_CHECK_IMAGE",
    "LOGIN_TIMEOUT",
    "RECHECK_INTERVAL",
    "STATE_DIR",
    "BROKER_URL",
    "CODEX_BIN",
    "LOG_LEVEL",
    "CLAIM_STALE_AFTER",
    "STALE_REFRESH_DAYS",
    "PREFLIGHT_LOGIN_TTL",
    "WATCH_INTERVAL",
    "OPEN_RECHECK_FACTOR",
    "WATCH_MODE",
    "WATCH_SETTLE",
    "FAILURE_REMINDER_INTERVAL",
    "JOB_IMAGE",
    "PHASE_TIMEOUT",
    "ARTIFACTS_ROOT",
    "JOB_MEMORY",
    "JOB_PIDS_LIMIT",
    "JOB_TMP_SIZE",
    "JOB_RETRIES",
    "JOB_RETRY_BACKOFF",
    "GUARD_SOCKET_DIR",
    "GUARD_UPSTREAM",
    "DRAIN_5H_PERCENT",
    "DRAIN_WEEKLY_PERCENT",
]

SHARDS = 3
"""Number of Codex shards when ``CODEX_SHARDS`` is unset."""

QUEUE_MODE = "sharded"
"""``sharded``: one queue per shard; ``single``: every Codex task on one durable queue."""

SHARDED_QUEUE_TEMPLATE = "codex-{index}"
"""Name of shard ``index``'s queue in sharded mode."""

SINGLE_QUEUE = "codex"
"""The one Codex queue in single mode."""

DEFAULT_QUEUE = "default"
"""Where every non-Codex task goes."""

VOLUME_TEMPLATE = "codex_auth_{index}"
"""Docker named volume holding shard ``index``'s login."""

JOB_HOME = "/home/app/.codex"
"""Where job containers get the auth volume."""

JOB_USER = "1000:1000"
"""uid:gid job containers run as; never root."""

LOGIN_CHECK = "local"
"""``local``: run ``codex login status`` here; ``container``: in a throwaway container."""

LOGIN_CHECK_IMAGE = "codex-worker-agent/job:dev"
"""Image of the throwaway login-check container (needs the Codex CLI)."""

LOGIN_TIMEOUT = 20.0
"""Seconds before a login check counts as failed."""

RECHECK_INTERVAL = 15.0
"""Seconds between re-checks while the gate is closed."""

STATE_DIR = "/tmp/codex-agent"
"""Where the agent publishes its live state for ``codex-agent status``."""

BROKER_URL = "amqp://guest:guest@localhost:5672//"
"""Celery broker when ``CELERY_BROKER_URL`` is unset."""

CODEX_BIN = "codex"
"""The Codex CLI executable, looked up on PATH."""

LOG_LEVEL = "INFO"
"""Level of the JSON log lines."""

CLAIM_STALE_AFTER = 60.0
"""Seconds after which a claim marker from another host, with no heartbeat, counts as dead."""

STALE_REFRESH_DAYS = 8.0
"""Days since ``last_refresh`` after which an expired ChatGPT access token earns a warning."""

PREFLIGHT_LOGIN_TTL = 10.0
"""Seconds a passed login check vouches for the next Codex tasks (while auth.json is unchanged)."""

WATCH_INTERVAL = 0.5
"""Seconds between looks at auth.json and the marker, so a fixed login reopens the gate promptly."""

OPEN_RECHECK_FACTOR = 4
"""While the gate is open, full re-checks run every AGENT_RECHECK_INTERVAL times this."""

WATCH_MODE = "events"
"""``events``: re-check when inotify or the mount table reports a change; ``poll``: the 0.5 s stat loop."""

WATCH_SETTLE = 0.02
"""Seconds of quiet after a file event before the watcher looks, so a login being written is read whole."""

FAILURE_REMINDER_INTERVAL = 300.0
"""Seconds between repeats of an unchanged ``codex.check.failed`` while the gate stays closed."""

JOB_IMAGE = "codex-worker-agent/job:dev"
"""Image of a Codex phase's job container (``CODEX_JOB_IMAGE``; ``none`` runs no container)."""

PHASE_TIMEOUT = 3600.0
"""Wall-clock seconds a Codex phase's job container may run before it is killed (CODEX-E043).
``codex exec`` with no reachable endpoint retries forever, so the limit is the agent's job."""

ARTIFACTS_ROOT = "/var/artifacts/spec_workflows"
"""Where each run keeps its artifacts: ``<root>/<run_id>/<phase>/`` (events, final message, outcome)."""

JOB_MEMORY = 4 * 1024**3
"""Memory limit of a job container (``CODEX_JOB_MEMORY``)."""

JOB_PIDS_LIMIT = 1024
"""Processes and threads a job container may hold (``CODEX_JOB_PIDS_LIMIT``)."""

JOB_TMP_SIZE = 512 * 1024**2
"""Size of a job's private ``/tmp`` tmpfs (``CODEX_JOB_TMP_SIZE``), counted against its memory."""

JOB_RETRIES = 2
"""Retries of a failed Codex job (CODEX-E042) on the same shard (``CODEX_JOB_RETRIES``)."""

JOB_RETRY_BACKOFF = 30.0
"""Seconds before the first retry of a failed job, doubled each time (``CODEX_JOB_RETRY_BACKOFF``)."""

GUARD_SOCKET_DIR = "/run/codex-guard"
"""Directory of the Docker API guard's per-shard endpoints (``CODEX_GUARD_SOCKET_DIR``)."""

GUARD_UPSTREAM = "/var/run/docker.sock"
"""The real engine's socket, which only the guard holds (``CODEX_GUARD_UPSTREAM``)."""

DRAIN_5H_PERCENT = 85.0
"""``CODEX_DRAIN_5H_PERCENT``: at or above it a single-mode shard takes no new runs (codex-lb's)."""

DRAIN_WEEKLY_PERCENT = 95.0
"""``CODEX_DRAIN_WEEKLY_PERCENT``: the same for the weekly window."""
