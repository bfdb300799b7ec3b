"""``codex-agent volumes``: every Codex login volume, its login, claim holder and credential age.

Operators see each shard's state without entering a container. For every volume found by
:func:`agent.volume.discovery.find_auth_volumes`, one throwaway container of the job image runs
``codex login status`` with the volume at ``CODEX_JOB_HOME``; once it exited, ``auth.json`` and the
claim marker are read from it through the engine's archive API. Only non-secret facts leave
this module: auth mode, expiry, credential age and a one-way fingerprint.

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

from agent.engine.client import DOCKER_FAILURES, translate_docker_errors
from agent.errors import AgentError
from agent.login import usage
from agent.login.auth import AUTH_FILE, AuthFacts, facts_from_text, judge_status_output
from agent.login.container import status_in_container
from agent.login.revocation import REVOKED_FILE, still_revoked
from agent.login.revocation import parse as parse_revocation
from agent.problems import FORKED_LOGIN, Problem
from agent.settings.config import AgentConfig
from agent.volume.claim import MARKER_FILE, Holder
from agent.volume.discovery import AuthVolume, find_auth_volumes

__all__ = [
    "VolumeStatus",
    "inspect_volume",
    "holder_view",
    "forked_logins",
    "list_volumes",
    "VolumesReport",
]

_PARALLEL = 4
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


def _login_verdict(run: Any, facts: dict[str, Any]) -> dict[str, Any]:
    try:
        method = judge_status_output(run.exit_code, run.output, "", facts=facts)
    except AgentError as e:
        return {"ok": False, "method": None, **e.problem(check="login").to_dict()}
    return {"ok": True, "method": method, "code": None, "message": f"logged in ({method})"}


def _users(client: Any, name: str) -> tuple[str, ...]:
    try:
        found = client.containers.list(filters={"volume": name})
    except DOCKER_FAILURES:
        return ()
    return tuple(sorted(c.name for c in found))


def _shard_of(volume: AuthVolume) -> str:
    """The shard a volume serves, from its ``codex.shard`` label or its ``_N`` name suffix."""
    match = _SHARD_SUFFIX.search(volume.name)
    return volume.labels.get("codex.shard") or (match.group(1) if match else "?")


def inspect_volume(client: Any, volume: AuthVolume, config: AgentConfig) -> VolumeStatus:
    """Login status, auth facts and claim holder of one volume, through a throwaway container.

    A failure on this one volume (timeout, engine error) is reported in its ``login`` entry.
    """
    facts = {"shard": _shard_of(volume), "volume": volume.name}
    auth_path, marker_path = f"{config.job_home}/{AUTH_FILE}", f"{config.job_home}/{MARKER_FILE}"
    revoked_path = f"{config.job_home}/{REVOKED_FILE}"
    limited_path = f"{config.job_home}/{usage.LIMIT_FILE}"
    try:
        run = status_in_container(
            client,
            image=config.login_check_image,
            volume=volume.name,
            job_home=config.job_home,
            user=config.job_user,
            timeout=config.login_timeout,
            facts=facts,
            read_files=(auth_path, marker_path, revoked_path, limited_path),
            purpose="inspect",
        )
    except AgentError as e:
        login = {"ok": False, "method": None, **e.problem(check="login").to_dict()}
        return VolumeStatus(
            volume.name, volume.labels, login, AuthFacts(present=False), None, _users(client, volume.name)
        )
    auth = run.files.get(auth_path)
    marker = run.files.get(marker_path)
    dead = run.files.get(revoked_path)
    auth_facts = facts_from_text(auth[0], auth[1]) if auth else AuthFacts(present=False)
    revocation = parse_revocation(*dead) if dead else None
    spent = run.files.get(limited_path)
    limit = usage.parse_marker(spent[0], spent[1] or time.time()) if spent else None
    return VolumeStatus(
        name=volume.name,
        labels=volume.labels,
        login=_login_verdict(run, facts),
        auth=auth_facts,
        holder=holder_view(marker[0] if marker else None, config.claim_stale_after),
        users=_users(client, volume.name),
        revoked=revocation.to_dict() if revocation and still_revoked(revocation, auth_facts) else None,
        limited=usage.view(None, limit)["limit"],
    )


def list_volumes(client: Any, config: AgentConfig, names: Sequence[str] = ()) -> VolumesReport:
    """Inspect every Codex login volume (or only ``names``), in parallel.

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
    with ThreadPoolExecutor(max_workers=_PARALLEL) as pool:
        statuses = tuple(pool.map(lambda v: inspect_volume(client, v, config), found))
    return VolumesReport(volumes=statuses, warnings=tuple(forked_logins(statuses)))
