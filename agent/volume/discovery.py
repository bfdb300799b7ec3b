"""Which Docker volumes hold a Codex login: by label ``codex.auth=1`` or by name ``codex_auth_*``.

Both the job launcher (to refuse a foreign login) and ``codex-agent volumes`` (to list
them all) need the same answer, so it is decided here once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "AUTH_LABEL",
    "AUTH_LABEL_VALUE",
    "AUTH_NAME_PATTERN",
    "AuthVolume",
    "is_auth_volume",
    "find_auth_volumes",
]

AUTH_LABEL = "codex.auth"
"""Label that marks a volume as a Codex login volume (value :data:`AUTH_LABEL_VALUE`)."""

AUTH_LABEL_VALUE = "1"

AUTH_NAME_PATTERN = re.compile(r"^codex_auth_[A-Za-z0-9_.-]+$")
"""Names of Codex login volumes when they carry no label (``codex_auth_0``, ``codex_auth_1``…)."""


@dataclass(frozen=True)
class AuthVolume:
    """A Codex login volume as the engine lists it."""

    name: str
    labels: dict[str, str] = field(default_factory=dict)
    created_at: str | None = None


def is_auth_volume(name: str, labels: dict[str, str] | None = None) -> bool:
    """Whether a volume with this name and labels holds a Codex login."""
    return bool(AUTH_NAME_PATTERN.match(name)) or (labels or {}).get(AUTH_LABEL) == AUTH_LABEL_VALUE


def find_auth_volumes(client: Any) -> list[AuthVolume]:
    """Every Codex login volume on the engine, sorted by name.

    Raises:
        docker.errors.DockerException, requests.exceptions.RequestException: the engine failed
        (callers translate these at their boundary).
    """
    found: dict[str, AuthVolume] = {}
    for volume in client.volumes.list():
        attrs = volume.attrs or {}
        labels = attrs.get("Labels") or {}
        if is_auth_volume(volume.name, labels):
            found[volume.name] = AuthVolume(volume.name, dict(labels), attrs.get("CreatedAt"))
    return [found[name] for name in sorted(found)]
