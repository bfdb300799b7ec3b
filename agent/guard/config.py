"""The guard's configuration: which shards it serves, where their sockets are, and the real engine.

The job policy (``CODEX_JOB_HOME``, ``CODEX_JOB_USER``, ``CODEX_JOB_NETWORK``, the sandbox
variables, ``CODEX_SHARDS``) is read with the workers' own validation (:func:`agent.config.load`),
so the guard and the workers cannot disagree on what a setting means.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from agent import config as agent_config
from agent import defaults
from agent.errors import ConfigError
from agent.guard.policy import ShardPolicy

__all__ = [
    "SOCKET_DIR_ENV",
    "SHARDS_ENV",
    "VOLUME_PREFIX_ENV",
    "UPSTREAM_ENV",
    "SOCKET_OWNER_ENV",
    "SOCKET_NAME",
    "GuardConfig",
    "load_guard_config",
]

SOCKET_DIR_ENV = "CODEX_GUARD_SOCKET_DIR"
"""Directory of the per-shard endpoints: ``<dir>/<login volume>/docker.sock``. Keyed by the volume,
which is unique per shard and per stack (two stacks on one host never share an endpoint)."""
SHARDS_ENV = "CODEX_GUARD_SHARDS"
"""Explicit ``index=volume`` pairs, comma-separated; unset: shards 0..CODEX_SHARDS-1."""
VOLUME_PREFIX_ENV = "CODEX_GUARD_VOLUME_PREFIX"
"""Volume of shard N is ``<prefix>N`` when ``CODEX_GUARD_SHARDS`` is unset."""
UPSTREAM_ENV = "CODEX_GUARD_UPSTREAM"
"""The real engine's socket, which only the guard holds."""
SOCKET_OWNER_ENV = "CODEX_GUARD_SOCKET_OWNER"
"""``uid:gid`` owning each endpoint socket (mode 0660): the workers' user."""
SOCKET_NAME = "docker.sock"

DEFAULT_SOCKET_DIR = "/run/codex-guard"
DEFAULT_UPSTREAM = "/var/run/docker.sock"
_PAIR = re.compile(r"^(\d+)=([a-zA-Z0-9][a-zA-Z0-9_.-]+)$")
_OWNER = re.compile(r"^(\d+):(\d+)$")


@dataclass(frozen=True)
class GuardConfig:
    """Everything the guard needs, validated."""

    endpoints: tuple[ShardPolicy, ...]
    socket_dir: Path
    upstream: str
    owner: tuple[int, int]

    def socket_path(self, policy: ShardPolicy) -> Path:
        """Where shard ``policy.index``'s endpoint listens: a directory named after its login volume,
        which only that shard's worker mounts (never removed: a worker's bind mount holds it)."""
        return self.socket_dir / policy.volume / SOCKET_NAME


def _bad(variable: str, value: str, cause: str, accepted: str) -> ConfigError:
    return ConfigError(variable=variable, value=value, cause=cause, accepted=accepted)


def _pairs(raw: str) -> list[tuple[int, str]]:
    pairs = []
    for item in filter(None, (part.strip() for part in raw.split(","))):
        match = _PAIR.match(item)
        if not match:
            raise _bad(SHARDS_ENV, raw, f"{item!r} is not index=volume", "e.g. 0=codex_auth_0,1=codex_auth_1")
        pairs.append((int(match.group(1)), match.group(2)))
    if not pairs or len({i for i, _ in pairs}) != len(pairs) or len({v for _, v in pairs}) != len(pairs):
        raise _bad(SHARDS_ENV, raw, "empty, or an index or volume named twice", "distinct index=volume pairs")
    return pairs


def load_guard_config(environ: Mapping[str, str] | None = None) -> GuardConfig:
    """Read and validate the guard's environment.

    Raises:
        ConfigError: CODEX-E001 naming the variable, the value and what is accepted.
    """
    env = os.environ if environ is None else environ
    shared = agent_config.load({k: v for k, v in env.items() if k not in ("CODEX_SHARD_INDEX", "CODEX_QUEUE")})
    explicit = (env.get(SHARDS_ENV) or "").strip()
    if explicit:
        pairs = _pairs(explicit)
    else:
        prefix = (env.get(VOLUME_PREFIX_ENV) or "").strip() or defaults.VOLUME_TEMPLATE.format(index="")
        pairs = [(i, f"{prefix}{i}") for i in range(shared.shards)]
    owner_raw = (env.get(SOCKET_OWNER_ENV) or "").strip() or shared.job_user
    owner = _OWNER.match(owner_raw)
    if not owner:
        raise _bad(SOCKET_OWNER_ENV, owner_raw, "not numeric uid:gid", "e.g. 1000:1000 (the workers' user)")
    socket_dir = (env.get(SOCKET_DIR_ENV) or "").strip() or DEFAULT_SOCKET_DIR
    if not socket_dir.startswith("/"):
        raise _bad(SOCKET_DIR_ENV, socket_dir, "not an absolute path", "an absolute directory, e.g. /run/codex-guard")
    upstream = (env.get(UPSTREAM_ENV) or "").strip().removeprefix("unix://") or DEFAULT_UPSTREAM
    if not upstream.startswith("/"):
        raise _bad(UPSTREAM_ENV, upstream, "not a unix socket path", "e.g. /var/run/docker.sock or unix:///var/run/docker.sock")
    return GuardConfig(
        endpoints=tuple(
            ShardPolicy(index=i, volume=volume, job_home=shared.job_home, job_user=shared.job_user,
                        network=shared.job_network, sandbox=shared.sandbox)
            for i, volume in pairs
        ),
        socket_dir=Path(socket_dir),
        upstream=upstream,
        owner=(int(owner.group(1)), int(owner.group(2))),
    )
