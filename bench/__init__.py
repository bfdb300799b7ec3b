"""Benchmarks of the codex worker agent against its baselines: ``python -m bench`` (see README.md).

The benchmarks start real workers on real mounts with the same helpers as the tests, from the
installed ``testkit`` package.
"""

from __future__ import annotations

__all__: list[str] = []
