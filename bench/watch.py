"""Rows 10a/10b: how fast the gate follows the volume, the event watch against the stat loop.

10a: an open shard's CODEX_HOME is chmod-ed 0755, to the worker's ``codex.gate.closed`` line.
10b: a CLI-made auth.json renamed into a closed (logged-out) shard, to ``codex.gate.opened``.
Both sides are real ``worker-entry`` processes on real mounts in the same run: ``AGENT_WATCH=events``
(the default) and ``AGENT_WATCH=poll`` (the watcher before events, and the fallback). Both run
with ``AGENT_RECHECK_INTERVAL`` = :data:`RECHECK` s, so the baseline's open-gate re-check (4x)
comes every 4 s (60 s at the default 15 s). Each trial starts at a random point of the
baseline's cycle, so its latencies sample the whole cycle, not one phase of it.
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path
from typing import Any

from bench.core import Bench, Row, p95
from bench.workers import Spawned, _Workers, stamp
from testkit import make_api_key_login

__all__ = ["RECHECK", "bench_watch"]

RECHECK = 1.0
"""AGENT_RECHECK_INTERVAL of both sides: short, so the baseline's trials take seconds, not minutes."""

POLL_INTERVAL = 0.5
"""The stat loop's period (agent.settings.defaults.WATCH_INTERVAL)."""

_TIMEOUT = 60.0


def _land(home: Any, content: bytes) -> float:
    """Rename a login into the volume, as a login tool's atomic write does; when it landed."""
    staged = home.codex_home / ".auth.json.bench"
    staged.write_bytes(content)
    os.chmod(staged, 0o600)
    landed = time.time()
    os.rename(staged, home.codex_home / "auth.json")
    return landed


def _next(proc: Spawned, event: str) -> float:
    """Wait for one more ``event`` line than already logged; its timestamp."""
    count = len(proc.events(event)) + 1
    return stamp(proc.wait_for(event, timeout=_TIMEOUT, count=count)[-1])


def _login(bench: Bench, tag: str) -> bytes:
    """An auth.json of a login of its own, made by the real CLI in a scratch home.

    Each side needs its own: the fleet lease refuses one login in two volumes (CODEX-E013).
    """
    scratch = bench.tmp / f"login-{tag}" / ".codex"
    make_api_key_login(bench.codex_bin, scratch)
    return (scratch / "auth.json").read_bytes()


class _Side:
    """One worker of one watch mode on its own logged-in volume."""

    def __init__(self, bench: Bench, workers: _Workers, mode: str, recheck: float) -> None:
        self.home = bench.shard_home()
        self.content = content = _login(bench, mode)
        self.auth: Path = self.home.codex_home / "auth.json"
        _land(self.home, content)
        self.proc = workers.agent(self.home, AGENT_WATCH=mode, AGENT_RECHECK_INTERVAL=f"{recheck:g}")
        self.proc.wait_for("codex.gate.opened", timeout=_TIMEOUT)
        try:  # logged just after the gate opens: wait for it rather than look once
            self.proc.wait_for("codex.watch.started", timeout=_TIMEOUT, mode=mode)
        except Exception as e:  # noqa: BLE001  (a timeout, or the worker exited)
            raise RuntimeError(f"the worker does not watch in {mode} mode:\n{self.proc.tail(20)}") from e

    def close_after_chmod(self, spread: float) -> float:
        """10a: seconds from chmod 0755 to the gate closed; then the mode is restored and the gate reopens."""
        time.sleep(random.uniform(0, spread))
        changed = time.time()
        os.chmod(self.home.codex_home, 0o755)
        closed = _next(self.proc, "codex.gate.closed") - changed
        reopened = len(self.proc.events("codex.gate.opened")) + 1
        os.chmod(self.home.codex_home, 0o700)
        os.utime(self.auth)  # the stat loop reopens on an auth.json change, not on a chmod
        self.proc.wait_for("codex.gate.opened", timeout=_TIMEOUT, count=reopened)
        return closed

    def open_after_login(self) -> float:
        """10b: log out (gate closes), then seconds from a login landing to the gate opened."""
        closed = len(self.proc.events("codex.gate.closed")) + 1
        os.unlink(self.auth)
        self.proc.wait_for("codex.gate.closed", timeout=_TIMEOUT, count=closed)
        time.sleep(random.uniform(0, POLL_INTERVAL))
        landed = _land(self.home, self.content)
        return _next(self.proc, "codex.gate.opened") - landed


def bench_watch(bench: Bench) -> list[Row]:
    """Rows 10a and 10b, events against poll, on two workers started side by side."""
    recheck, trials = RECHECK, bench.settings.heal_trials
    workers = _Workers(bench, "watch")
    events, poll = (_Side(bench, workers, mode, recheck) for mode in ("events", "poll"))
    cycle = recheck * 4
    close_events = [events.close_after_chmod(cycle) for _ in range(trials)]
    close_poll = [poll.close_after_chmod(cycle) for _ in range(trials)]
    open_events, open_poll = [], []
    for _ in range(trials):
        open_events.append(events.open_after_login())
        open_poll.append(poll.open_after_login())
    baseline = f"AGENT_WATCH=poll (stat loop; AGENT_RECHECK_INTERVAL={recheck:g} s)"
    close = Row(
        id="10a",
        what="Open shard's volume chmod 0755, to the gate closed",
        unit="ms",
        samples=[s * 1000 for s in close_events],
        baseline_samples=[s * 1000 for s in close_poll],
        baseline_label=baseline,
        judged_label="p95",
        target="p95 <= 1 s",
        test=lambda v: v <= 1000.0,
        details={
            "recheck_interval_s": recheck,
            "open_recheck_every_s": cycle,
            "baseline_p95_ms": round(p95(close_poll) * 1000, 1),
        },
        method=f"chmod 0755 of CODEX_HOME on a real mount of a running worker-entry, to its codex.gate.closed "
        f"line; each trial at a random point of the baseline's {cycle:g} s open-gate re-check cycle (default "
        "settings: 60 s).",
    )
    close.judged = p95(close.samples)
    reopen = Row(
        id="10b",
        what="Valid login landing in a closed shard, to the gate opened",
        unit="ms",
        samples=[s * 1000 for s in open_events],
        baseline_samples=[s * 1000 for s in open_poll],
        baseline_label=baseline,
        judged_label="p95",
        target="p95 <= 200 ms",
        test=lambda v: v <= 200.0,
        details={"stat_loop_period_s": POLL_INTERVAL, "baseline_p95_ms": round(p95(open_poll) * 1000, 1)},
        method="Atomic rename of a CLI-made auth.json into a logged-out volume (removed before each trial, "
        "the gate closed), to the codex.gate.opened line; includes the full checks (`codex login status`); "
        "sides alternated, each trial at a random point of the 0.5 s stat loop.",
    )
    reopen.judged = p95(reopen.samples)
    return [close, reopen]
