"""``python -m agent.guard``: run the Docker API guard until SIGTERM or SIGINT.

``python -m agent.guard --probe`` is its HEALTHCHECK: every shard endpoint answers ``/_ping``
through to the engine (exit 0), or the first that does not, a socket deleted or never bound, is
named (exit 1). ``--help`` and ``--version`` print and start nothing; an unknown argument is a usage
error (exit 2), never a guard started by accident.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import sys

import docker
import docker.errors

from agent.errors import AgentError, GuardBusyError
from agent.guard.config import GuardConfig, load_guard_config
from agent.guard.server import GuardServer
from agent.settings import variables
from agent.telemetry.audit import configure_logging

__all__ = ["main", "probe", "serve"]


async def serve(config: GuardConfig) -> None:
    """Serve every endpoint until a termination signal; the sockets are removed on the way out."""
    server = GuardServer(config)
    try:
        await server.start()
    except GuardBusyError as e:
        print(json.dumps({"event": "codex.guard.busy", **e.to_dict()}), flush=True)
        sys.exit(e.exit_code)
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


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("codex-worker-agent")
    except PackageNotFoundError:
        return "unknown"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m agent.guard",
        description="The Docker API guard: holds the Docker socket and serves one endpoint per Codex shard at "
        "$CODEX_GUARD_SOCKET_DIR/<volume>/docker.sock, judging every call (runbook.md, "
        "'Reading a refusal of the Docker API guard'). Configured by the environment: "
        "CODEX_GUARD_SOCKET_DIR, CODEX_GUARD_SHARDS, CODEX_GUARD_VOLUME_PREFIX, CODEX_GUARD_UPSTREAM, "
        "CODEX_GUARD_SOCKET_OWNER and the job policy variables (CODEX_JOB_*).",
        epilog="Exit codes: 0 stopped by SIGTERM/SIGINT, or --probe healthy; 1 --probe unhealthy, or another "
        "guard serves the directory (CODEX-E046); 2 a usage or configuration error (CODEX-E001).",
    )
    parser.add_argument(
        "--probe",
        action="store_true",
        help="health check: every endpoint answers /_ping through to the engine (exit 0) or not (exit 1)",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    return parser


def main(argv: list[str] | None = None) -> None:
    """Entry point: JSON log lines on stdout, a configuration error as one JSON line and exit 2."""
    args = _parser().parse_args(argv)
    try:
        configure_logging(variables.read(os.environ, "AGENT_LOG_LEVEL"))
        config = load_guard_config()
    except AgentError as e:
        print(json.dumps({"event": "codex.guard.config_error", **e.to_dict()}), flush=True)
        sys.exit(e.exit_code)
    if args.probe:
        failed = probe(config)
        print(failed or "healthy")
        sys.exit(1 if failed else 0)
    asyncio.run(serve(config))


if __name__ == "__main__":
    main()
