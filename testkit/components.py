"""Find the real components the tests use, or skip with the name of the one that is absent."""

from __future__ import annotations

import os
import platform
import shutil
import socket
from pathlib import Path
from urllib.parse import urlsplit

import pytest

__all__ = [
    "REPO_ROOT",
    "RABBITMQ_URL",
    "REDIS_URL",
    "find_codex_bin",
    "require_port",
]

REPO_ROOT = Path(__file__).resolve().parents[1]
#: Brokers as scripts/provision.sh starts them; TEST_RABBITMQ_URL / TEST_REDIS_URL override.
RABBITMQ_URL = os.environ.get("TEST_RABBITMQ_URL", "amqp://guest:guest@localhost:5672//")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://localhost:6379/0")

_NPM_PACKAGES = {
    "x86_64": ("codex-linux-x64", "x86_64-unknown-linux-musl"),
    "aarch64": ("codex-linux-arm64", "aarch64-unknown-linux-musl"),
}


def _cached_codex_bin() -> Path | None:
    """Return the binary scripts/provision.sh installs under .cache/codex, if there."""
    package = _NPM_PACKAGES.get(platform.machine())
    if package is None:
        return None
    pkg, triple = package
    path = REPO_ROOT / ".cache/codex/node_modules/@openai" / pkg / "vendor" / triple / "bin/codex"
    return path if path.is_file() else None


def find_codex_bin() -> Path | None:
    """Return the Codex CLI: ``$CODEX_BIN``, else ``codex`` on PATH, else the provisioned one."""
    for candidate in (os.environ.get("CODEX_BIN"), shutil.which("codex"), _cached_codex_bin()):
        if candidate and os.access(candidate, os.X_OK):
            return Path(candidate).resolve()
    return None


def require_port(url: str, component: str, timeout: float = 2.0) -> str:
    """Return ``url`` when its host and port accept a TCP connection, else skip the test.

    Args:
        url: a broker URL with host and port.
        component: what to name in the skip reason, e.g. ``"RabbitMQ"``.
        timeout: seconds to wait for the connection.
    """
    parts = urlsplit(url)
    host, port = parts.hostname or "localhost", parts.port
    if port is None:
        raise ValueError(f"{url!r} names no port")
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return url
    except OSError as exc:
        pytest.skip(f"{component} absent: nothing answers on {host}:{port} ({exc})")
