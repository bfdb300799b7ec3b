"""``python -m agent.guard``: run the Docker API guard until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys

from agent.audit import configure_logging
from agent.errors import AgentError
from agent.guard.config import GuardConfig, load_guard_config
from agent.guard.server import GuardServer

__all__ = ["main", "serve"]


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


def main() -> None:
    """Entry point: JSON log lines on stdout, a configuration error as one JSON line and exit 2."""
    configure_logging((os.environ.get("AGENT_LOG_LEVEL") or "INFO").upper())
    try:
        config = load_guard_config()
    except AgentError as e:
        print(json.dumps({"event": "codex.guard.config_error", **e.to_dict()}), flush=True)
        sys.exit(e.exit_code)
    asyncio.run(serve(config))


if __name__ == "__main__":
    main()
