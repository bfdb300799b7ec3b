"""Rows 11a-11d: the fleet-wide login lease (agent/fleet/lease.py) with real worker processes.

11a: a second ``worker-entry`` on another volume holding a copy of a running worker's login, to its
     ``codex.check.failed`` CODEX-E013 line (target <= 1 s after its checks begin).
11b/11c: ``kill -9`` of a holder's main process (its pool child left alive, as in a crash) on
     RabbitMQ and on Redis, to the moment a waiting copy holds the lease (target <= 10 s).
11d: ``worker-entry`` spawn to ``codex.gate.consuming`` with the lease on, against the same with
     ``AGENT_FLEET_LEASE=off``, alternated (the lease's cost to startup).

Times come from the workers' JSON log timestamps, or from this process's clock around its own
calls for 11b/11c, never from how often we poll.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
import uuid
from pathlib import Path
from typing import Any

from agent.fleet.lease import LEASE_TTL, LoginLease
from agent.fleet.lease_store import describe_broker, store_for
from agent.fleet.state import STATE_FILE
from agent.volume.claim import VolumeClaim
from bench.core import REPO_ROOT, Bench, Row, median
from bench.workers import STARTUP_FLAGS, VENV_BIN, Spawned, _Workers, stamp
from testkit import make_api_key_login

__all__ = ["bench_lease"]

_TIMEOUT = 60.0

KILL_TRIALS = 5
"""kill -9 trials per broker (1 with ``--quick``); each Redis trial waits out up to one lease TTL."""


def _spawn(workers: _Workers, home: Any, **extra: str) -> Spawned:
    """``worker-entry`` on ``home`` with ``extra`` in its environment; stopped with ``workers``."""
    name = f"lease-{uuid.uuid4().hex[:6]}"
    env = workers.env(name, home, PYTHONPATH=str(REPO_ROOT), **extra)
    proc = Spawned(env, workers.bench.tmp / f"{name}.log", argv=[str(VENV_BIN / "worker-entry"), "--", *STARTUP_FLAGS])
    workers.started.append(proc.start())
    return proc


def _copy_login(source: Any, target: Any) -> None:
    shutil.copy2(source.codex_home / "auth.json", target.codex_home / "auth.json")


def _lease_check_s(proc: Spawned) -> float | None:
    """The lease check's own duration in the worker's published state."""
    try:
        state = json.loads((Path(proc.env["AGENT_STATE_DIR"]) / STATE_FILE).read_text())
        checks = state["checks"]["checks"]
        return float(next(c["duration_s"] for c in checks if c["name"] == "lease"))
    except (OSError, ValueError, KeyError, TypeError, StopIteration):
        return None


def _refusal(bench: Bench, workers: _Workers) -> Row:
    """Row 11a."""
    holder_home, copy_home = bench.shard_home(), bench.shard_home()
    make_api_key_login(bench.codex_bin, holder_home.codex_home)
    _copy_login(holder_home, copy_home)
    holder = _spawn(workers, holder_home)
    holder.wait_for("codex.gate.consuming", timeout=_TIMEOUT)
    from_first_line: list[float] = []
    from_claim: list[float] = []
    for _ in range(bench.settings.refusal_trials):
        copy = _spawn(workers, copy_home)
        refused = copy.wait_for("codex.check.failed", timeout=_TIMEOUT, code="CODEX-E013")[0]
        if holder.env["AGENT_WORKER_NAME"] not in str(refused.get("error")):
            raise RuntimeError(f"the refusal does not name the holder: {refused}")
        claimed = copy.events("codex.claim.acquired")[-1]
        from_first_line.append(stamp(refused) - copy.first_line_at())
        from_claim.append(stamp(refused) - stamp(claimed))
        copy.stop(timeout=20)
    if holder.events("codex.check.failed"):
        raise RuntimeError("the holder lost its lease during the refusal trials")
    return Row(
        id="11a",
        what="Second worker on a copy of a running login, to its CODEX-E013 refusal",
        unit="s",
        samples=from_first_line,
        target="<= 1 s after its checks begin",
        test=lambda v: v <= 1.0,
        details={"claim_acquired_to_refusal_s_median": round(median(from_claim), 4), "broker": "rabbitmq"},
        method="Time from the copy's first log line (codex.agent.starting, before Celery starts and before its "
        "checks) to its codex.check.failed CODEX-E013 line; the claim-to-refusal figure is the lease step alone.",
    )


def _kill_to_free(bench: Bench, workers: _Workers, broker_url: str, row_id: str, kind: str) -> Row:
    """Rows 11b/11c: kill -9 of a holder worker's main process, to a waiting copy holding the lease."""
    freed: list[float] = []
    for trial in range(1 if bench.settings.quick else KILL_TRIALS):
        home = bench.shard_home()
        make_api_key_login(bench.codex_bin, home.codex_home)
        waiting = bench.tmp / f"copy-{row_id}-{trial}"
        waiting.mkdir(mode=0o700)
        shutil.copy2(home.codex_home / "auth.json", waiting / "auth.json")
        holder = _spawn(workers, home, CELERY_BROKER_URL=broker_url)
        holder.wait_for("codex.lease.acquired", timeout=_TIMEOUT)
        claim = VolumeClaim(waiting, worker=f"bench-copy-{trial}", shard=0, volume=waiting.name)
        lease = LoginLease(
            store_for(broker_url, ttl=LEASE_TTL, name=f"bench-copy-{trial}"),
            codex_home=waiting,
            worker=f"bench-copy-{trial}",
            shard=0,
            volume=waiting.name,
            broker=describe_broker(broker_url),
        )
        try:
            claim_id = claim.acquire().claim_id
            if _holds(lease, claim_id):
                raise RuntimeError(f"the copy won while {holder.pid} held the lease:\n{holder.tail(10)}")
            os.kill(holder.pid, signal.SIGKILL)  # the main process only: its pool child lives on
            killed = time.time()
            deadline = time.monotonic() + 3 * LEASE_TTL
            while not _holds(lease, claim_id):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the lease was not freed within {3 * LEASE_TTL} s of kill -9")
                time.sleep(0.02)
            freed.append(time.time() - killed)
        finally:
            lease.release()
            claim.release()
            holder.kill_group()
    row = Row(
        id=row_id,
        what=f"Lease freed after kill -9 of its holder ({kind})",
        unit="s",
        samples=freed,
        target="<= 10 s",
        test=lambda v: v <= 10.0,
        judged_label="max",
        details={"lease_ttl_s": LEASE_TTL},
        method="A worker-entry holder's main process is killed with SIGKILL (its pool child lives on); a copy of "
        "the login polls LoginLease.check every 20 ms; time from the kill to the copy holding the lease.",
    )
    row.judged = max(freed)
    return row


def _holds(lease: LoginLease, claim_id: str) -> bool:
    from agent.errors import FleetDuplicateError

    try:
        return lease.check(claim_id).status == "held"
    except FleetDuplicateError:
        return False


def _startup(bench: Bench, workers: _Workers) -> Row:
    """Row 11d: spawn to codex.gate.consuming, lease on against lease off, alternated."""
    home = bench.shard_home()
    make_api_key_login(bench.codex_bin, home.codex_home)
    sides: dict[str, list[float]] = {"on": [], "off": []}
    lease_check: list[float] = []
    warm = 0 if bench.settings.quick else 1
    for trial in range(bench.settings.startup_runs + warm):
        for side in ("on", "off") if trial % 2 == 0 else ("off", "on"):
            proc = _spawn(workers, home, AGENT_FLEET_LEASE=side)
            consuming = proc.wait_for("codex.gate.consuming", timeout=_TIMEOUT)[0]
            if trial >= warm:
                sides[side].append(stamp(consuming) - proc.spawned_at)
                check = _lease_check_s(proc) if side == "on" else None
                if check is not None:
                    lease_check.append(check)
            proc.stop(timeout=20)
    return Row(
        id="11d",
        what="Worker start to consuming its shard queue, fleet lease on",
        unit="s",
        samples=sides["on"],
        baseline_samples=sides["off"],
        baseline_label="the same with AGENT_FLEET_LEASE=off",
        judged_label="ratio",
        target="ratio <= 1.05",
        test=lambda r: r <= 1.05,
        details={
            "lease_check_s_median": round(median(lease_check), 4) if lease_check else None,
            "paired_ratio_median": round(median([a / b for a, b in zip(sides["on"], sides["off"], strict=False)]), 4),
            "broker": "rabbitmq",
            "flags_both_sides": STARTUP_FLAGS,
        },
        method="worker-entry spawned on a logged-in volume, time to its codex.gate.consuming line; lease on and "
        "off alternated on one volume; the lease check's own duration is read from the published state.",
    )


def bench_lease(bench: Bench) -> list[Row]:
    """Rows 11a-11d (RabbitMQ is the bench broker; 11c uses the Redis of the result backend)."""
    workers = _Workers(bench, "lease")
    rows = [_refusal(bench, workers)]
    rows.append(_kill_to_free(bench, workers, bench.broker_url, "11b", "RabbitMQ"))
    rows.append(_kill_to_free(bench, workers, bench.backend_url, "11c", "Redis"))
    rows.append(_startup(bench, workers))
    return rows
