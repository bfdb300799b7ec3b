"""In-process benchmarks: startup checks (row 1), pre-flight (row 3) and routing (row 4).

Checks and pre-flight run against a real mount (a Docker named volume bind-mounted at
``<home>/.codex``) logged in with the real Codex CLI; routing is pure computation on one core.
"""

from __future__ import annotations

import os
import subprocess
import time
from typing import Any

from bench.core import Bench, Row, median

__all__ = ["bench_checks", "bench_preflight", "bench_routing"]


def _config(bench: Bench, home: Any) -> Any:
    from agent.settings.config import load

    return load(
        {
            "HOME": str(home.home),
            "CODEX_SHARD_INDEX": "0",
            "CODEX_VOLUME_NAME": home.volume,
            "CODEX_BIN": bench.codex_bin,
            "AGENT_WORKER_NAME": f"bench-{bench.run_id}",
            "AGENT_STATE_DIR": str(bench.tmp / "state"),
        }
    )


def _logged_in_home(bench: Bench) -> Any:
    from testkit import make_api_key_login

    home = bench.shard_home()
    make_api_key_login(bench.codex_bin, home.codex_home)
    return home


def _cli_alone(bench: Bench, codex_home: str) -> float:
    """Seconds of one ``codex login status`` run as the agent runs it (argv, explicit env)."""
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": os.environ.get("HOME", "/"),
        "CODEX_HOME": codex_home,
        "LANG": "C.UTF-8",
        "NO_COLOR": "1",
    }
    started = time.perf_counter()
    done = subprocess.run(
        [bench.codex_bin, "login", "status"],
        env=env,
        capture_output=True,
        check=False,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"codex login status exited {done.returncode} on the bench volume")
    return elapsed


def bench_checks(bench: Bench) -> list[Row]:
    """Row 1: Checker.run (claim + mount + login) on a real mount vs ``codex login status`` alone."""
    from agent.engine.optional import optional_client
    from agent.worker.checks import CHECK_NAMES, Checker

    home = _logged_in_home(bench)
    config = _config(bench, home)
    client = optional_client()  # as a worker does: the mount check may ask the engine
    checks: list[float] = []
    cli: list[float] = []
    parts: dict[str, list[float]] = {name: [] for name in CHECK_NAMES}
    for i in range(bench.settings.checks_runs + 1):  # run 0 warms caches and is dropped
        cli_s = _cli_alone(bench, str(home.codex_home))
        checker = Checker(config, docker_client=client)
        started = time.perf_counter()
        report = checker.run()
        elapsed = time.perf_counter() - started
        checker.claim.release()
        if not report.ok:
            raise RuntimeError(f"startup checks failed on the bench volume: {report.to_dict()}")
        if i == 0:
            continue
        checks.append(elapsed * 1000)
        cli.append(cli_s * 1000)
        for result in report.results:
            parts[result.name].append(result.duration_s * 1000)
    if client is not None:
        client.close()
    row = Row(
        id="1",
        what="All startup checks (Checker.run: claim + mount + login)",
        unit="ms",
        samples=checks,
        baseline_samples=cli,
        baseline_label="`codex login status` alone",
        judged_label="over CLI",
        target="<= CLI + 50 ms",
        test=lambda over: over <= 50.0,
        details={f"{name}_ms_median": round(median(v), 3) for name, v in parts.items()},
        method="A fresh Checker per run on a real mount (volume bind-mounted at CODEX_HOME, logged in "
        "with the real CLI), claim released after; the CLI alone is timed in the same loop.",
    )
    row.judged = row.value - (row.baseline or 0.0)
    return [row]


def bench_preflight(bench: Bench) -> list[Row]:
    """Row 3: Preflight.run with the login verdict cached, and uncached (forgotten before each run)."""
    from agent.worker.checks import Checker, local_login_check
    from agent.worker.preflight import Preflight

    home = _logged_in_home(bench)
    config = _config(bench, home)
    checker = Checker(config)
    checker.claim.acquire()
    try:
        preflight = Preflight(config, local_login_check, checker.claim)
        preflight.run()  # fills the cache
        cached: list[float] = []
        for _ in range(bench.settings.preflight_cached_calls):
            started = time.perf_counter()
            preflight.run()
            cached.append((time.perf_counter() - started) * 1000)
        uncached: list[float] = []
        cli: list[float] = []
        for _ in range(bench.settings.preflight_uncached_runs):
            cli.append(_cli_alone(bench, str(home.codex_home)) * 1000)
            preflight.forget()
            started = time.perf_counter()
            preflight.run()
            uncached.append((time.perf_counter() - started) * 1000)
    finally:
        checker.claim.release()
    method = "Preflight.run on a real mount with our claim: the marker read plus the cached or fresh login verdict."
    return [
        Row(
            id="3a",
            what="Per-task pre-flight, cached",
            unit="ms",
            samples=cached,
            target="<= 1 ms",
            test=lambda v: v <= 1.0,
            method=method,
        ),
        Row(
            id="3b",
            what="Per-task pre-flight, uncached (runs the CLI)",
            unit="ms",
            samples=uncached,
            baseline_samples=cli,
            baseline_label="`codex login status` alone",
            target="none (informational)",
            method=method,
        ),
    ]


def _on_one_core() -> Any:
    """Pin this process to one CPU; returns a function that restores the old affinity."""
    try:
        before = os.sched_getaffinity(0)
        os.sched_setaffinity(0, {min(before)})
    except (AttributeError, OSError):
        return lambda: None
    return lambda: os.sched_setaffinity(0, before)


def _rate(route: Any, keys: list[str], shards: int) -> float:
    started = time.perf_counter()
    for key in keys:
        route(key, shards)
    return len(keys) / (time.perf_counter() - started)


def _balance(shards_of: list[int], shards: int) -> float:
    counts = [shards_of.count(s) for s in range(shards)]
    return max(counts) / (sum(counts) / shards)


def bench_routing(bench: Bench) -> list[Row]:
    """Row 4: shard_for decisions/s on one core, balance over 3 shards, moved fraction 3 -> 4."""
    from agent.settings.topology import key_digest, shard_for

    def modulo(key: str, shards: int) -> int:
        return key_digest(key) % shards

    rates: list[float] = []
    modulo_rates: list[float] = []
    balance: list[float] = []
    modulo_balance: list[float] = []
    moved: list[float] = []
    modulo_moved: list[float] = []
    restore = _on_one_core()
    try:
        for run in range(bench.settings.routing_runs):
            keys = [f"org-{run}/repo-{i}" for i in range(bench.settings.routing_keys)]
            rates.append(_rate(shard_for, keys, 3))
            modulo_rates.append(_rate(modulo, keys, 3))
            sample = keys[:10_000]
            jump3 = [shard_for(k, 3) for k in sample]
            jump4 = [shard_for(k, 4) for k in sample]
            mod3 = [modulo(k, 3) for k in sample]
            mod4 = [modulo(k, 4) for k in sample]
            balance.append(_balance(jump3, 3))
            modulo_balance.append(_balance(mod3, 3))
            moved.append(sum(a != b for a, b in zip(jump3, jump4, strict=False)) / len(sample))
            modulo_moved.append(sum(a != b for a, b in zip(mod3, mod4, strict=False)) / len(sample))
    finally:
        restore()
    keys_note = f"{min(bench.settings.routing_keys, 10_000)} keys per run, a new key set each run"
    return [
        Row(
            id="4a",
            what="Routing: shard_for decisions/s, one core",
            unit="/s",
            samples=rates,
            baseline_samples=modulo_rates,
            baseline_label="modulo hashing (same digest)",
            target=">= 200k/s",
            test=lambda v: v >= 200_000,
            method=f"{bench.settings.routing_keys} distinct keys routed over 3 shards, process pinned to one CPU.",
        ),
        Row(
            id="4b",
            what="Routing: shard balance max/mean, 3 shards",
            unit="",
            samples=balance,
            baseline_samples=modulo_balance,
            baseline_label="modulo hashing",
            target="<= 1.05",
            test=lambda v: v <= 1.05,
            method=keys_note,
        ),
        Row(
            id="4c",
            what="Routing: moved fraction 3 -> 4 shards",
            unit="",
            samples=moved,
            baseline_samples=modulo_moved,
            baseline_label="modulo hashing",
            target="<= 0.27 (ideal 0.25)",
            test=lambda v: v <= 0.27,
            method=keys_note,
        ),
    ]
