"""The running agent's live state, published as one JSON file for ``codex-agent status``.

The worker writes ``AGENT_STATE_DIR/state.json`` atomically on every check and gate change; the
``status`` command and the container HEALTHCHECK read it from another process. A state whose
writer process is gone is reported as such, so a crashed worker never looks healthy.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from agent.util.atomic import write_json_atomically
from agent.util.host import start_ticks
from agent.util.records import FieldTypes, field_types, read_record

__all__ = ["STATE_FILE", "AgentState", "write_state", "read_state", "Health", "judge_health"]

STATE_FILE = "state.json"


@dataclass(frozen=True)
class AgentState:
    """What the agent in a worker is doing, and why."""

    worker: str
    pid: int
    process_start: float
    codex_worker: bool
    gate: str  # "open", "closed" or "stopped"
    gate_since: float
    shard: int | None
    queue: str | None
    volume: str | None
    codex_home: str | None
    reason: list[dict[str, Any]] = field(default_factory=list)
    checks: dict[str, Any] | None = None
    claim: dict[str, Any] | None = None
    updated_at: float = field(default_factory=time.time)
    usage: dict[str, Any] | None = None
    """The login's headroom and usage limit (:func:`agent.login.usage.view`); None off a Codex worker."""
    process_ticks: int | None = None
    """The writer's start in clock ticks since boot (:func:`agent.util.host.start_ticks`): how a
    reader knows the writer still runs. ``process_start`` is the same moment by the wall clock, for people."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe view."""
        return asdict(self)


def write_state(state_dir: Path, state: AgentState) -> None:
    """Publish ``state`` atomically (readers never see half a file)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomically(state_dir / STATE_FILE, state.to_dict())


STATE_FIELDS: FieldTypes = field_types(AgentState)
"""What each field of a published state may hold; anything else makes the file unreadable."""


def read_state(state_dir: Path) -> AgentState | None:
    """The published state, or None when there is none or it is unreadable (any bytes, any shape)."""
    record = read_record(state_dir / STATE_FILE, STATE_FIELDS, defaults={"usage": None, "process_ticks": None})
    if record is None or record["pid"] <= 0 or not all(isinstance(r, dict) for r in record["reason"]):
        return None
    return AgentState(**record)


@dataclass(frozen=True)
class Health:
    """The verdict of ``codex-agent status --probe``."""

    healthy: bool
    summary: str


def _writer_alive(state: AgentState) -> bool:
    """Whether the writer still runs: its pid, started at the same tick (a reused pid starts later)."""
    return state.process_ticks is not None and start_ticks(state.pid) == state.process_ticks


def judge_health(state: AgentState | None) -> Health:
    """Healthy means: a live agent, and for a Codex worker an open gate."""
    if state is None:
        return Health(False, "no agent state published yet (worker starting or not running)")
    if state.gate == "stopped" or not _writer_alive(state):
        return Health(False, f"worker {state.worker} (pid {state.pid}) is not running")
    if not state.codex_worker:
        return Health(True, f"worker {state.worker}: not a Codex worker, consuming its queues")
    if state.gate == "open":
        return Health(True, f"worker {state.worker}: gate open, consuming {state.queue} (volume {state.volume})")
    codes = ", ".join(r.get("code") or "?" for r in state.reason) or "unknown"
    return Health(False, f"worker {state.worker}: gate closed on {state.queue} ({codes})")
