"""Reach the Docker engine when it is there, without making it a requirement."""

from __future__ import annotations

import os
from typing import Any

from agent.engine.client import client_from_env
from agent.errors import DockerUnavailableError

__all__ = ["docker_available", "optional_client", "client_for_mount_check"]

_SOCKET = "/var/run/docker.sock"


def docker_available(environ: dict[str, str] | None = None) -> bool:
    """Whether an engine is configured: ``DOCKER_HOST`` set or the default socket present."""
    env = os.environ if environ is None else environ
    return bool(env.get("DOCKER_HOST")) or os.path.exists(_SOCKET)


def optional_client(timeout: float = 10.0) -> Any:
    """A ``docker.DockerClient`` that answered a ping, or None."""
    if not docker_available():
        return None
    try:
        return client_from_env({}, timeout=timeout)
    except DockerUnavailableError:  # no engine here; callers fall back
        return None


def client_for_mount_check() -> Any:
    """A client only where the mount check can use one: inside a container, with an engine.

    Outside a container the check reads ``/proc/self/mountinfo``, so no engine round trip is
    paid at startup.
    """
    from agent.util.host import own_container_id

    return optional_client() if own_container_id() is not None else None
