"""Rows, statistics and the shared resources every benchmark draws on.

A :class:`Row` is one line of the results table: the median of repeated samples, the baseline's
median beside it, their ratio, and the figure the target is judged on. A :class:`Bench` holds what
the benchmarks share (the Codex CLI, the Docker client, the brokers, a scratch directory) and
removes every volume, mount and process it made when it closes.
"""

from __future__ import annotations

import math
import shutil
import statistics
import sys
import tempfile
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["REPO_ROOT", "Bench", "Row", "Settings", "env_path", "median", "p95", "percentile", "summary"]

REPO_ROOT = Path(__file__).resolve().parents[1]


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) by linear interpolation between closest ranks."""
    if not values:
        return math.nan
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def median(values: Sequence[float]) -> float:
    """The median, NaN for no values."""
    return statistics.median(values) if values else math.nan


def p95(values: Sequence[float]) -> float:
    """The 95th percentile."""
    return percentile(values, 95)


def summary(values: Sequence[float]) -> dict[str, float]:
    """min, median, p95 and max of ``values``."""
    return {
        "min": min(values) if values else math.nan,
        "median": median(values),
        "p95": p95(values),
        "max": max(values) if values else math.nan,
    }


@dataclass
class Row:
    """One benchmark row.

    Attributes:
        id: the row number in the issue (``"1"``, ``"3a"``…).
        what: what is measured.
        unit: unit of ``value`` and ``baseline`` (``ms``, ``s``, ``MB``, ``/s`` or ``""``).
        samples: every measured value of the agent side.
        baseline_samples: every measured value of the baseline side (may be empty).
        baseline_label: what the baseline is.
        judged: the figure the target applies to (defaults to the median).
        judged_label: how ``judged`` is derived (``median``, ``p95``, ``ratio``, ``added``…).
        target: the target, as the issue words it.
        test: decides whether ``judged`` meets the target.
        details: extra figures (breakdowns, secondary timings) kept in the JSON.
        method: one sentence on how it is measured.
    """

    id: str
    what: str
    unit: str
    samples: list[float]
    baseline_samples: list[float] = field(default_factory=list)
    baseline_label: str = "none"
    judged: float | None = None
    judged_label: str = "median"
    target: str = ""
    test: Callable[[float], bool] | None = None
    details: dict[str, Any] = field(default_factory=dict)
    method: str = ""

    @property
    def value(self) -> float:
        """Median of the samples."""
        return median(self.samples)

    @property
    def baseline(self) -> float | None:
        """Median of the baseline samples, None without a baseline."""
        return median(self.baseline_samples) if self.baseline_samples else None

    @property
    def ratio(self) -> float | None:
        """value / baseline."""
        base = self.baseline
        if base is None or base == 0 or math.isnan(base):
            return None
        return self.value / base

    @property
    def judged_value(self) -> float:
        """The figure the target is judged on (the ratio for ``judged_label="ratio"``)."""
        if self.judged is not None:
            return self.judged
        if self.judged_label == "ratio":
            ratio = self.ratio
            return math.nan if ratio is None else ratio
        return self.value

    @property
    def met(self) -> bool | None:
        """Whether the target is met; None when the row has no target or no figure."""
        if self.test is None or math.isnan(self.judged_value):
            return None
        return bool(self.test(self.judged_value))

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe view (NaN becomes null)."""

        def clean(x: float | None) -> float | None:
            return None if x is None or math.isnan(x) else round(x, 6)

        return {
            "id": self.id,
            "what": self.what,
            "unit": self.unit,
            "median": clean(self.value),
            "p95": clean(p95(self.samples)),
            "n": len(self.samples),
            "baseline_label": self.baseline_label,
            "baseline_median": clean(self.baseline),
            "baseline_n": len(self.baseline_samples),
            "ratio": clean(self.ratio),
            "judged_label": self.judged_label,
            "judged": clean(self.judged_value),
            "target": self.target,
            "met": self.met,
            "samples": [clean(x) for x in self.samples],
            "baseline_samples": [clean(x) for x in self.baseline_samples],
            "details": self.details,
            "method": self.method,
        }


@dataclass(frozen=True)
class Settings:
    """How much to measure: repeat counts per benchmark (``--quick`` makes them tiny)."""

    quick: bool
    checks_runs: int
    preflight_cached_calls: int
    preflight_uncached_runs: int
    routing_keys: int
    routing_runs: int
    job_runs: int
    startup_runs: int
    heal_trials: int
    refusal_trials: int
    settle_s: float

    @classmethod
    def full(cls) -> Settings:
        return cls(False, 30, 2000, 20, 200_000, 7, 40, 11, 10, 7, 2.0)

    @classmethod
    def tiny(cls) -> Settings:
        return cls(True, 3, 100, 2, 5_000, 2, 1, 1, 2, 1, 0.5)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class Bench:
    """Shared resources of one benchmark run; ``close`` removes whatever they left behind.

    Args:
        settings: repeat counts.
        codex_bin: the real Codex CLI.
        broker_url: the Celery broker the workers use (RabbitMQ).
        backend_url: the result backend (Redis).
        job_image: the job image (``codex login status`` inside).
        busybox_image: a tiny image used to chown/chmod volumes.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        codex_bin: str,
        broker_url: str,
        backend_url: str,
        job_image: str,
        busybox_image: str,
    ) -> None:
        import docker

        from testkit import DockerCleanup

        self.settings = settings
        self.codex_bin = codex_bin
        self.broker_url = broker_url
        self.backend_url = backend_url
        self.job_image = job_image
        self.busybox_image = busybox_image
        self.docker = docker.from_env()
        self.cleanup = DockerCleanup(self.docker)
        self.tmp = Path(tempfile.mkdtemp(prefix="codex-bench-"))
        self._closers: list[Callable[[], None]] = []
        self.run_id = uuid.uuid4().hex[:8]

    def on_close(self, closer: Callable[[], None]) -> None:
        """Run ``closer`` at :meth:`close` (last registered runs first)."""
        self._closers.append(closer)

    def shard_home(self) -> Any:
        """A fresh Docker volume bind-mounted at ``<home>/.codex`` (root only), removed at close."""
        from testkit.workers import ShardHome

        home = ShardHome.create(self.docker, self.tmp)
        self.cleanup.volume(home.volume)
        self.on_close(home.unmount)
        return home

    def queue_name(self, what: str) -> str:
        """A queue name no concurrent test or worker uses."""
        return f"bench-{what}-{self.run_id}"

    def close(self) -> None:
        for closer in reversed(self._closers):
            try:
                closer()
            except Exception:  # noqa: BLE001  (cleanup goes on whatever one step says)
                pass
        self._closers.clear()
        self.cleanup.close()
        self.docker.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


def env_path(codex_bin: str) -> str:
    """PATH for child processes: the venv, the Codex CLI's directory, the system."""
    return f"{Path(sys.executable).parent}:{Path(codex_bin).parent}:/usr/local/bin:/usr/bin:/bin"
