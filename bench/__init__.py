"""Benchmarks of the codex worker agent against its baselines: ``python -m bench`` (see README.md).

The benchmarks start real workers on real mounts with the same helpers as the tests, from the
repository's ``testkit`` package (run ``python -m bench`` from the repository root: it is not in the wheel).
"""

from __future__ import annotations

__all__: list[str] = []
