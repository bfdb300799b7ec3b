"""The tree is ruff clean, linted and formatted (the settings in pyproject.toml), as mypy strict is."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


class TestRuff:
    @pytest.mark.parametrize("argv", [["check", "."], ["format", "--check", "."]], ids=["lint", "format"])
    def test_ruff_passes_on_the_whole_tree(self, argv: list[str]) -> None:
        """`ruff check .` and `ruff format --check .` exit 0; the output names what is off."""
        done = subprocess.run(
            [sys.executable, "-m", "ruff", *argv], cwd=ROOT, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
