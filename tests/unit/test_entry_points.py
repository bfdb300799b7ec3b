"""Entry points that behave: --help and --version answer and start nothing; unknown words are refused."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import agent
from agent.login.codex_cli import SUPPORTED_VERSION
from worker_entry.main import _CELERY_ARGS
from worker_entry.main import cli as worker_entry_cli

BIN = Path(sys.executable).parent
COMMANDS = ["codex-agent", "worker-entry", "openai-standin"]
# Settings that would make each command serve if it got that far: a Codex shard, metrics, a broker.
SERVING_ENV = {
    "CODEX_SHARD_INDEX": "0",
    "AGENT_METRICS_PORT": "0",
    "CELERY_BROKER_URL": "amqp://guest:guest@127.0.0.1:1//",
}


def _run(command: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **SERVING_ENV}
    return subprocess.run([str(BIN / command), *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("flag", ["--version", "-V"])
def test_version(command: str, flag: str) -> None:
    """``--version``: exit 0, the release and the supported Codex CLI, and no log line (nothing started)."""
    done = _run(command, flag)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"{command} {agent.__version__} (codex-worker-agent, Codex CLI {SUPPORTED_VERSION})"
    assert done.stderr == ""


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help(command: str, flag: str) -> None:
    """``--help`` and ``-h``: exit 0, the usage and the exit codes, nothing started."""
    done = _run(command, flag)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"Usage: {command} ") and "Exit codes: 0" in done.stdout
    assert "codex.agent" not in done.stdout + done.stderr


@pytest.mark.parametrize(
    ("command", "args"),
    [
        ("worker-entry", ["--bogus"]),
        ("worker-entry", ["serve"]),
        ("worker-entry", ["--app", "worker_entry.app:app", "--max-tasks-per-child", "5"]),
        ("codex-agent", ["--bogus"]),
        ("codex-agent", ["serve"]),
        ("openai-standin", ["--bogus"]),
        ("openai-standin", ["serve", "--bogus"]),
    ],
)
def test_unknown_argument_is_a_usage_error(command: str, args: list[str]) -> None:
    """An unknown option or word: exit 2 with click's usage error, before anything starts."""
    done = _run(command, *args)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "Usage:" in done.stderr and ("No such" in done.stderr or "unexpected extra argument" in done.stderr)
    assert "codex.agent.starting" not in done.stdout


def test_only_words_after_the_separator_go_to_celery() -> None:
    """``-- ARGS`` are celery worker's; the ones before are worker-entry's own."""
    ctx = worker_entry_cli.make_context("worker-entry", ["--app", "m:app", "--", "--max-tasks-per-child", "5", "-h"])
    assert ctx.params["app_path"] == "m:app"
    assert ctx.meta[_CELERY_ARGS] == ("--max-tasks-per-child", "5", "-h")
    assert worker_entry_cli.make_context("worker-entry", []).meta[_CELERY_ARGS] == ()


def test_app_is_imported_from_the_current_directory(tmp_path: Path) -> None:
    """``--app myproj.celery:app`` finds ``myproj`` in the working directory, as ``celery -A`` does."""
    project = tmp_path / "project"
    (project / "myproj").mkdir(parents=True)
    (project / "myproj" / "__init__.py").write_text("")
    (project / "myproj" / "celery.py").write_text('from celery import Celery\napp = Celery("myproj")\n')
    runner = tmp_path / "elsewhere" / "run.py"  # sys.path[0] is the script's directory, not the project
    runner.parent.mkdir()
    runner.write_text(
        textwrap.dedent("""
        from agent.cli.clickext import import_app
        print(import_app("myproj.celery:app").main)
    """)
    )
    env = {**os.environ, "PYTHONPATH": os.environ.get("PYTHONPATH", "")}
    done = subprocess.run(
        [sys.executable, str(runner)], cwd=project, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "myproj"
