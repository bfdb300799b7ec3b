"""The package type-checks under mypy --strict (the settings in pyproject.toml)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


class TestTypes:
    def test_mypy_strict_passes(self) -> None:
        """agent/, worker_entry/, the stand-in, bench/ and testkit/ have no type errors: the benchmarks
        call the package as tests do, and a changed signature must fail here, not in a bench run."""
        done = subprocess.run(
            [sys.executable, "-m", "mypy", "--no-error-summary"], cwd=ROOT, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stdout + done.stderr
