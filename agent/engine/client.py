"""Run one container to completion and always remove it; Docker failures become CODEX-E040.

The one place that talks to the engine for short-lived containers (job containers, login-check
and volume-inspection containers). Every ``docker.errors.*``, ``requests`` and ``OSError``
failure is re-raised as :class:`~agent.errors.DockerUnavailableError` ``from e``, so an engine
problem is never mistaken for a login problem. A container that outlives its timeout is killed,
and removed like every other.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import docker
import docker.errors
import requests

from agent.errors import AgentError, DockerUnavailableError, GuardRefusedError, JobRejectedError

__all__ = [
    "EngineCreate",
    "ContainerRun",
    "ContainerTimeout",
    "DOCKER_FAILURES",
    "RECONNECT_FOR",
    "docker_failure",
    "guard_refusal",
    "translate_docker_errors",
    "run_container",
    "client_from_env",
]

DOCKER_FAILURES: tuple[type[BaseException], ...] = (
    docker.errors.DockerException,
    requests.exceptions.RequestException,
    OSError,
)
"""What the Docker SDK raises when the engine is absent, refuses, or fails."""


class ContainerTimeout(Exception):
    """The container did not exit in time; it was killed and removed."""

    def __init__(self, container_id: str, timeout: float) -> None:
        self.container_id = container_id
        self.timeout = timeout
        super().__init__(f"container {container_id[:12]} did not exit within {timeout}s")


@dataclass(frozen=True)
class EngineCreate:
    """A create already written as an Engine API body (what :mod:`agent.jobs.policy` approved)."""

    body: dict[str, Any]
    name: str | None = None


@dataclass(frozen=True)
class ContainerRun:
    """A finished container: its id, exit code, output and how long it ran."""

    container_id: str
    exit_code: int
    output: str
    """stdout and stderr interleaved, as ``docker logs`` shows them."""
    duration_s: float


def docker_failure(error: BaseException, operation: str, facts: dict[str, Any]) -> DockerUnavailableError:
    """The CODEX-E040 error for a Docker SDK failure during ``operation``."""
    if isinstance(error, docker.errors.ImageNotFound):
        cause = f"image not found: {getattr(error, 'explanation', None) or error}"
    else:
        cause = f"{type(error).__name__}: {getattr(error, 'explanation', None) or error}"
    return DockerUnavailableError(**{**facts, "operation": operation, "cause": cause[:300]})


_GUARD_CODES: dict[str, type[AgentError]] = {cls.code: cls for cls in (JobRejectedError, GuardRefusedError)}


def guard_refusal(error: BaseException, facts: dict[str, Any]) -> AgentError | None:
    """The Docker API guard's coded refusal (a 403 naming CODEX-E041 or E045) as our error, or None."""
    response = getattr(error, "response", None)
    if not isinstance(error, docker.errors.APIError) or error.status_code != 403 or response is None:
        return None
    try:
        body = response.json()
    except ValueError:
        return None
    cls = _GUARD_CODES.get(str(body.get("code"))) if isinstance(body, dict) else None
    if cls is None:
        return None
    rule = str(body.get("rule"))
    return cls(str(body.get("message", "")), **facts, rule=rule, offending=f"what the guard's rule {rule} refuses")


@contextmanager
def translate_docker_errors(operation: str, facts: dict[str, Any]) -> Iterator[None]:
    """Re-raise any Docker SDK failure inside the block as CODEX-E040 ``from`` it.

    A refusal of the Docker API guard keeps its own code (E041, E045): it is a policy, not an
    engine failure.
    """
    try:
        yield
    except DOCKER_FAILURES as e:
        raise (guard_refusal(e, facts) or docker_failure(e, operation, facts)) from e


def client_from_env(facts: dict[str, Any], timeout: float = 30.0) -> docker.DockerClient:
    """A client of the engine named by the environment, checked with a ping.

    Raises:
        DockerUnavailableError: no engine answers (socket absent, DOCKER_HOST wrong, refused).
    """
    with translate_docker_errors("connect", facts):
        client = docker.from_env(timeout=int(timeout))
        client.ping()
        return client


RECONNECT_FOR = 300.0
"""Seconds a started job survives losing the connection (the Docker API guard or the engine
restarting): the job runs on, so the launcher waits, reads and removes it again instead of
abandoning it (which would run the phase a second time)."""
_RECONNECT_PAUSE = 1.0
_LOST = (requests.exceptions.ConnectionError, requests.exceptions.ChunkedEncodingError)
"""How a lost connection to the engine (or the Docker API guard) shows in the SDK."""


def _reconnecting(call: Callable[[], Any], within: float) -> Any:
    """``call()``, made again while the connection is lost, for up to ``within`` seconds of outage:
    a job that already runs must not be abandoned because the guard restarted."""
    lost_since = time.monotonic()
    while True:
        try:
            return call()
        except _LOST:
            if time.monotonic() - lost_since > within:
                raise
            time.sleep(_RECONNECT_PAUSE)


def _remove(container: Any) -> None:
    try:
        _reconnecting(lambda: container.remove(force=True, v=False), within=30.0)
    except docker.errors.NotFound:
        pass


def _wait(container: Any, timeout: float | None) -> int:
    """Exit code, or raise ContainerTimeout after killing the container.

    A connection lost before the limit (a guard restart) is not the end of the job: the wait is
    made again for up to :data:`RECONNECT_FOR` seconds of outage.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    lost_since: float | None = None
    while True:
        asked = time.monotonic()
        remaining = None if deadline is None else max(deadline - asked, 0.01)
        try:
            status = container.wait(timeout=remaining)
            return int(status.get("StatusCode", -1))
        except (requests.exceptions.ReadTimeout, *_LOST) as e:
            now = time.monotonic()
            if deadline is not None and now >= deadline - 0.05:
                return _past_limit(container, timeout or 0.0, e)
            if lost_since is None or now - asked > 2 * _RECONNECT_PAUSE:
                lost_since = asked  # a fresh outage: the last wait had been connected
            if now - lost_since > RECONNECT_FOR:
                raise
            time.sleep(_RECONNECT_PAUSE)


def _past_limit(container: Any, timeout: float, cause: BaseException) -> int:
    """The wall-clock limit passed: kill a job still running (ContainerTimeout), else its exit code."""
    container.reload()
    if container.status in ("running", "created", "restarting"):
        try:
            container.kill()
        except docker.errors.APIError:
            pass
        raise ContainerTimeout(container.id or "?", timeout) from cause
    return int(container.wait(timeout=5).get("StatusCode", -1))


def _write_stdin(attached: Any, data: bytes) -> None:
    """Write ``data`` to an attach socket and close it: with ``StdinOnce`` the container's stdin ends."""
    raw = getattr(attached, "_sock", attached)
    try:
        raw.sendall(data)
        raw.shutdown(socket.SHUT_WR)
    finally:
        attached.close()


def run_container(
    client: docker.DockerClient,
    create_args: dict[str, Any] | EngineCreate,
    *,
    operation: str,
    facts: dict[str, Any],
    timeout: float | None = None,
    on_started: Callable[[str], None] | None = None,
    stdin: bytes | None = None,
) -> ContainerRun:
    """Create, start and wait for a container, collect its output, then remove it.

    Args:
        client: the Docker client.
        create_args: keyword arguments of ``client.containers.create``, or the Engine body itself.
        operation: what this run is for, named in errors (e.g. ``"job container"``).
        facts: shard, volume… for error messages.
        timeout: seconds before the container is killed; None waits forever.
        on_started: called with the container id once it started (for audit lines).
        stdin: bytes for a container created with ``OpenStdin``/``StdinOnce``: written through an
            attach made before the start, then the attach is closed (the container's stdin ends).

    Returns:
        The finished run; the container is already removed.

    Raises:
        ContainerTimeout: it did not exit in time (it was killed and removed).
        DockerUnavailableError: the engine failed at any step.
    """
    container = None
    started = time.monotonic()
    try:
        with translate_docker_errors(operation, facts):
            if isinstance(create_args, EngineCreate):
                created = client.api.create_container_from_config(create_args.body, create_args.name)
                container = client.containers.get(created["Id"])
            else:
                container = client.containers.create(**create_args)
            attached = (
                client.api.attach_socket(container.id, params={"stdin": 1, "stream": 1}) if stdin is not None else None
            )
            _reconnecting(container.start, RECONNECT_FOR)
            if attached is not None:
                _write_stdin(attached, stdin or b"")
            started = time.monotonic()
            if on_started is not None:
                on_started(container.id or "?")
            exit_code = _wait(container, timeout)
            duration = time.monotonic() - started
            # One logs call for both streams: every judge of the output reads them together.
            logs = _reconnecting(lambda: container.logs(stdout=True, stderr=True), RECONNECT_FOR)
            output = logs.decode("utf-8", "replace")
            return ContainerRun(container.id or "?", exit_code, output, duration)
    finally:
        if container is not None:
            try:
                _remove(container)
            except DOCKER_FAILURES:
                pass  # the engine went away mid-run; the original error says so
