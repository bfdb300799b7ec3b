"""codex-worker-agent: one Codex login per Docker volume, claimed, verified and gated for Celery."""

from __future__ import annotations

from typing import Any

from agent.checks import Checker as Checker
from agent.checks import CheckReport as CheckReport
from agent.config import AgentConfig as AgentConfig
from agent.config import load as load_config
from agent.errors import AgentError as AgentError

__all__ = ["AgentConfig", "AgentError", "Checker", "CheckReport", "install", "load_config"]


def install(app: Any, config: AgentConfig | None = None, **kwargs: Any) -> Any:
    """Connect the agent to a Celery app (see :func:`agent.runtime.install`); imported lazily."""
    from agent.runtime import install as _install

    return _install(app, config, **kwargs)
