"""The machine a run was measured on: CPU, cores, memory, kernel, Python, Celery, Docker, date."""

from __future__ import annotations

import os
import platform
import subprocess
from datetime import UTC, datetime
from typing import Any

__all__ = ["machine_details"]


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _os_release() -> str:
    try:
        with open("/etc/os-release") as handle:
            for line in handle:
                if line.startswith("PRETTY_NAME="):
                    return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return platform.platform()


def _codex_version(codex_bin: str) -> str:
    try:
        done = subprocess.run([codex_bin, "--version"], capture_output=True, text=True, timeout=20, check=False)
    except OSError:
        return "unknown"
    return done.stdout.strip() or "unknown"


def machine_details(codex_bin: str, docker_client: Any, broker_url: str) -> dict[str, Any]:
    """Everything RESULTS.md states about the machine, as JSON-safe values."""
    import celery
    import docker
    import kombu
    import psutil

    try:
        engine = docker_client.version()
        docker_version = f"{engine.get('Version')} (API {engine.get('ApiVersion')})"
    except Exception:  # noqa: BLE001
        docker_version = "unknown"
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu_model": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "os": _os_release(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "celery": celery.__version__,
        "kombu": kombu.__version__,
        "docker_engine": docker_version,
        "docker_sdk": docker.__version__,
        "codex_cli": _codex_version(codex_bin),
        "broker": broker_url.split("@")[-1] if "@" in broker_url else broker_url,
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }
