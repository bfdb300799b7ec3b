"""Remember that a run found the volume's login dead, until the login in the volume changes.

``codex login status`` still says "Logged in" for a login whose refresh token was revoked (it
never asks the server), so the gate cannot trust the next check that passes. When a Codex run
fails with a revoked, reused or expired refresh token, the task writes a marker into the volume
(``.codex-agent-revoked.json``) with the one-way fingerprint of the dead credential. Every login
check then fails with CODEX-E034 while ``auth.json`` still holds that credential; a new login (a
new fingerprint, or an ``auth.json`` written after the marker) clears it. The marker lives in the
volume, so a worker restart does not forget, and ``codex-agent volumes`` can show it from the host.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import structlog

from agent.login.auth import AuthFacts
from agent.util.atomic import write_json_atomically

__all__ = ["REVOKED_FILE", "Revocation", "record", "read", "parse", "still_revoked", "clear"]

REVOKED_FILE = ".codex-agent-revoked.json"

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Revocation:
    """What a run saw: why the login is dead, which credential, when, and in which task."""

    reason: str
    fingerprint: str | None
    detected_at: float
    run_id: str | None = None
    task_id: str | None = None
    worker: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe view (a fingerprint is one-way, never the credential)."""
        return asdict(self)


def record(codex_home: Path, revocation: Revocation) -> None:
    """Write the marker atomically into the volume."""
    write_json_atomically(Path(codex_home) / REVOKED_FILE, revocation.to_dict())


def parse(raw: bytes, modified: float | None) -> Revocation:
    """A marker's content as a Revocation; an unreadable one still counts as a revocation."""
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):  # any bytes: a nesting bomb too
        data = None
    if not isinstance(data, dict):
        return Revocation("unreadable revocation marker", None, modified or 0.0)
    fingerprint = data.get("fingerprint")
    detected = data.get("detected_at")

    def text(key: str) -> str | None:
        value = data.get(key)
        return value if isinstance(value, str) else None

    return Revocation(
        reason=text("reason") or "unknown",
        fingerprint=fingerprint if isinstance(fingerprint, str) else None,
        detected_at=float(detected)
        if isinstance(detected, (int, float)) and not isinstance(detected, bool)
        else (modified or 0.0),
        run_id=text("run_id"),
        task_id=text("task_id"),
        worker=text("worker"),
    )


def read(codex_home: Path) -> Revocation | None:
    """The marker in ``codex_home``, or None when there is none."""
    path = Path(codex_home) / REVOKED_FILE
    try:
        raw = path.read_bytes()
        modified = path.stat().st_mtime
    except FileNotFoundError:
        return None
    except OSError:
        return Revocation("unreadable revocation marker", None, time.time())
    return parse(raw, modified)


def still_revoked(revocation: Revocation | None, auth: AuthFacts) -> bool:
    """Whether ``auth.json`` still holds the credential the marker declared dead.

    With a fingerprint on both sides the answer is exact; otherwise an ``auth.json`` written after
    the marker counts as a new login.
    """
    if revocation is None or not auth.present:
        return False
    if revocation.fingerprint is not None and auth.fingerprint is not None:
        return revocation.fingerprint == auth.fingerprint
    return auth.modified_at is None or auth.modified_at <= revocation.detected_at


def clear(codex_home: Path) -> None:
    """Remove the marker (the login changed); a marker already gone is fine."""
    try:
        (Path(codex_home) / REVOKED_FILE).unlink()
    except FileNotFoundError:
        return
    log.info("codex.login.renewed", codex_home=str(codex_home))
