"""codex-worker-agent: one Codex login per Docker volume, claimed, verified and gated for Celery."""

from __future__ import annotations

from importlib import metadata
from typing import Any

from agent.checks import Checker as Checker
from agent.checks import CheckReport as CheckReport
from agent.config import AgentConfig as AgentConfig
from agent.config import load as load_config
from agent.errors import AgentError as AgentError

__all__ = ["AgentConfig", "AgentError", "Checker", "CheckReport", "__version__", "install", "load_config"]

try:
    __version__: str = metadata.version("codex-worker-agent")
    """The installed distribution's version (pyproject.toml), the one ``--version`` prints."""
except metadata.PackageNotFoundError:  # a bare checkout on PYTHONPATH, never installed
    __version__ = "0+unknown"


def install(app: Any, config: AgentConfig | None = None, **kwargs: Any) -> Any:
    """Connect the agent to a Celery app (see :func:`agent.runtime.install`); imported lazily."""
    from agent.runtime import install as _install

    return _install(app, config, **kwargs)
