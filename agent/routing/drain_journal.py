"""The drain's journal: which tasks already have a confirmed copy in their new queue.

A drain republishes a task, waits for the broker's confirm, then acknowledges the original. If the
connection dies (or the operator presses Ctrl-C) between the confirm and the acknowledgement, the
broker hands the original back to the drained queue, and the next drain would copy it a second time.
The journal closes that window: each copy is recorded (and fsynced) as soon as it is confirmed, and a
later drain that meets a recorded task acknowledges it without copying it again.

One journal per broker and queue, under ``AGENT_STATE_DIR``; a lock beside it lets one drain of a
queue run at a time. The journal is deleted when a drain leaves its queue empty: from then on no
original can come back.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

from filelock import FileLock, Timeout

from agent.errors import DrainError

__all__ = ["MoveJournal", "journal_path", "message_key"]


def _encoded(text: str) -> bytes:
    """UTF-8, keeping lone surrogates (undecodable bytes from a URL or an argv) instead of raising."""
    return text.encode("utf-8", "surrogatepass")


def journal_path(state_dir: Path, broker_url: str, queue: str) -> Path:
    """The journal of ``queue`` on this broker (the URL's password takes no part in the name).

    Any URL and queue name give one file directly under ``state_dir/drain``: a queue name with
    ``/``, ``..`` or NUL in it never reaches outside that directory.
    """
    try:
        parts = urlsplit(broker_url)
        where = f"{parts.scheme}://{parts.hostname or ''}:{parts.port or ''}{parts.path}"
    except ValueError:  # a bad port or IPv6 host: the URL still names one place, credentials aside
        where = broker_url.rpartition("@")[2]
    name = _UNSAFE_IN_NAME.sub("_", queue).lstrip(".") or "_"
    if name != queue:  # two odd names that clean up alike still get journals of their own
        where += "\0" + queue
    digest = hashlib.blake2b(_encoded(where), digest_size=4).hexdigest()
    return state_dir / "drain" / f"{name}.{digest}.jsonl"


_UNSAFE_IN_NAME = re.compile(r"[^A-Za-z0-9_.:-]")
"""Characters a queue name may not bring into the journal's file name."""

_TRANSPORT_HEADERS = frozenset({"redelivered"})
"""Headers a transport adds when it hands a message back (kombu's Redis restore): not the task's own."""


def message_key(task_id: str | None, body: bytes | str, headers: dict[str, Any]) -> str:
    """What makes a message this exact task message: its task id, body and headers.

    A Celery retry keeps the task id but changes its headers, so it is never mistaken for a copy.
    """
    own_headers = {k: v for k, v in headers.items() if k not in _TRANSPORT_HEADERS}
    digest = hashlib.sha256()
    digest.update(_encoded(task_id or ""))
    digest.update(body if isinstance(body, bytes) else _encoded(body))
    digest.update(json.dumps(own_headers, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:32]


class MoveJournal:
    """Append-only record of confirmed copies; use as a context manager (it holds the queue's lock)."""

    def __init__(self, path: Path, queue: str) -> None:
        self.path = path
        self.queue = queue
        self._lock = FileLock(str(path) + ".lock", timeout=0)
        self._keys: set[str] = set()

    def __enter__(self) -> MoveJournal:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._lock.acquire()
            self._keys = self._read()
        except Timeout:
            raise DrainError(
                queue=self.queue, cause=f"another drain of {self.queue} holds {self._lock.lock_file}; let it finish"
            ) from None
        except OSError as e:
            self._lock.release()
            raise DrainError(
                queue=self.queue,
                cause=f"cannot use the drain journal {self.path} ({e}); set AGENT_STATE_DIR to a writable directory",
            ) from None
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self._lock.release()

    def __contains__(self, key: str) -> bool:
        return key in self._keys

    def __len__(self) -> int:
        return len(self._keys)

    def record(self, key: str, task_id: str | None, to: str) -> None:
        """Durably note that ``key`` has a confirmed copy in ``to`` (before the original is acked)."""
        line = json.dumps({"key": key, "task_id": task_id, "to": to, "at": round(time.time(), 3)}) + "\n"
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        self._keys.add(key)

    def clear(self) -> None:
        """Forget everything: the drained queue is empty, so no original can come back."""
        self.path.unlink(missing_ok=True)
        self._keys.clear()

    def _read(self) -> set[str]:
        """Every readable key; any other line (torn by a crash, binary, foreign) is skipped."""
        try:
            lines = self.path.read_bytes().splitlines()
        except FileNotFoundError:
            return set()
        keys = set()
        for line in lines:
            try:
                key = json.loads(line)["key"]
            except (ValueError, KeyError, TypeError, RecursionError):
                continue  # a line torn by a crash mid-write: its ack never happened either
            if isinstance(key, str):
                keys.add(key)
        return keys
