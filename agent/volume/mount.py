"""Prove that CODEX_HOME is the shard's own volume: mounted, the right one, read-write, private.

The shell (:func:`observe`) gathers facts from the Docker engine when its socket answers (the
container's own ``Mounts`` entry) and otherwise from ``/proc/self/mountinfo``; the core
(:func:`judge`) is a pure function from those facts to a verdict. The volume name found here is
the one job containers get later.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from agent.errors import (
    MountError,
    NotMountedError,
    PermissionsError,
    ReadOnlyMountError,
    WrongVolumeError,
)
from agent.util.host import own_container_id

__all__ = ["MountObservation", "observe", "judge", "parse_mountinfo", "volume_from_root"]

_VOLUME_ROOT = re.compile(r"(?:^|/)volumes/([^/]+)/_data$")
_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")


@dataclass(frozen=True)
class MountObservation:
    """What is mounted at a path, as seen from inside this process."""

    path: str
    source: Literal["docker", "mountinfo"]
    is_mount: bool
    mount_type: str | None
    volume: str | None
    origin: str | None
    read_write: bool
    mode: int | None
    owner_uid: int | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe view, mode as an octal string."""
        return {**asdict(self), "mode": None if self.mode is None else f"{self.mode:04o}"}


@dataclass(frozen=True)
class _MountinfoEntry:
    root: str
    mount_point: str
    options: tuple[str, ...]
    fstype: str
    super_options: tuple[str, ...]


def _unescape(field: str) -> str:
    return _OCTAL_ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), field)


def parse_mountinfo(text: str) -> list[_MountinfoEntry]:
    """Parse ``/proc/<pid>/mountinfo`` (proc(5)) into entries, octal escapes decoded."""
    entries = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if not sep or len(fields) < 6 or len(tail) < 3:
            continue
        entries.append(
            _MountinfoEntry(
                root=_unescape(fields[3]),
                mount_point=_unescape(fields[4]),
                options=tuple(fields[5].split(",")),
                fstype=tail[0],
                super_options=tuple(tail[2].split(",")),
            )
        )
    return entries


def volume_from_root(root: str) -> str | None:
    """The Docker volume name behind a mount root like ``/var/lib/docker/volumes/NAME/_data``."""
    match = _VOLUME_ROOT.search(root)
    return match.group(1) if match else None


def _stat(path: str) -> tuple[int | None, int | None]:
    try:
        st = os.stat(path)
    except OSError:
        return None, None
    return stat.S_IMODE(st.st_mode), st.st_uid


def _from_mountinfo(path: str, mountinfo: str) -> MountObservation:
    mode, owner = _stat(path)
    # The last entry for a mount point is the one on top (mounts stack).
    entry = next((e for e in reversed(parse_mountinfo(mountinfo)) if e.mount_point == path), None)
    if entry is None:
        return MountObservation(path, "mountinfo", False, None, None, None, False, mode, owner)
    volume = volume_from_root(entry.root)
    return MountObservation(
        path=path,
        source="mountinfo",
        is_mount=True,
        mount_type="volume" if volume else entry.fstype,
        volume=volume,
        origin=entry.root,
        read_write="rw" in entry.options and "ro" not in entry.super_options,
        mode=mode,
        owner_uid=owner,
    )


def _from_docker(path: str, container: dict[str, Any]) -> MountObservation:
    mode, owner = _stat(path)
    mount = next((m for m in container.get("Mounts", []) if m.get("Destination") == path), None)
    if mount is None:
        return MountObservation(path, "docker", False, None, None, None, False, mode, owner)
    is_volume = mount.get("Type") == "volume"
    return MountObservation(
        path=path,
        source="docker",
        is_mount=True,
        mount_type=mount.get("Type"),
        volume=mount.get("Name") if is_volume else None,
        origin=mount.get("Source"),
        read_write=bool(mount.get("RW")),
        mode=mode,
        owner_uid=owner,
    )


def _inspect_self(docker_client: Any) -> dict[str, Any] | None:
    """This container's inspect data, or None when not in a container or the engine is away."""
    container_id = own_container_id()
    if docker_client is None or container_id is None:
        return None
    try:
        data: dict[str, Any] = docker_client.api.inspect_container(container_id)
    except Exception:  # any engine failure: fall back to mountinfo, which needs no socket
        return None
    return data


def observe(codex_home: Path, *, docker_client: Any = None) -> MountObservation:
    """Gather the facts about what backs ``codex_home``.

    Args:
        codex_home: the directory that must be the volume's mount point.
        docker_client: a ``docker.DockerClient``; when given and this runs in a container, the
            container's own ``Mounts`` entry is used, else ``/proc/self/mountinfo``.
    """
    path = os.path.realpath(codex_home)
    container = _inspect_self(docker_client)
    if container is not None:
        return _from_docker(path, container)
    try:
        mountinfo = Path("/proc/self/mountinfo").read_text()
    except OSError:
        mountinfo = ""
    return _from_mountinfo(path, mountinfo)


def judge(
    observation: MountObservation,
    *,
    expected_volume: str | None,
    uid: int,
    facts: dict[str, Any],
) -> MountError | None:
    """The first thing wrong with the mount, or None when it is fit to hold the login.

    Args:
        observation: what :func:`observe` found.
        expected_volume: ``CODEX_VOLUME_NAME``; None accepts any named volume.
        uid: the uid the worker runs as, who must own the volume.
        facts: shard, volume and paths for the error message.
    """
    if not observation.is_mount:
        cause = "no mount at that path" if observation.mode is not None else "the directory does not exist"
        return NotMountedError(**facts, cause=cause)
    if expected_volume is not None and observation.volume != expected_volume:
        found = observation.volume or f"{observation.mount_type} mount of {observation.origin}"
        return WrongVolumeError(**facts, found=found)
    if observation.volume is None:
        found = f"{observation.mount_type} mount of {observation.origin}"
        return WrongVolumeError(**facts, found=found)
    if not observation.read_write:
        return ReadOnlyMountError(**facts)
    if observation.mode != 0o700 or observation.owner_uid != uid:
        mode = "?" if observation.mode is None else f"{observation.mode:04o}"
        return PermissionsError(**facts, mode=mode, owner=observation.owner_uid)
    return None
