"""Rows 13 and 13b: a job launch through the Docker API guard, quiet and while another shard floods it.

Row 13: a launch through the guard vs the same launch on the real socket.

Both sides run ``JobLauncher.run`` of ``codex login status`` in the job image with the same logged-in
volume, config and sandbox; only the client differs: a plain docker SDK client on the shard's guard
endpoint (a real ``python -m agent.guard`` process) against one on the host's real socket. So the
ratio is what the guard costs a launch: its strict read, its rewrite of every request and body, and
its ownership checks.

Row 13b: shard 1's launch through the guard while shard 0 floods its own endpoint (connections held
open with heads that never end, deep and wide JSON bodies, a storm of refused calls), against the
same launch with the flood paused, alternated. Target: within the quiet launch plus 1 s.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from bench.core import Bench, Row, median

__all__ = ["bench_guard"]

COMMAND = ["codex", "login", "status"]


def bench_guard(bench: Bench) -> list[Row]:
    """Sides alternated so drift hits both alike; run 0 of each side warms up and is dropped."""
    from agent.jobs.launcher import JobLauncher
    from agent.settings.config import load
    from testkit import VolumeFactory, make_api_key_login_in_volume
    from testkit.guard import GuardProcess

    volumes = VolumeFactory(bench.docker, bench.cleanup, bench.busybox_image)
    volume = volumes("bench_guard").name
    hostile = volumes("bench_guard_hostile").name
    make_api_key_login_in_volume(bench.job_image, volume)
    config = load({"CODEX_SHARD_INDEX": "1", "AGENT_WORKER_NAME": f"bench-{bench.run_id}"})
    guard = GuardProcess({1: volume, 0: hostile})
    guarded_client = guard.client(1)
    try:
        guarded: list[float] = []
        raw: list[float] = []
        for i in range(bench.settings.job_runs + 1):
            context = {
                "queue": "codex-1",
                "shard": 1,
                "volume": volume,
                "worker": "bench",
                "run_id": f"bench-guard-{bench.run_id}-{i}",
                "task_id": f"t{i}",
            }
            sides = [("guarded", guarded), ("raw", raw)] if i % 2 == 0 else [("raw", raw), ("guarded", guarded)]
            for side, out in sides:
                client = guarded_client if side == "guarded" else bench.docker
                started = time.perf_counter()
                JobLauncher(client, config, volume, context).run(bench.job_image, COMMAND)  # E042 unless 0
                if i:
                    out.append((time.perf_counter() - started) * 1000)
        created = len(guard.events("codex.guard.created"))
        quiet, flooded, flood_calls = _under_flood(
            bench,
            guard.socket(0),
            lambda i: JobLauncher(
                guarded_client,
                config,
                volume,
                {
                    "queue": "codex-1",
                    "shard": 1,
                    "volume": volume,
                    "worker": "bench",
                    "run_id": f"bench-flood-{bench.run_id}-{i}",
                    "task_id": f"f{i}",
                },
            ).run(bench.job_image, COMMAND),
        )
        turned_away = len([e for e in guard.events("codex.guard.refused") if e.get("rule") == "connections"])
    finally:
        guarded_client.close()
        guard.close()
    paired = sorted(g / r for g, r in zip(guarded, raw, strict=False))
    added = median(flooded) - median(quiet)
    return [
        Row(
            id="13",
            what="Job launch through the Docker API guard (JobLauncher.run on the shard's endpoint)",
            unit="ms",
            samples=guarded,
            baseline_samples=raw,
            baseline_label="the same launch, raw docker SDK on the real socket",
            judged_label="ratio",
            target="ratio <= 1.05",
            test=lambda r: r <= 1.05,
            details={"paired_ratio_median": round(median(paired), 4), "guard_created_lines": created},
            method=f"`{' '.join(COMMAND)}` in {bench.job_image} with a logged-in volume, create to removed, sandbox on "
            "both sides, sides alternated; the guard is a separate process (python -m agent.guard).",
        ),
        Row(
            id="13b",
            what="Job launch through the guard while another shard floods its own endpoint",
            unit="ms",
            samples=flooded,
            baseline_samples=quiet,
            baseline_label="the same launch with the flood paused",
            judged=added,
            judged_label="added",
            target="added <= 1000 ms",
            test=lambda a: a <= 1000,
            details={
                "ratio": round(median(flooded) / median(quiet), 4),
                "flood_requests": flood_calls,
                "connections_turned_away_lines": turned_away,
            },
            method="shard 0 holds 100 connections with endless heads; a process of its own sends 1 MB-deep and "
            "1 MB-wide bodies and refused calls in a loop from 3 threads; shard 1 runs the row-13 launch, flood on and "
            "off alternated.",
        ),
    ]


FLOOD = """
import socket, sys, threading
path = sys.argv[1]
deep = b"[" * 500_000 + b"]" * 500_000
wide = b'{"Image": "x", "Labels": {' + b",".join(b'"k%d": "v"' % i for i in range(60_000)) + b"}}"

def flood():
    while True:
        for body in (deep, wide, b""):
            target, method = (b"/v1.41/containers/create", b"POST") if body else (b"/v1.41/info", b"GET")
            try:
                with socket.socket(socket.AF_UNIX) as sock:
                    sock.settimeout(5)
                    sock.connect(path)
                    sock.sendall(method + b" " + target + b" HTTP/1.1\\r\\nHost: d\\r\\nContent-Type: application/json"
                                 b"\\r\\nContent-Length: %d\\r\\nConnection: close\\r\\n\\r\\n" % len(body) + body)
                    while sock.recv(65536):
                        pass
            except OSError:
                pass
            print(1, flush=True)

for _ in range(3):
    threading.Thread(target=flood, daemon=True).start()
threading.Event().wait()
"""
"""The hostile shard, a process of its own: deep bodies, wide bodies and refused calls from 3 threads."""


def _under_flood(bench: Bench, hostile: Path, launch: Callable[[int], object]) -> tuple[list[float], list[float], int]:
    """Launch timings with the hostile shard quiet and flooding, alternated; run 0 warms up."""
    quiet: list[float] = []
    flooded: list[float] = []
    counter = [0]
    held: list[socket.socket] = []
    for _ in range(100):
        sock = socket.socket(socket.AF_UNIX)
        sock.connect(str(hostile))
        sock.sendall(b"POST /v1.41/containers/create HTTP/1.1\r\nHost: d\r\n")
        held.append(sock)
    try:
        for i in range(bench.settings.job_runs + 1):
            for flooding in (True, False) if i % 2 == 0 else (False, True):
                flooder = (
                    subprocess.Popen(
                        [sys.executable, "-c", FLOOD, str(hostile)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
                    )
                    if flooding
                    else None
                )
                time.sleep(0.5 if flooding else 0)
                started = time.perf_counter()
                launch(i)
                elapsed = (time.perf_counter() - started) * 1000
                if flooder is not None:
                    flooder.kill()
                    counter[0] += len((flooder.communicate(timeout=10)[0] or b"").splitlines())
                if i:
                    (flooded if flooding else quiet).append(elapsed)
    finally:
        for sock in held:
            sock.close()
    return quiet, flooded, counter[0]
