"""Monitoring pieces a test starts: Debian's Prometheus, a PyPI Flower, and their binaries or a named skip."""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path
from typing import IO, Any

import pytest

from testkit.workers import wait_until

__all__ = ["Flower", "Prometheus", "Samples", "binary_or_skip", "fake_jwt", "free_port", "scrape"]

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
"""A scrape's samples: (name, sorted labels) -> value."""


def scrape(port: int) -> Samples:
    """The samples a worker's endpoint on a loopback port serves now."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for m in text_string_to_metric_families(text)
        for s in m.samples
    }


def fake_jwt(exp: float) -> str:
    """An unsigned JWT whose only meaningful claim is ``exp`` (the agent reads nothing else)."""

    def part(data: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none'})}.{part({'exp': exp, 'sub': 'user'})}.sig"


def free_port() -> int:
    """A loopback port nobody listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def binary_or_skip(name: str, component: str) -> str:
    """The path of ``name``, or a skip naming the absent component (CI turns it into a failure)."""
    found = shutil.which(name)
    if found is None:
        pytest.skip(f"{component} absent: apt-get install prometheus (scripts/provision.sh does)")
    return found


class _Daemon:
    process: subprocess.Popen[bytes]
    log: IO[bytes]

    def stop(self) -> None:
        """Terminate (kill after 15 s) the process this test started."""
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


class Prometheus(_Daemon):
    """Debian's ``prometheus`` on a loopback port, scraping every second.

    Args:
        targets: ``host:port`` endpoints of a static scrape job; or
        settings: a whole configuration (e.g. monitoring/prometheus.yml, templated by the test),
            whose intervals become 1 s.
    """

    def __init__(
        self, binary: str, directory: Path, targets: list[str] | None = None, *, settings: dict[str, Any] | None = None
    ) -> None:
        self.port = free_port()
        config = directory / "prometheus.yml"
        if settings is None:
            settings = {"scrape_configs": [{"job_name": "codex", "static_configs": [{"targets": targets or []}]}]}
        settings = {**settings, "global": {"scrape_interval": "1s", "evaluation_interval": "1s"}}
        config.write_text(json.dumps(settings))  # JSON is YAML
        self.log = (directory / "prometheus.log").open("wb")
        self.process = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={directory / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def query(self, expr: str) -> list[float] | None:
        """The values of an instant query; None while Prometheus does not answer yet."""
        url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        try:
            with urllib.request.urlopen(url, timeout=5) as answer:
                data = json.load(answer)
        except OSError:
            return None
        return [float(r["value"][1]) for r in data["data"]["result"]]

    def wait_for(self, expr: str, value: float, what: str) -> None:
        wait_until(
            lambda: self.query(expr) == [value], 30, interval=0.5, what=f"Prometheus: {what} ({expr} == {value})"
        )


class Flower(_Daemon):
    """Flower on a loopback port against the test's broker, its API open (FLOWER_UNAUTHENTICATED_API)."""

    def __init__(self, broker_url: str, directory: Path) -> None:
        self.port = free_port()
        self.log = (directory / "flower.log").open("wb")
        env = {**os.environ, "FLOWER_UNAUTHENTICATED_API": "true"}
        self.process = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "celery"),
                "--broker",
                broker_url,
                "flower",
                f"--port={self.port}",
                "--address=127.0.0.1",
                "--persistent=False",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=directory,
        )

    def get(self, path: str) -> Any:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=10) as answer:
                return json.load(answer)
        except OSError:
            return None
