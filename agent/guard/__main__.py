"""``python -m agent.guard``: run the Docker API guard until SIGTERM or SIGINT.

``python -m agent.guard --probe`` is its HEALTHCHECK: every shard endpoint answers ``/_ping``
through to the engine (exit 0), or the first that does not is named (exit 1).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys

import docker
import docker.errors

from agent.audit import configure_logging
from agent.errors import AgentError
from agent.guard.config import GuardConfig, load_guard_config
from agent.guard.server import GuardServer

__all__ = ["main", "probe", "serve"]


async def serve(config: GuardConfig) -> None:
    """Serve every endpoint until a termination signal; the sockets are removed on the way out."""
    server = GuardServer(config)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        await server.close()


def probe(config: GuardConfig, timeout: float = 5.0) -> str | None:
    """None when every shard's endpoint answers ``GET /_ping`` with 200, else what failed."""
    if config.static is None:
        client = docker.DockerClient(base_url=f"unix://{config.upstream}", timeout=int(timeout))
        try:
            names = [v.name for v in client.volumes.list(filters={"name": config.volume_prefix})]
        except docker.errors.DockerException as e:
            return f"the engine at {config.upstream}: {e}"
        finally:
            client.close()
    policies = config.discovered(names if config.static is None else ())
    for policy in policies:
        path = config.socket_path(policy)
        try:
            with socket.socket(socket.AF_UNIX) as sock:
                sock.settimeout(timeout)
                sock.connect(str(path))
                sock.sendall(b"GET /_ping HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n\r\n")
                status = sock.recv(64).split(b" ", 2)[1:2]
        except OSError as e:
            return f"shard {policy.index}: {path}: {e}"
        if status != [b"200"]:
            return f"shard {policy.index}: {path} answered {status!r}"
    return None


def main() -> None:
    """Entry point: JSON log lines on stdout, a configuration error as one JSON line and exit 2."""
    configure_logging((os.environ.get("AGENT_LOG_LEVEL") or "INFO").upper())
    try:
        config = load_guard_config()
    except AgentError as e:
        print(json.dumps({"event": "codex.guard.config_error", **e.to_dict()}), flush=True)
        sys.exit(e.exit_code)
    if sys.argv[1:] == ["--probe"]:
        failed = probe(config)
        print(failed or "healthy")
        sys.exit(1 if failed else 0)
    asyncio.run(serve(config))


if __name__ == "__main__":
    main()
