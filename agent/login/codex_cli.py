"""The Codex CLI version this agent is written against, and a warning when another one is installed.

The phrases :mod:`agent.jobs.phase` matches (a dead login, a usage limit) and the job sandbox's
read-only root are facts about one Codex CLI release. That release is declared once, in the file
``agent/CODEX_CLI_VERSION`` (shipped in the wheel): ``scripts/_common.sh`` provisions it,
``images/build.sh`` refuses to build images around another binary and labels them with it, and the
agent reads it here. A different installed CLI is a warning (``CODEX-W001``), never a closed gate:
a newer release usually works, but its messages are not the ones the agent was tested with.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from importlib import resources
from typing import Any

from agent.problems import CODEX_VERSION_DIFFERS, Problem

__all__ = ["SUPPORTED_VERSION", "installed_version", "version_warning"]

SUPPORTED_VERSION: str = resources.files("agent").joinpath("CODEX_CLI_VERSION").read_text().strip()
"""The supported Codex CLI release, e.g. ``0.169.0``."""

_VERSION = re.compile(r"(\d+\.\d+\.\d+(?:[-+.][\w.]+)?)")
_seen: dict[tuple[str, int, int], str | None] = {}
"""``codex --version`` per binary (path, inode, mtime): asked once per process, not per re-check."""


def installed_version(codex_bin: str, timeout: float = 10.0) -> str | None:
    """The version ``codex_bin --version`` prints (``codex-cli 0.169.0`` -> ``0.169.0``); None when unknown."""
    path = shutil.which(codex_bin)
    if path is None:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    key = (path, st.st_ino, st.st_mtime_ns)
    if key not in _seen:
        try:
            done = subprocess.run(
                [path, "--version"],
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
                env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "NO_COLOR": "1"},
            )
            match = _VERSION.search(done.stdout) if done.returncode == 0 else None
            _seen[key] = match.group(1) if match else None
        except (OSError, subprocess.SubprocessError):
            _seen[key] = None
    return _seen[key]


def version_warning(codex_bin: str, facts: dict[str, Any]) -> Problem | None:
    """``CODEX-W001`` when the installed CLI is not :data:`SUPPORTED_VERSION`; None when it is or is absent."""
    found = installed_version(codex_bin)
    if found is None or found == SUPPORTED_VERSION:
        return None
    return CODEX_VERSION_DIFFERS.problem(**facts, codex_bin=codex_bin, installed=found, supported=SUPPORTED_VERSION)
