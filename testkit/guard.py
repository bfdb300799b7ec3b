"""The Docker API guard as a real process (``python -m agent.guard``) for tests and benchmarks.

The guard holds the host's real socket and listens on ``<dir>/<volume>/docker.sock`` per shard; a
worker container mounts only ``<dir>/<volume>`` (at :data:`GUARD_MOUNT`) and reaches Docker through
it with ``DOCKER_HOST``. Its JSON log lines (``codex.guard.refused``, ``codex.guard.created``) are
the audit trail the tests read.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import docker

from .workers import JsonLog

__all__ = ["GUARD_MOUNT", "GUARD_DOCKER_HOST", "GuardProcess"]

GUARD_MOUNT = "/run/codex-guard"
"""Where a worker container gets its shard's endpoint directory."""
GUARD_DOCKER_HOST = f"unix://{GUARD_MOUNT}/docker.sock"


class GuardProcess(JsonLog):
    """A running guard serving ``shards`` (index -> login volume); stopped and cleaned by :meth:`close`.

    Args:
        shards: index -> the shard's login volume.
        env: extra environment (``CODEX_JOB_NETWORK``, sandbox variables…).
    """

    def __init__(self, shards: Mapping[int, str], **env: str) -> None:
        self.shards = dict(shards)
        self.env = env
        self.dir = Path(tempfile.mkdtemp(prefix="cwa-guard-", dir="/var/tmp"))
        os.chmod(self.dir, 0o755)
        self.log_path = self.dir / "guard.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> GuardProcess:
        """Start (or start again) and wait until every endpoint listens."""
        environ = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "CODEX_GUARD_SOCKET_DIR": str(self.dir),
            "CODEX_GUARD_SHARDS": ",".join(f"{i}={v}" for i, v in sorted(self.shards.items())),
            **self.env,
        }
        started_before = len(self.events("codex.guard.started"))
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "agent.guard"], env=environ, stdout=out, stderr=out)
        self.wait_for("codex.guard.started", timeout=30, count=started_before + 1)
        return self

    def stop(self) -> None:
        """SIGTERM, as ``docker stop`` would; the guard removes its sockets."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)

    def kill(self) -> None:
        """SIGKILL: the sockets stay behind, nobody answers on them."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=15)

    def close(self) -> None:
        """Stop and remove the socket directory."""
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def socket(self, index: int) -> Path:
        """Shard ``index``'s endpoint on the host."""
        return self.endpoint_dir(index) / "docker.sock"

    def endpoint_dir(self, index: int) -> Path:
        """What a shard's worker container mounts at :data:`GUARD_MOUNT`: named after its login volume."""
        return self.dir / self.shards[index]

    def client(self, index: int, timeout: int = 60) -> docker.DockerClient:
        """A plain docker SDK client on shard ``index``'s endpoint (what task code would make)."""
        return docker.DockerClient(base_url=f"unix://{self.socket(index)}", version="1.41", timeout=timeout)

    def worker_mount(self, index: int) -> dict[str, dict[str, Any]]:
        """The ``volumes=`` entry that gives a worker container its endpoint, and nothing else."""
        return {str(self.endpoint_dir(index)): {"bind": GUARD_MOUNT, "mode": "rw"}}

    # JsonLog
    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def exited(self) -> str | None:
        code = self.proc.poll() if self.proc is not None else None
        return None if code is None else f"exited {code}"
