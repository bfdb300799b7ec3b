"""The worker's live state, written for ``codex-agent status`` and posted for ``codex-agent fleet``.

As a service it is stopped last: its stop writes and posts ``stopped`` once the claim and the lease
are released, so the last state anyone reads is the true one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import structlog

from agent.fleet.state import AgentState, write_state
from agent.settings.config import AgentConfig

__all__ = ["StatePublisher"]

log = structlog.get_logger(__name__)


class Poster(Protocol):
    """Where the state goes beyond this host (:class:`agent.fleet.roster.FleetPublisher`)."""

    def start(self) -> None: ...
    def publish(self, state: AgentState) -> None: ...
    def stop(self) -> None: ...
    def close_inherited(self) -> None: ...


class StatePublisher:
    """Writes the state file and hands the state to the fleet poster.

    Args:
        config: the worker's configuration (``AGENT_STATE_DIR``).
        build: the state now; ``True`` asks for the final ``stopped`` one.
        poster: the fleet-board poster.
    """

    name = "codex-agent-state"

    def __init__(self, config: AgentConfig, build: Callable[[bool], AgentState], poster: Poster) -> None:
        self.config = config
        self.build = build
        self.poster = poster

    def publish(self, stopped: bool = False) -> None:
        """Write and post the state now; never raises for an unwritable state directory."""
        state = self.build(stopped)
        try:
            write_state(self.config.state_dir, state)
        except OSError as e:
            log.warning("codex.state.unwritable", state_dir=str(self.config.state_dir), error=str(e))
        self.poster.publish(state)

    def start(self) -> None:
        self.poster.start()

    def stop(self) -> None:
        self.publish(stopped=True)
        self.poster.stop()

    def close_inherited(self) -> None:
        self.poster.close_inherited()
