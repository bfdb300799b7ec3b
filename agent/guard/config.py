"""The guard's configuration: which shards it serves, where their sockets are, and the real engine.

The job policy (``CODEX_JOB_HOME``, ``CODEX_JOB_USER``, ``CODEX_JOB_NETWORK``, the sandbox
variables) is read with the workers' own validation (:func:`agent.settings.config.load`), so the guard and
the workers cannot disagree on what a setting means. The shards are either listed
(``CODEX_GUARD_SHARDS``) or discovered: every volume named ``<CODEX_GUARD_VOLUME_PREFIX><N>`` is
shard N's login, so adding a shard never changes (and never restarts) the guard.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

from agent.errors import ConfigError
from agent.guard.policy import ShardPolicy
from agent.settings import config as agent_config
from agent.settings import defaults, variables

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
"""Explicit ``index=volume`` pairs, comma-separated; unset: shards are discovered by volume name."""
VOLUME_PREFIX_ENV = "CODEX_GUARD_VOLUME_PREFIX"
"""When ``CODEX_GUARD_SHARDS`` is unset, every volume named ``<prefix>N`` is served as shard N."""
UPSTREAM_ENV = "CODEX_GUARD_UPSTREAM"
"""The real engine's socket, which only the guard holds."""
SOCKET_OWNER_ENV = "CODEX_GUARD_SOCKET_OWNER"
"""``uid:gid`` owning each endpoint socket (mode 0660): the workers' user."""
SOCKET_NAME = "docker.sock"


@dataclass(frozen=True)
class GuardConfig:
    """Everything the guard needs, validated."""

    static: tuple[ShardPolicy, ...] | None
    """The listed shards, or None to discover them by :attr:`volume_prefix`."""
    volume_prefix: str
    socket_dir: Path
    upstream: str
    owner: tuple[int, int]
    template: ShardPolicy
    """The job policy every shard gets (index and volume filled in per shard)."""

    def policy(self, index: int, volume: str) -> ShardPolicy:
        """Shard ``index``'s policy, its login being ``volume``."""
        return replace(self.template, index=index, volume=volume)

    def discovered(self, volume_names: Iterable[str]) -> list[ShardPolicy]:
        """The shards among these volumes: ``<prefix><N>`` is shard N (the listed ones when static)."""
        if self.static is not None:
            return list(self.static)
        pattern = re.compile(re.escape(self.volume_prefix) + r"(\d+)$")
        found = [(int(m.group(1)), name) for name in volume_names if (m := pattern.match(name))]
        return [self.policy(index, name) for index, name in sorted(found)]

    def socket_path(self, policy: ShardPolicy) -> Path:
        """Where shard ``policy.index``'s endpoint listens: a directory named after its login volume,
        which only that shard's worker mounts (never removed: a worker's bind mount holds it)."""
        return self.socket_dir / policy.volume / SOCKET_NAME


def _pairs(raw: str) -> list[tuple[int, str]]:
    pairs = []
    for item in filter(None, (part.strip() for part in raw.split(","))):
        index, _, volume = item.partition("=")
        pairs.append((int(index), volume))
    if len({i for i, _ in pairs}) != len(pairs) or len({v for _, v in pairs}) != len(pairs):
        raise ConfigError(
            variable=SHARDS_ENV,
            value=raw,
            cause="an index or volume named twice",
            accepted=variables.VARIABLES[SHARDS_ENV].accepted,
        )
    return pairs


def load_guard_config(environ: Mapping[str, str] | None = None) -> GuardConfig:
    """Read and validate the guard's environment, through :mod:`agent.settings.variables`.

    Raises:
        ConfigError: CODEX-E001 naming the variable, the value and what is accepted.
    """
    env = os.environ if environ is None else environ
    shared = agent_config.load({k: v for k, v in env.items() if k not in ("CODEX_SHARD_INDEX", "CODEX_QUEUE")})
    read = partial(variables.read, env)
    explicit: str | None = read(SHARDS_ENV)
    prefix: str = read(VOLUME_PREFIX_ENV, default=defaults.VOLUME_TEMPLATE.format(index=""))
    owner: str = read(SOCKET_OWNER_ENV, default=shared.job_user)
    uid, gid = owner.split(":")
    template = ShardPolicy(
        index=0,
        volume="-",
        job_home=shared.job_home,
        job_user=shared.job_user,
        network=shared.job_network,
        sandbox=shared.sandbox,
    )
    return GuardConfig(
        static=tuple(replace(template, index=i, volume=v) for i, v in _pairs(explicit)) if explicit else None,
        volume_prefix=prefix,
        socket_dir=Path(read(SOCKET_DIR_ENV)),
        upstream=read(UPSTREAM_ENV),
        owner=(int(uid), int(gid)),
        template=template,
    )
