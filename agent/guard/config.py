"""The guard's configuration: which shards it serves, where their sockets are, and the real engine.

The job policy (``CODEX_JOB_HOME``, ``CODEX_JOB_USER``, ``CODEX_JOB_NETWORK``, the sandbox
variables) is read with the workers' own validation (:func:`agent.config.load`), so the guard and
the workers cannot disagree on what a setting means. The shards are either listed
(``CODEX_GUARD_SHARDS``) or discovered: every volume named ``<CODEX_GUARD_VOLUME_PREFIX><N>`` is
shard N's login, so adding a shard never changes (and never restarts) the guard.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
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
"""Explicit ``index=volume`` pairs, comma-separated; unset: shards are discovered by volume name."""
VOLUME_PREFIX_ENV = "CODEX_GUARD_VOLUME_PREFIX"
"""When ``CODEX_GUARD_SHARDS`` is unset, every volume named ``<prefix>N`` is served as shard N."""
UPSTREAM_ENV = "CODEX_GUARD_UPSTREAM"
"""The real engine's socket, which only the guard holds."""
SOCKET_OWNER_ENV = "CODEX_GUARD_SOCKET_OWNER"
"""``uid:gid`` owning each endpoint socket (mode 0660): the workers' user."""
SOCKET_NAME = "docker.sock"

DEFAULT_SOCKET_DIR = "/run/codex-guard"
DEFAULT_UPSTREAM = "/var/run/docker.sock"
_PAIR = re.compile(r"^(\d+)=([a-zA-Z0-9][a-zA-Z0-9_.-]+)$")
_PREFIX = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")
_OWNER = re.compile(r"^(\d+):(\d+)$")


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
    prefix = (env.get(VOLUME_PREFIX_ENV) or "").strip() or defaults.VOLUME_TEMPLATE.format(index="")
    if not _PREFIX.match(prefix):
        raise _bad(VOLUME_PREFIX_ENV, prefix, "not the start of a Docker volume name", "e.g. codex_auth_")
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
    template = ShardPolicy(index=0, volume="-", job_home=shared.job_home, job_user=shared.job_user,
                           network=shared.job_network, sandbox=shared.sandbox)
    return GuardConfig(
        static=tuple(replace(template, index=i, volume=v) for i, v in _pairs(explicit)) if explicit else None,
        volume_prefix=prefix,
        socket_dir=Path(socket_dir),
        upstream=upstream,
        owner=(int(owner.group(1)), int(owner.group(2))),
        template=template,
    )
