"""One guard per socket directory: an exclusive lock that a second guard reads its holder from.

A second guard on the same directory (the stack's ``docker-guard`` and one started by hand) would
take over the endpoint paths and, when it stopped, delete the first one's sockets. The lock is an
``flock`` on ``<dir>/guard.lock``, held for the guard's life and released by the kernel when the
process dies, so a crashed guard never blocks its successor. It works across containers that
bind-mount the same directory.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from pathlib import Path

from agent.errors import GuardBusyError

__all__ = ["LOCK_NAME", "GuardLock"]

LOCK_NAME = "guard.lock"


class GuardLock:
    """The socket directory's lock, held from :meth:`acquire` to :meth:`release`.

    Args:
        socket_dir: the directory of the endpoints.
    """

    def __init__(self, socket_dir: Path) -> None:
        self.path = socket_dir / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock and write this guard's identity into it.

        Raises:
            GuardBusyError: CODEX-E046, another live guard holds it (named in the error).
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = self._holder(fd)
            os.close(fd)
            raise GuardBusyError(socket_dir=str(self.path.parent), holder=holder) from None
        os.ftruncate(fd, 0)
        os.write(
            fd,
            json.dumps(
                {"pid": os.getpid(), "host": socket.gethostname(), "started_at": round(time.time(), 3)}
            ).encode(),
        )
        self._fd = fd

    @staticmethod
    def _holder(fd: int) -> str:
        try:
            record = json.loads(os.pread(fd, 4096, 0) or b"{}")
        except (OSError, ValueError):
            return "a guard whose identity is unreadable"
        if not isinstance(record, dict):
            return "a guard whose identity is unreadable"
        started = record.get("started_at")
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)) if isinstance(started, (int, float)) else "?"
        return f"pid {record.get('pid', '?')} on {record.get('host', '?')}, started {when}"

    def release(self) -> None:
        """Let the lock go (the file stays: another guard takes it over)."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._fd, fcntl.LOCK_UN)
                os.close(self._fd)
            self._fd = None
