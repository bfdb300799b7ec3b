"""A run's workspace volume is removed when the run completes, or once it has been idle past a retention.

Each run of a shard has a workspace volume (``codex_ws_<digest of the login volume>_<run_id>``,
:func:`agent.jobs.policy.workspace_name`). The phase that ends a run (``final=True``) removes it once
it has completed; and the sweep at startup and after each broker reconnect removes this shard's
workspaces whose run has been idle (no artifact written) for ``CODEX_WORKSPACE_RETENTION`` seconds,
when an operator sets one. A removal is never forced: the Engine refuses to remove a volume a
container still uses, and a later phase of a run whose workspace was removed gets a new, empty one
(its Codex session lives in the login volume, not the workspace). Through the Docker API guard a
shard may remove its own workspaces only, never its login or another shard's volume.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import docker.errors
import structlog

from agent.engine.client import DOCKER_FAILURES
from agent.jobs.container import docker_time
from agent.jobs.policy import workspace_name, workspace_prefix
from agent.settings.config import AgentConfig

__all__ = ["WORKSPACE_REMOVED", "remove_workspace", "remove_run_workspace", "sweep_workspaces", "last_activity"]

log = structlog.get_logger(__name__)

WORKSPACE_REMOVED = "codex.workspace.removed"
"""Audit event of a removed workspace volume (``reason``: ``run completed`` or ``retention``)."""


def remove_workspace(client: Any, name: str, reason: str, facts: dict[str, Any]) -> bool:
    """Remove one workspace volume; False when it is gone already or still in use. Never raises."""
    try:
        client.api.remove_volume(name)
    except docker.errors.NotFound:
        return False
    except docker.errors.APIError as e:
        log.warning(
            "codex.workspace.kept",
            workspace=name,
            reason=reason,
            status=e.status_code,
            cause=str(e.explanation or e)[:200],
            **facts,
        )
        return False
    except DOCKER_FAILURES as e:
        log.warning(
            "codex.workspace.kept", workspace=name, reason=reason, cause=f"{type(e).__name__}: {e}"[:200], **facts
        )
        return False
    log.info(WORKSPACE_REMOVED, workspace=name, reason=reason, **facts)
    return True


def remove_run_workspace(client: Any, config: AgentConfig, run_id: str) -> bool:
    """The run completed: remove its workspace on this shard."""
    if not config.volume_name:
        return False
    name = workspace_name(config.volume_name, run_id)
    return remove_workspace(client, name, "run completed", {"shard": config.shard_index, "run_id": run_id})


def last_activity(artifacts: Path) -> float | None:
    """The newest modification time of anything in a run's artifacts directory (None: none there)."""
    newest: float | None = None
    for directory, _dirs, files in os.walk(artifacts):
        for name in (*files, "."):
            try:
                mtime = os.stat(os.path.join(directory, name)).st_mtime
            except OSError:
                continue
            newest = mtime if newest is None else max(newest, mtime)
    return newest


def sweep_workspaces(client: Any, config: AgentConfig, now: float | None = None) -> list[str]:
    """Remove this shard's workspaces idle past ``CODEX_WORKSPACE_RETENTION``; returns their names.

    A run's idle time runs from its newest artifact, or the volume's creation when it has none.
    """
    if not config.workspace_retention or not config.volume_name:
        return []
    now = time.time() if now is None else now
    prefix = workspace_prefix(config.volume_name)
    removed = []
    for volume in client.volumes.list(filters={"name": prefix}):
        name = str(volume.name)
        run_id = name[len(prefix) :]
        if not name.startswith(prefix) or not run_id:
            continue
        last = last_activity(config.artifacts_root / run_id)
        if last is None:
            created = (volume.attrs or {}).get("CreatedAt")
            last = _created(created)
        if last is not None and now - last > config.workspace_retention:
            facts = {"shard": config.shard_index, "run_id": run_id, "idle_s": round(now - last)}
            if remove_workspace(client, name, "retention", facts):
                removed.append(name)
    return removed


def _created(text: Any) -> float | None:
    return docker_time(text) if isinstance(text, str) else None
