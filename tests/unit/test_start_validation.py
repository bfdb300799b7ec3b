"""Settings checked when the worker starts: a bad value is CODEX-E001 at start, not at first use."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent.errors import ConfigError
from agent.settings.config import load
from agent.settings.variables import VARIABLES

ENTRY = str(Path(sys.executable).parent / "worker-entry")

BAD = [(v.name, v.invalid) for v in VARIABLES.values() if not v.name.startswith("CODEX_GUARD_")]
"""Every variable a worker reads, with the invalid example its declaration carries."""
GUARD_BAD = [(v.name, v.invalid) for v in VARIABLES.values() if v.name.startswith("CODEX_GUARD_")]


@pytest.mark.parametrize(("variable", "value"), BAD, ids=[v for v, _ in BAD])
def test_the_worker_stops_at_start_naming_the_variable(variable: str, value: str, tmp_path: Path) -> None:
    """worker-entry of a Codex shard, for every variable of the table: exit 2, CODEX-E001 with the variable,
    value and what is accepted."""
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "PYTHONPATH": os.environ.get("PYTHONPATH", ""),
        "CODEX_SHARD_INDEX": "0",
        "CELERY_BROKER_URL": "amqp://guest:guest@127.0.0.1:1//",
        "AGENT_STATE_DIR": str(tmp_path / "state"),
        variable: value,
    }
    done = subprocess.run([ENTRY], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, (done.stdout[-2000:], done.stderr)
    assert f"error CODEX-E001: {variable}={value!r} is invalid" in done.stderr and "accepted:" in done.stderr
    line = json.loads(done.stdout.strip().splitlines()[-1])
    assert line["event"] == "codex.agent.startup_failed" and line["code"] == "CODEX-E001"


@pytest.mark.parametrize(
    "value",
    [
        "codex-worker-agent/job:dev",
        "python:3.11-slim",
        "registry.example:5000/team/job:1.2",
        "ghcr.io/org/codex@sha256:" + "0" * 64,
    ],
)
def test_image_references_are_accepted(value: str) -> None:
    assert load({"CODEX_JOB_IMAGE": value, "CODEX_LOGIN_CHECK_IMAGE": value}).job_image == value


@pytest.mark.parametrize("value", ["Upper/Case", "a//b", "-x", "http://x/y", "job:", "x:" + "t" * 200])
def test_malformed_images_are_config_errors(value: str) -> None:
    for variable in ("CODEX_JOB_IMAGE", "CODEX_LOGIN_CHECK_IMAGE"):
        with pytest.raises(ConfigError) as info:
            load({variable: value})
        assert info.value.facts["variable"] == variable


def test_no_job_image_is_still_none() -> None:
    assert load({"CODEX_JOB_IMAGE": "none"}).job_image is None


@pytest.mark.parametrize(
    ("value", "ok"), [("codex", True), ("/opt/codex/bin/codex", True), ("bin/codex", False), ("./codex", False)]
)
def test_codex_bin_is_a_command_or_an_absolute_path(value: str, ok: bool) -> None:
    """Existence stays the login check's verdict (CODEX-E031); a cwd-relative path is refused."""
    if ok:
        assert load({"CODEX_BIN": value}).codex_bin == value
    else:
        with pytest.raises(ConfigError, match="CODEX_BIN"):
            load({"CODEX_BIN": value})


@pytest.mark.parametrize(("variable", "value"), GUARD_BAD, ids=[v for v, _ in GUARD_BAD])
def test_the_guard_stops_at_start_naming_the_variable(variable: str, value: str, tmp_path: Path) -> None:
    """python -m agent.guard: exit 2 and one CODEX-E001 line naming the variable; nothing is served."""
    env = {
        "PATH": os.environ["PATH"],
        "PYTHONPATH": os.environ.get("PYTHONPATH", ""),
        "CODEX_GUARD_SOCKET_DIR": str(tmp_path / "sockets"),
        variable: value,
    }
    done = subprocess.run([sys.executable, "-m", "agent.guard"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, (done.stdout[-2000:], done.stderr)
    line = json.loads(done.stdout.strip().splitlines()[-1])
    assert line["code"] == "CODEX-E001" and f"{variable}=" in line["message"], line
    assert not (tmp_path / "sockets").exists() or variable == "CODEX_GUARD_SOCKET_DIR"
