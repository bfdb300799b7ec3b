"""codex-worker-agent: one Codex login per Docker volume, claimed, verified and gated for Celery.

The public face, for a task author and an app owner (``import agent``)::

    agent.install(app)            connect the agent to a Celery app (worker side)
    agent.add_router(app, cfg)    route Codex tasks to their shard (publisher side)
    agent.load_config()           the validated configuration (AgentConfig), from the environment
    agent.CodexTask               base class of a Codex phase task (routing, pre-flight, audit)
    agent.CodexPhase              ``codex exec`` in a job container under the job policy: ``CodexPhase(task.jobs).run(...)``
    agent.JobLauncher             the job launcher a task gets as ``self.jobs``
    agent.PIN_ARG                 the keyword (``codex_shard``) that pins a phase to a shard
    agent.DEFAULT_AFFINITY_ARG    the keyword (``affinity_key``) routed by, unless a task sets affinity_arg
    agent.AgentError              base of every coded error (``code``, ``message``, ``remediation``)

Each name is imported on first use (PEP 562), so ``import agent`` loads neither Celery nor Docker.

The house, one subpackage per concern, each importing only those listed before it (its
``__init__`` says what it owns and may import; ``tests/unit/test_layout.py`` holds it to that):
``util``, ``settings``, ``engine``, ``login``, ``fleet``, ``volume``, ``telemetry``, ``jobs``,
``routing``, ``worker``, ``guard``, ``cli``; below them all, the code catalogue ``errors`` and the
report types ``problems``.
"""

from __future__ import annotations

from importlib import import_module, metadata
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agent.errors import AgentError as AgentError
    from agent.errors import ConfigError as ConfigError
    from agent.jobs.launcher import JobLauncher as JobLauncher
    from agent.jobs.phase import CodexPhase as CodexPhase
    from agent.routing.router import add_router as add_router
    from agent.settings.config import AgentConfig as AgentConfig
    from agent.settings.config import load as load_config
    from agent.settings.topology import DEFAULT_AFFINITY_ARG as DEFAULT_AFFINITY_ARG
    from agent.settings.topology import PIN_ARG as PIN_ARG
    from agent.worker.checks import Checker as Checker
    from agent.worker.checks import CheckReport as CheckReport
    from agent.worker.runtime import Agent as Agent
    from agent.worker.runtime import install as install
    from agent.worker.task import CodexTask as CodexTask

__all__ = [
    "Agent",
    "AgentConfig",
    "AgentError",
    "CheckReport",
    "Checker",
    "CodexPhase",
    "CodexTask",
    "ConfigError",
    "DEFAULT_AFFINITY_ARG",
    "JobLauncher",
    "PIN_ARG",
    "__version__",
    "add_router",
    "install",
    "load_config",
]

_LAZY: dict[str, tuple[str, str]] = {
    "Agent": ("agent.worker.runtime", "Agent"),
    "AgentConfig": ("agent.settings.config", "AgentConfig"),
    "AgentError": ("agent.errors", "AgentError"),
    "CheckReport": ("agent.worker.checks", "CheckReport"),
    "Checker": ("agent.worker.checks", "Checker"),
    "CodexPhase": ("agent.jobs.phase", "CodexPhase"),
    "CodexTask": ("agent.worker.task", "CodexTask"),
    "ConfigError": ("agent.errors", "ConfigError"),
    "DEFAULT_AFFINITY_ARG": ("agent.settings.topology", "DEFAULT_AFFINITY_ARG"),
    "JobLauncher": ("agent.jobs.launcher", "JobLauncher"),
    "PIN_ARG": ("agent.settings.topology", "PIN_ARG"),
    "add_router": ("agent.routing.router", "add_router"),
    "install": ("agent.worker.runtime", "install"),
    "load_config": ("agent.settings.config", "load"),
}
"""Public name -> (module, attribute), imported by :func:`__getattr__` on first use."""

try:
    __version__: str = metadata.version("codex-worker-agent")
    """The installed distribution's version (pyproject.toml), the one ``--version`` prints."""
except metadata.PackageNotFoundError:  # a bare checkout on PYTHONPATH, never installed
    __version__ = "0+unknown"


def __getattr__(name: str) -> Any:
    """Import a public name on first use and keep it (PEP 562)."""
    try:
        module, attribute = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'agent' has no attribute {name!r}") from None
    value = getattr(import_module(module), attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
