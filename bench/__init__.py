"""Benchmarks of the codex worker agent against its baselines: ``python -m bench`` (see README.md).

The benchmarks start real workers on real mounts with the test suite's helpers (``tests/support``),
so ``tests/`` is put on ``sys.path`` here, before any submodule imports them.
"""

from __future__ import annotations

import sys
from pathlib import Path

__all__: list[str] = []

_TESTS_DIR = str(Path(__file__).resolve().parents[1] / "tests")
if _TESTS_DIR not in sys.path:
    sys.path.insert(0, _TESTS_DIR)
