"""Real `worker-entry` processes on real mounts, and the broker views the tests assert on.

A :class:`ShardHome` is a real Docker named volume bind-mounted at ``<home>/.codex`` on the host,
so the agent's mount check passes for real (``/proc/self/mountinfo`` shows the volume's
``_data`` directory) without a container. A :class:`WorkerProcess` runs ``worker-entry`` with a
given environment and reads its JSON log lines.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kombu import Connection, Queue

__all__ = [
    "JsonLog",
    "ShardHome",
    "WorkerProcess",
    "WorkerFactory",
    "BrokerView",
    "wait_until",
    "keys_for_shard",
    "agent_status",
    "copy_cli_wrapper",
]

VENV_BIN = Path(sys.executable).parent


def wait_until(predicate: Callable[[], Any], timeout: float, interval: float = 0.1, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def keys_for_shard(shard: int, count: int, shards: int = 3, prefix: str = "repo") -> list[str]:
    """``count`` affinity keys that route to ``shard``."""
    from agent.settings.topology import shard_for

    keys: list[str] = []
    i = 0
    while len(keys) < count:
        key = f"{prefix}-{i}"
        if shard_for(key, shards) == shard:
            keys.append(key)
        i += 1
    return keys


@dataclass
class ShardHome:
    """A Docker named volume bind-mounted at ``home/.codex`` (root only)."""

    home: Path
    volume: str
    source: Path

    @property
    def codex_home(self) -> Path:
        return self.home / ".codex"

    @classmethod
    def create(cls, docker_client: Any, base: Path, volume: str | None = None) -> ShardHome:
        name = volume or f"cwa_test_{uuid.uuid4().hex[:10]}"
        created = docker_client.volumes.create(name=name, labels={"cwa.test": "1"})
        source = Path(created.attrs["Mountpoint"])
        home = base / f"home-{name}"
        (home / ".codex").mkdir(parents=True)
        subprocess.run(["mount", "--bind", str(source), str(home / ".codex")], check=True)
        os.chmod(home / ".codex", 0o700)
        return cls(home=home, volume=name, source=source)

    def bind_again(self, base: Path) -> ShardHome:
        """The same volume mounted at a second home (a second worker sharing it)."""
        home = base / f"home2-{self.volume}"
        (home / ".codex").mkdir(parents=True)
        subprocess.run(["mount", "--bind", str(self.source), str(home / ".codex")], check=True)
        return ShardHome(home=home, volume=self.volume, source=self.source)

    def unmount(self) -> None:
        subprocess.run(["umount", "-l", str(self.codex_home)], check=False, capture_output=True)


class JsonLog:
    """Reading a worker's JSON log lines: what every kind of test worker shares."""

    def log_text(self) -> str:
        """Everything the worker logged so far."""
        raise NotImplementedError

    def exited(self) -> str | None:
        """Why the worker is gone (e.g. "exited 1"), or None while it runs."""
        raise NotImplementedError

    def lines(self) -> list[dict[str, Any]]:
        """Every JSON line logged so far (non-JSON lines are kept as {'raw': text})."""
        out: list[dict[str, Any]] = []
        for raw in self.log_text().splitlines():
            raw = raw.strip()
            if not raw:
                continue
            try:
                out.append(json.loads(raw))
            except ValueError:
                out.append({"raw": raw})
        return out

    def events(self, name: str, **fields: Any) -> list[dict[str, Any]]:
        """Lines whose event is ``name`` and whose fields match."""
        return [
            line
            for line in self.lines()
            if line.get("event") == name and all(line.get(k) == v for k, v in fields.items())
        ]

    def wait_for(self, name: str, timeout: float = 30, count: int = 1, **fields: Any) -> list[dict[str, Any]]:
        """Wait until ``count`` lines of event ``name`` (with ``fields``) are logged."""

        def found() -> list[dict[str, Any]] | None:
            gone = self.exited()
            if gone is not None:
                raise AssertionError(f"worker {gone} before {name}:\n{self.tail()}")
            hits = self.events(name, **fields)
            return hits if len(hits) >= count else None

        try:
            result: list[dict[str, Any]] = wait_until(found, timeout, what=f"{count}x {name} {fields}")
        except AssertionError as e:
            raise AssertionError(f"{e}\n--- worker log tail ---\n{self.tail()}") from None
        return result

    def tail(self, n: int = 30) -> str:
        return "\n".join(self.log_text().splitlines()[-n:])


@dataclass
class WorkerProcess(JsonLog):
    """A real ``worker-entry`` process whose stdout (JSON lines) goes to a file."""

    env: dict[str, str]
    log_path: Path
    extra_args: list[str] = field(default_factory=list)
    entry_args: list[str] = field(default_factory=list)
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        handle = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [str(VENV_BIN / "worker-entry"), *self.entry_args, *(["--", *self.extra_args] if self.extra_args else [])],
            env=self.env,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        handle.close()
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def exited(self) -> str | None:
        if self.process is not None and self.process.poll() is not None:
            return f"exited {self.process.returncode}"
        return None

    def stop(self, timeout: float = 20) -> int | None:
        """Warm shutdown (SIGTERM), then SIGKILL of the whole group if it lingers."""
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else None
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill_group()
            return self.process.wait(timeout=10)

    def kill9(self) -> None:
        """kill -9 of the worker's main process only (its pool child is left to notice)."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def kill_group(self) -> None:
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


WorkerFactory = Callable[..., WorkerProcess]
"""``workers(shard=None, home=None, extra=None, volume=None, app=None, **env)`` -> a started WorkerProcess."""


def agent_status(worker: WorkerProcess) -> dict[str, Any]:
    """``codex-agent status --json`` run with the worker's environment, plus its exit code."""
    done = subprocess.run(
        [str(VENV_BIN / "codex-agent"), "status", "--json"],
        env=worker.env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    data: dict[str, Any] = json.loads(done.stdout)
    data["exit_code"] = done.returncode
    return data


@dataclass
class BrokerView:
    """Purge and count the test's queues on a real broker (RabbitMQ or Redis)."""

    url: str
    queues: Iterable[str] = ("default", "codex-0", "codex-1", "codex-2", "codex")

    def _declared(self, connection: Connection, name: str) -> Any:
        queue = Queue(name, durable=True)(connection.default_channel)
        queue.declare()
        return queue

    def purge(self) -> None:
        with Connection(self.url, connect_timeout=5) as connection:
            for name in self.queues:
                self._declared(connection, name).purge()

    def count(self, name: str) -> int:
        """Messages ready in queue ``name`` (not the ones a consumer holds unacked)."""
        with Connection(self.url, connect_timeout=5) as connection:
            # Not passive: kombu's Redis transport says 404 for a queue whose list is empty.
            _, messages, _ = Queue(name, durable=True)(connection.default_channel).queue_declare()
            return int(messages)


def copy_cli_wrapper(codex_bin: str, directory: Path, flag: Path) -> str:
    """A ``codex`` wrapper that is the real CLI, except it says "Not logged in" while ``flag`` exists."""
    directory.mkdir(parents=True, exist_ok=True)
    wrapper = directory / "codex"
    wrapper.write_text(
        f'#!/bin/sh\nif [ -e "{flag}" ]; then echo "Not logged in" >&2; exit 1; fi\nexec "{codex_bin}" "$@"\n'
    )
    wrapper.chmod(0o755)
    return str(wrapper)
