"""codex-worker-agent: one Codex login per Docker volume, claimed, verified and gated for Celery."""

from __future__ import annotations

from agent.checks import Checker as Checker
from agent.checks import CheckReport as CheckReport
from agent.config import AgentConfig as AgentConfig
from agent.config import load as load_config
from agent.errors import AgentError as AgentError

__all__ = ["AgentConfig", "AgentError", "Checker", "CheckReport", "load_config"]
