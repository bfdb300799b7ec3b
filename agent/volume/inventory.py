"""``codex-agent volumes``: every Codex login volume, its login, claim holder and credential age.

Operators see each shard's state without entering a container. Every volume found by
:func:`agent.volume.discovery.find_auth_volumes` is read in one throwaway container of the job image
(:mod:`agent.volume.inspection`: all volumes mounted read-only, ``codex login status`` per volume,
bounded copies of ``auth.json``, the claim, revocation and limit markers and the newest rollout's
tail); each file then goes through its typed parser here. Only non-secret facts leave this module:
auth mode, expiry, credential age, a one-way fingerprint, the holder and the usage headroom.

Forked-login detection: two volumes whose refresh tokens have the same fingerprint hold one
ChatGPT login copied; the first refresh kills the others (CODEX-W031). API-key logins are never
reported: a key is not rotated, so one key in several volumes keeps working in each (README and
runbook say the same).
"""

from __future__ import annotations

import re
import time
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import docker.errors

from agent.engine.client import DOCKER_FAILURES, ContainerTimeout, translate_docker_errors
from agent.errors import AgentError, LoginCheckError, LoginTimeoutError
from agent.login import usage
from agent.login.auth import AuthFacts, facts_from_text, judge_status_output, require_readable
from agent.login.revocation import parse as parse_revocation
from agent.login.revocation import still_revoked
from agent.problems import FORKED_LOGIN, Problem
from agent.settings.config import AgentConfig
from agent.volume.claim import Holder
from agent.volume.discovery import AuthVolume, find_auth_volumes
from agent.volume.inspection import (
    FILE_LIMITS,
    MAX_VOLUMES_PER_CONTAINER,
    FileRead,
    VolumeReading,
    inspect_batch,
    overall_timeout,
)

__all__ = [
    "VolumeStatus",
    "holder_view",
    "forked_logins",
    "list_volumes",
    "VolumesReport",
]

_PARALLEL = 2
"""Inspection containers at once (each reads up to 64 volumes)."""
_SHARD_SUFFIX = re.compile(r"_(\d+)$")


@dataclass(frozen=True)
class VolumeStatus:
    """What one login volume holds, without any secret."""

    name: str
    labels: dict[str, str]
    login: dict[str, Any]
    auth: AuthFacts
    holder: dict[str, Any] | None
    users: tuple[str, ...] = ()
    revoked: dict[str, Any] | None = None
    """The revocation a run recorded, while auth.json still holds that dead credential (CODEX-E034)."""
    limited: dict[str, Any] | None = None
    """The usage limit a run met, until its reset time (CODEX-E036): window, type, resets_at."""
    usage: dict[str, Any] | None = None
    """The headroom of the newest rollout and the standing limit, as :func:`agent.login.usage.view`
    gives them (``status --json`` shows the same): used percent and reset time per window."""

    @property
    def logged_in(self) -> bool:
        """Whether ``codex login status`` passed on this volume."""
        return bool(self.login.get("ok"))

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe view."""
        return {
            "name": self.name,
            "logged_in": self.logged_in,
            "login": self.login,
            "auth": self.auth.to_dict(),
            "holder": self.holder,
            "used_by": list(self.users),
            "labels": self.labels,
            "revoked": self.revoked,
            "limited": self.limited,
            "usage": self.usage,
        }


@dataclass(frozen=True)
class VolumesReport:
    """Every volume's status plus the warnings across volumes."""

    volumes: tuple[VolumeStatus, ...]
    warnings: tuple[Problem, ...] = field(default_factory=tuple)
    checked_at: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe view."""
        return {
            "checked_at": self.checked_at,
            "volumes": [v.to_dict() for v in self.volumes],
            "warnings": [w.to_dict() for w in self.warnings],
        }


def holder_view(marker: bytes | None, stale_after: float, now: float | None = None) -> dict[str, Any] | None:
    """The claim holder named in a marker's content, with heartbeat age and freshness."""
    if marker is None:
        return None
    try:
        holder = Holder.parse(marker)
    except ValueError:  # any bytes: not UTF-8, not JSON, a nesting bomb, fields of the wrong type
        return {"holder": "unreadable marker", "fresh": False}
    now = time.time() if now is None else now
    return {
        "holder": holder.describe(),
        "worker": holder.worker,
        "container_id": holder.container_id,
        "hostname": holder.hostname,
        "pid": holder.pid,
        "shard": holder.shard,
        "volume": holder.volume,
        "claimed_at": holder.claimed_at,
        "heartbeat_age_s": round(now - holder.heartbeat, 1),
        "fresh": holder.is_fresh(stale_after, now),
    }


def forked_logins(volumes: Sequence[VolumeStatus]) -> list[Problem]:
    """CODEX-W031 for each refresh-token fingerprint found in more than one volume.

    Only logins that refresh count (ChatGPT, or a mode the agent does not know); API-key copies
    and unreadable files are left out on purpose.
    """
    groups: dict[str, list[str]] = defaultdict(list)
    for volume in volumes:
        if volume.auth.fingerprint and volume.auth.auth_mode not in (None, "apikey", "unreadable"):
            groups[volume.auth.fingerprint].append(volume.name)
    return [
        FORKED_LOGIN.problem(volumes=", ".join(sorted(names)), fingerprint=fp)
        for fp, names in sorted(groups.items())
        if len(names) > 1
    ]


def _error_view(error: AgentError) -> dict[str, Any]:
    return {"ok": False, "method": None, **error.problem(check="login").to_dict()}


def _users_by_volume(client: Any) -> dict[str, tuple[str, ...]]:
    """Running containers by the named volumes they mount (one listing for every volume)."""
    try:
        running = client.containers.list(sparse=True)  # the listing's own fields: no inspect per container
    except DOCKER_FAILURES:
        return {}
    users: dict[str, list[str]] = defaultdict(list)
    for container in running:
        attrs = container.attrs or {}
        names = attrs.get("Names") or [container.id or "?"]
        for mount in attrs.get("Mounts") or ():
            if isinstance(mount, dict) and mount.get("Type") == "volume" and mount.get("Name"):
                users[str(mount["Name"])].append(str(names[0]).lstrip("/"))
    return {name: tuple(sorted(set(found))) for name, found in users.items()}


def _shard_of(volume: AuthVolume) -> str:
    """The shard a volume serves, from its ``codex.shard`` label or its ``_N`` name suffix."""
    match = _SHARD_SUFFIX.search(volume.name)
    return volume.labels.get("codex.shard") or (match.group(1) if match else "?")


_PROBLEMS = {
    "symlink": "a symbolic link (not followed)",
    "notfile": "not a regular file",
    "unreadable": "cannot be read",
}


def _problem_text(read: FileRead, limit: int) -> str:
    if read.problem == "toolarge":
        return f"larger than {limit} bytes"
    return _PROBLEMS.get(read.problem or "", "cannot be read")


def _auth_facts(read: FileRead | None) -> AuthFacts:
    if read is None:
        return AuthFacts(present=False)
    if read.content is None:
        return AuthFacts(present=True, auth_mode="unreadable", unreadable=_problem_text(read, FILE_LIMITS["auth"][1]))
    return facts_from_text(read.content, read.modified)


def _login_view(reading: VolumeReading, auth: AuthFacts, facts: dict[str, Any], timeout: float) -> dict[str, Any]:
    """One volume's verdict: ``codex login status`` judged, and an auth.json nobody can read refused.

    The CLI is not run on an auth.json that is a link, a FIFO or too large; its row then says why.
    """
    try:
        if reading.failure is not None:
            raise LoginCheckError(**facts, cause=f"the inspection image cannot run the listing ({reading.failure})")
        require_readable(auth, facts)
        if reading.login is None:
            if reading.timed_out or reading.step_exit is None:
                raise LoginTimeoutError(**facts, timeout=timeout)
            raise LoginCheckError(**facts, cause=f"the inspection step exited {reading.step_exit}")
        method = judge_status_output(reading.login[0], reading.login[1], "", facts=facts)
    except AgentError as e:
        return _error_view(e)
    return {"ok": True, "method": method, "code": None, "message": f"logged in ({method})"}


def _status(
    volume: AuthVolume, reading: VolumeReading, users: tuple[str, ...], config: AgentConfig, now: float
) -> VolumeStatus:
    """One volume's row from what the container read in it (every file through its typed parser)."""
    facts = {"shard": _shard_of(volume), "volume": volume.name}
    auth = _auth_facts(reading.files.get("auth"))
    claim = reading.files.get("claim")
    dead = reading.files.get("revoked")
    revocation = parse_revocation(dead.content or b"", dead.modified) if dead else None
    spent = reading.files.get("limited")
    limit = usage.parse_marker(spent.content or b"", spent.modified or now, now=now) if spent else None
    rollout = reading.files.get("rollout")
    headroom = None
    if rollout is not None and rollout.content is not None:
        cut = rollout.size is not None and rollout.size > usage.TAIL_BYTES
        headroom = usage.snapshot_in_tail(rollout.content, rollout.modified or now, cut=cut, now=now)
    return VolumeStatus(
        name=volume.name,
        labels=volume.labels,
        login=_login_view(reading, auth, facts, config.login_timeout),
        auth=auth,
        holder=holder_view(claim.content or b"" if claim else None, config.claim_stale_after, now),
        users=users,
        revoked=revocation.to_dict() if revocation and still_revoked(revocation, auth) else None,
        limited=usage.view(None, limit, now=now)["limit"],
        usage=usage.view(headroom, limit, now=now),
    )


def _failed(volume: AuthVolume, error: AgentError, users: tuple[str, ...]) -> VolumeStatus:
    return VolumeStatus(volume.name, volume.labels, _error_view(error), AuthFacts(present=False), None, users)


def _inspect(client: Any, batch: Sequence[AuthVolume], config: AgentConfig) -> list[VolumeReading | AgentError]:
    """One container's readings of ``batch``, or the error that took the whole container."""
    facts = {"shard": "-", "volume": ", ".join(v.name for v in batch)[:200]}
    try:
        return list(
            inspect_batch(
                client,
                image=config.login_check_image,
                volumes=[v.name for v in batch],
                job_home=config.job_home,
                user=config.job_user,
                timeout=config.login_timeout,
                facts=facts,
            )
        )
    except ContainerTimeout:
        limit = overall_timeout(config.login_timeout, len(batch))
        return [LoginTimeoutError(shard=_shard_of(v), volume=v.name, timeout=limit) for v in batch]
    except AgentError as e:  # the engine (E040) or the guard (E041) refused the container
        return [e] * len(batch)


def list_volumes(client: Any, config: AgentConfig, names: Sequence[str] = ()) -> VolumesReport:
    """Inspect every Codex login volume (or only ``names``): one read-only container per
    :data:`~agent.volume.inspection.MAX_VOLUMES_PER_CONTAINER` volumes.

    Raises:
        DockerUnavailableError: the engine cannot list volumes (CODEX-E040).
    """
    with translate_docker_errors("list volumes", {"shard": "-", "volume": "-"}):
        found = find_auth_volumes(client)
        for name in names:
            if name not in {v.name for v in found}:
                try:
                    attrs = client.volumes.get(name).attrs or {}
                except docker.errors.NotFound:
                    continue
                found.append(AuthVolume(name, dict(attrs.get("Labels") or {}), attrs.get("CreatedAt")))
    if names:
        found = [v for v in found if v.name in names]
    size = MAX_VOLUMES_PER_CONTAINER
    batches = [found[i : i + size] for i in range(0, len(found), size)]
    with ThreadPoolExecutor(max_workers=_PARALLEL) as pool:
        readings = [r for batch in pool.map(lambda b: _inspect(client, b, config), batches) for r in batch]
    users, now = _users_by_volume(client), time.time()
    statuses = tuple(
        _failed(v, r, users.get(v.name, ()))
        if isinstance(r, AgentError)
        else _status(v, r, users.get(v.name, ()), config, now)
        for v, r in zip(found, readings, strict=True)
    )
    return VolumesReport(volumes=statuses, warnings=tuple(forked_logins(statuses)))
