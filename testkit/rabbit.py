"""``rabbitmqctl`` for tests that need a private vhost on the real RabbitMQ (and its connections)."""

from __future__ import annotations

import subprocess

__all__ = ["rabbitmqctl"]


def rabbitmqctl(*args: str) -> None:
    """Run ``rabbitmqctl -q ARGS``; raises CalledProcessError when it fails."""
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)
