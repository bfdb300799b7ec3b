"""Move a shard's login between volumes (and so between nodes) with never two live copies.

A copied login is two live copies until the first refresh kills both (the fleet lease refuses the
second one, ``CODEX-E013``, but the operator still has to clean up). A *move* is different. The
export takes the volume's claim, which proves no worker uses it, writes the login to a bundle
file (mode 0600), and then **removes it from the source volume**. It leaves a marker saying where
the login went. The import takes the target volume's claim, refuses a volume that already holds a
login, writes the login in place, and deletes the bundle. At every moment at most one volume
holds the login. The bundle in between is a secret at rest, not a running copy.

The bundle carries the volume's fleet-lease history (fingerprints only), so the moved login keeps
its identity: a stale copy made before the move is still refused by the fleet lease.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from agent.errors import LoginMoveError
from agent.fleet.lease import HISTORY_FILE
from agent.login.auth import AUTH_FILE, inspect_auth_file
from agent.settings.config import AgentConfig
from agent.util.atomic import write_json_atomically
from agent.volume.claim import VolumeClaim

__all__ = ["BUNDLE_FORMAT", "MOVED_FILE", "MoveReceipt", "export_login", "import_login"]

BUNDLE_FORMAT = "codex-agent.login-move/1"
MOVED_FILE = ".codex-agent-moved.json"
"""Left in a source volume after an export: the fingerprint that left and when (no secret)."""


@dataclass(frozen=True)
class MoveReceipt:
    """What moved (no secret): for the command's answer and the audit log."""

    action: str
    volume: str
    bundle: str
    fingerprint: str | None
    at: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe view."""
        return asdict(self)


def _claim(config: AgentConfig) -> VolumeClaim:
    return VolumeClaim(
        config.codex_home,
        worker=f"{config.worker_name}-login-move",
        shard=config.shard_index,
        volume=config.volume_name,
        stale_after=config.claim_stale_after,
    )


def _volume(config: AgentConfig) -> str:
    """The volume's name, or where it is mounted when ``CODEX_VOLUME_NAME`` is not set (a one-off container)."""
    return config.volume_name or str(config.codex_home)


def _refuse(config: AgentConfig, action: str, cause: str) -> LoginMoveError:
    return LoginMoveError(action=action, volume=_volume(config), cause=cause)


def export_login(config: AgentConfig, bundle: Path) -> MoveReceipt:
    """Move the login out of the volume at ``CODEX_HOME`` into ``bundle``.

    Raises:
        VolumeClaimedError: a worker holds the volume (stop it first; CODEX-E010).
        LoginMoveError: no readable login to export, or the bundle cannot be written (CODEX-E071).
    """
    home = config.codex_home
    with _claim(config):
        facts = inspect_auth_file(home)
        if not facts.present or facts.unreadable:
            raise _refuse(config, "export", facts.unreadable or "the volume holds no login")
        if bundle.exists():
            raise _refuse(config, "export", f"{bundle} exists already (an earlier export not imported yet?)")
        try:
            auth = json.loads((home / AUTH_FILE).read_text())
            history = json.loads((home / HISTORY_FILE).read_text()) if (home / HISTORY_FILE).exists() else None
        except (OSError, ValueError) as e:
            raise _refuse(config, "export", f"cannot read the login ({type(e).__name__})") from None
        receipt = MoveReceipt("export", _volume(config), str(bundle), facts.fingerprint, time.time())
        try:
            write_json_atomically(
                bundle,
                {"format": BUNDLE_FORMAT, "auth": auth, "lease_history": history, **receipt.to_dict()},
                mode=0o600,
            )
        except OSError as e:
            raise _refuse(config, "export", f"cannot write {bundle}: {e.strerror}") from None
        # From here the source is unusable: the only copy is the bundle.
        os.unlink(home / AUTH_FILE)
        write_json_atomically(home / MOVED_FILE, {"fingerprint": facts.fingerprint, "exported_at": receipt.at})
        return receipt


def import_login(config: AgentConfig, bundle: Path) -> MoveReceipt:
    """Move the login in ``bundle`` into the volume at ``CODEX_HOME``, then delete the bundle.

    Raises:
        VolumeClaimedError: a worker holds the volume (CODEX-E010).
        LoginMoveError: the bundle is unreadable or not ours, or the volume already holds a login.
    """
    home = config.codex_home
    with _claim(config):
        try:
            data = json.loads(bundle.read_text())
        except (OSError, ValueError) as e:
            raise _refuse(config, "import", f"cannot read the bundle {bundle} ({type(e).__name__})") from None
        if not isinstance(data, dict) or data.get("format") != BUNDLE_FORMAT or not isinstance(data.get("auth"), dict):
            raise _refuse(config, "import", f"{bundle} is not a login bundle ({BUNDLE_FORMAT})")
        if inspect_auth_file(home).present:
            raise _refuse(config, "import", "the volume already holds a login (one login per volume)")
        write_json_atomically(home / AUTH_FILE, data["auth"], mode=0o600)
        if isinstance(data.get("lease_history"), dict):
            write_json_atomically(home / HISTORY_FILE, data["lease_history"])
        (home / MOVED_FILE).unlink(missing_ok=True)
        bundle.unlink()  # the login lives in this volume only now
        return MoveReceipt("import", _volume(config), str(bundle), inspect_auth_file(home).fingerprint, time.time())
