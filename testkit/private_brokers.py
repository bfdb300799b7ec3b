"""Brokers of a test's own, on free ports, that the test may stop and restart.

The shared RabbitMQ and Redis serve every engineer's tests at once, so a test that restarts a broker
starts its own: a ``redis-server`` without persistence, or a second RabbitMQ node (its own node name,
ports and data directory, run as the ``rabbitmq`` user like the shared one). Each is stopped and its
files removed at the end; nothing of the shared brokers is touched.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest

__all__ = ["PrivateBroker", "PrivateRedis", "PrivateRabbitMQ", "free_port"]

_RABBITMQ_SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"
_START_TIMEOUT = 60.0


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class PrivateBroker:
    """A broker process of this test: :meth:`start`, :meth:`stop` (a restart is both), :meth:`close`."""

    url: str
    port: int

    def __init__(self) -> None:
        self.process: subprocess.Popen[bytes] | None = None

    def _argv(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        self.process = subprocess.Popen(
            self._argv(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        deadline = time.monotonic() + _START_TIMEOUT
        while not self._ready():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{type(self).__name__} on port {self.port} did not start")
            time.sleep(0.1)

    def _ready(self) -> bool:
        return _answers(self.port)

    def stop(self) -> None:
        """Stop the server (its clients see their connections drop) and wait for it to exit."""
        if self.process is None or self.process.poll() is not None:
            return
        self._ask_to_stop()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
        while _answers(self.port):
            time.sleep(0.05)

    def _ask_to_stop(self) -> None:
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGTERM)

    def close(self) -> None:
        """Stop for good and remove what the server wrote."""
        self.stop()


class PrivateRedis(PrivateBroker):
    """``redis-server`` on a free port, keeping nothing on disk (a restart loses every key)."""

    def __init__(self, directory: Path) -> None:
        if shutil.which("redis-server") is None:
            pytest.skip("Redis absent: no redis-server to start a private instance")
        super().__init__()
        self.port = free_port()
        self.directory = directory
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def _argv(self) -> list[str]:
        return [
            "redis-server",
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.directory),
        ]

    def _ready(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False


class PrivateRabbitMQ(PrivateBroker):
    """A second RabbitMQ node (own name, AMQP and distribution ports, data directory), as ``rabbitmq``."""

    def __init__(self) -> None:
        if not os.path.exists(_RABBITMQ_SERVER) or shutil.which("su") is None:
            pytest.skip(f"RabbitMQ absent: no {_RABBITMQ_SERVER} to start a private node")
        if os.geteuid() != 0:
            pytest.skip("RabbitMQ absent: a private node runs as the rabbitmq user, which needs root to start")
        super().__init__()
        self.port, self.dist_port = free_port(), free_port()
        self.node = f"cwa-test-{uuid.uuid4().hex[:8]}@localhost"
        self.directory = Path(tempfile.mkdtemp(prefix="cwa-rabbitmq-"))
        (self.directory / "enabled_plugins").write_text("[].\n")
        shutil.chown(self.directory, "rabbitmq", "rabbitmq")
        shutil.chown(self.directory / "enabled_plugins", "rabbitmq", "rabbitmq")
        self.url = f"amqp://guest:guest@127.0.0.1:{self.port}//"

    def _argv(self) -> list[str]:
        env = {
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(self.directory / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.directory / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.directory / "enabled_plugins"),
            "HOME": "/var/lib/rabbitmq",
        }
        assignments = " ".join(f"{name}={value}" for name, value in env.items())
        return ["su", "rabbitmq", "-s", "/bin/sh", "-c", f"{assignments} exec {_RABBITMQ_SERVER}"]

    def _ask_to_stop(self) -> None:
        """``rabbitmqctl -n <this node> stop``: a clean broker shutdown that closes every connection."""
        subprocess.run(["rabbitmqctl", "-q", "-n", self.node, "stop"], capture_output=True, timeout=60, check=False)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)
