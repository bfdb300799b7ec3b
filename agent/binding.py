"""The one link from a Celery app to the agent installed in it.

Celery hands task requests and bootsteps the app, not the agent; this module is the single place
that stores and reads the agent on the app, typed, so nothing else reaches for an attribute.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agent.runtime import Agent

__all__ = ["bind", "agent_for"]

_ATTRIBUTE = "codex_agent"


def bind(app: Any, agent: Agent) -> None:
    """Remember ``agent`` as the one installed in ``app``."""
    setattr(app, _ATTRIBUTE, agent)


def agent_for(app: Any) -> Agent | None:
    """The agent installed in ``app``, or None (a publisher, or a worker without the agent)."""
    agent: Agent | None = getattr(app, _ATTRIBUTE, None)
    return agent
