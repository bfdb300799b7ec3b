"""Docker helpers for tests: build the images once, make throwaway volumes, clean up after.

Cleanup follows docker-py's ``tests/integration/base.py``: every container and volume a test makes
is recorded and removed at teardown, containers first (a volume in use cannot be removed),
including any container still mounting a recorded volume (e.g. a job the agent started).
"""

from __future__ import annotations

import secrets
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import docker
import docker.errors
from docker.models.containers import Container
from docker.models.volumes import Volume

from .components import REPO_ROOT

__all__ = [
    "TEST_LABEL",
    "TEST_PREFIX",
    "Images",
    "build_images",
    "unique_name",
    "DockerCleanup",
    "VolumeFactory",
    "run_once",
]

#: Every volume and container the tests create carries this label.
TEST_LABEL = {"cwa.test": "1"}
TEST_PREFIX = "cwa_test_"
BUILD_TIMEOUT_S = 1800


@dataclass(frozen=True)
class Images:
    """Tags of the images built by images/build.sh."""

    worker: str
    job: str
    busybox: str
    base: str


def build_images() -> Images:
    """Run images/build.sh (cached layers make a re-run take seconds) and return its tags.

    Raises:
        RuntimeError: the build failed; the message carries the tail of its output.
    """
    proc = subprocess.run(
        ["bash", str(REPO_ROOT / "images/build.sh")],
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_S,
        check=False,
    )
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-40:])
        raise RuntimeError(f"images/build.sh exited {proc.returncode}:\n{tail}")
    tags = dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)
    return Images(
        worker=tags["WORKER_IMAGE"],
        job=tags["JOB_IMAGE"],
        busybox=tags["BUSYBOX_IMAGE"],
        base=tags["BASE_IMAGE"],
    )


def unique_name(middle: str | None = None) -> str:
    """Return ``cwa_test_[middle_]<random>``: unique across tests and parallel sessions."""
    return f"{TEST_PREFIX}{middle + '_' if middle else ''}{secrets.token_hex(4)}"


@dataclass
class DockerCleanup:
    """Records what a test creates and removes all of it at teardown."""

    client: docker.DockerClient
    containers: list[str] = field(default_factory=list)
    volumes: list[str] = field(default_factory=list)

    def container(self, container: Container | str) -> None:
        """Remove this container (object or id) at teardown."""
        self.containers.append(container if isinstance(container, str) else container.id or "")

    def volume(self, volume: Volume | str) -> None:
        """Remove this volume (object or name) at teardown, and every container using it."""
        self.volumes.append(volume if isinstance(volume, str) else volume.name)

    def _users_of_volumes(self) -> list[str]:
        """Return the ids of containers that mount a recorded volume."""
        ids: list[str] = []
        for name in self.volumes:
            found = self.client.containers.list(all=True, filters={"volume": name})
            ids.extend(c.id for c in found if c.id)
        return ids

    def close(self) -> None:
        """Remove recorded containers, then recorded volumes; ignore what is already gone."""
        for cid in dict.fromkeys(self.containers + self._users_of_volumes()):
            try:
                self.client.api.remove_container(cid, force=True, v=False)
            except docker.errors.NotFound:
                pass
        for name in self.volumes:
            try:
                self.client.api.remove_volume(name, force=True)
            except docker.errors.NotFound:
                pass
        self.containers.clear()
        self.volumes.clear()


def run_once(
    client: docker.DockerClient,
    cleanup: DockerCleanup,
    image: str,
    command: Sequence[str],
    *,
    entrypoint: Sequence[str] | None = None,
    volumes: Mapping[str, str] | None = None,
    user: str | None = None,
    timeout: float = 60,
) -> tuple[int, str]:
    """Run a container to completion and return its exit code and combined output.

    Args:
        client: the Docker client.
        cleanup: records the container so that it is removed even if this call fails.
        image: image tag.
        command: argv after the entrypoint.
        entrypoint: replaces the image's entrypoint when given.
        volumes: volume name -> mount path in the container (read-write).
        user: ``uid[:gid]`` or name; the image's user when None.
        timeout: seconds to wait for the container to exit.
    """
    container = client.containers.create(
        image,
        list(command),
        entrypoint=list(entrypoint) if entrypoint is not None else None,
        volumes={name: {"bind": path, "mode": "rw"} for name, path in (volumes or {}).items()},
        user=user,
        labels=TEST_LABEL,
    )
    cleanup.container(container)
    container.start()
    status = container.wait(timeout=timeout)
    output = container.logs(stdout=True, stderr=True).decode("utf-8", "replace")
    container.remove(force=True)
    return int(status["StatusCode"]), output


@dataclass
class VolumeFactory:
    """Creates labelled, uniquely named Docker volumes; see ``__call__``."""

    client: docker.DockerClient
    cleanup: DockerCleanup
    busybox_image: str

    def __call__(
        self,
        name: str | None = None,
        *,
        uid: int | None = 1000,
        gid: int | None = 1000,
        mode: int | None = 0o700,
        labels: Mapping[str, str] | None = None,
    ) -> Volume:
        """Create a volume and optionally set its root's owner and mode.

        Args:
            name: a readable middle part of the name, which is always ``cwa_test_...`` + random.
            uid: owner of the volume root; None leaves Docker's default (root).
            gid: group of the volume root; None leaves Docker's default (root).
            mode: mode of the volume root, e.g. ``0o700``; None leaves Docker's default.
            labels: extra labels besides ``cwa.test=1``.

        Returns:
            The volume; it and every container using it are removed at teardown.
        """
        volume = self.client.volumes.create(name=unique_name(name), labels={**TEST_LABEL, **(labels or {})})
        self.cleanup.volume(volume)
        steps = []
        if uid is not None or gid is not None:
            owner = "" if uid is None else str(uid)
            steps.append(f"chown {owner}{'' if gid is None else f':{gid}'} /v")
        if mode is not None:
            steps.append(f"chmod {mode:o} /v")
        if steps:
            code, output = run_once(
                self.client,
                self.cleanup,
                self.busybox_image,
                ["sh", "-c", " && ".join(steps)],
                volumes={volume.name: "/v"},
                user="0:0",
            )
            if code != 0:
                raise RuntimeError(f"setting up volume {volume.name} failed ({code}): {output}")
        return volume
