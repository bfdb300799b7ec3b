"""``agent`` is the public face: every documented name resolves, and ``import agent`` stays light."""

from __future__ import annotations

import subprocess
import sys

import pytest

import agent


def test_import_agent_loads_neither_celery_nor_docker() -> None:
    """PEP 562: a publisher or a tool may ``import agent`` without Celery, kombu or the docker SDK."""
    probe = "import sys, agent; agent.AgentError; agent.PIN_ARG; print(sorted(m for m in ('celery', 'kombu', 'docker') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize("name", agent.__all__)
def test_every_public_name_resolves(name: str) -> None:
    assert getattr(agent, name) is not None
    assert name in dir(agent)


def test_public_names_are_the_library_objects() -> None:
    from agent.errors import AgentError
    from agent.jobs.launcher import JobLauncher
    from agent.jobs.phase import CodexPhase
    from agent.settings.config import load
    from agent.settings.topology import PIN_ARG
    from agent.worker.runtime import install
    from agent.worker.task import CodexTask

    assert (agent.install, agent.CodexTask, agent.CodexPhase, agent.JobLauncher) == (
        install,
        CodexTask,
        CodexPhase,
        JobLauncher,
    )
    assert (agent.load_config, agent.AgentError, agent.PIN_ARG) == (
        load,
        AgentError,
        PIN_ARG,
    ) and PIN_ARG == "codex_shard"
    assert issubclass(agent.ConfigError, agent.AgentError)


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="launcher_for_env"):
        agent.launcher_for_env  # noqa: B018  (the name the old README promised)
