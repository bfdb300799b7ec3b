"""Row 13: a job launch through the Docker API guard vs the same launch on the real socket.

Both sides run ``JobLauncher.run`` of ``codex login status`` in the job image with the same logged-in
volume, config and sandbox; only the client differs: a plain docker SDK client on the shard's guard
endpoint (a real ``python -m agent.guard`` process) against one on the host's real socket. So the
ratio is what the guard costs a launch: its proxying, its create rewrite and its ownership checks.
"""

from __future__ import annotations

import time

from bench.core import Bench, Row, median

__all__ = ["bench_guard"]

COMMAND = ["codex", "login", "status"]


def bench_guard(bench: Bench) -> list[Row]:
    """Sides alternated so drift hits both alike; run 0 of each side warms up and is dropped."""
    from testkit import VolumeFactory, make_api_key_login_in_volume
    from testkit.guard import GuardProcess

    from agent.config import load
    from agent.jobs import JobLauncher

    volume = VolumeFactory(bench.docker, bench.cleanup, bench.busybox_image)("bench_guard").name
    make_api_key_login_in_volume(bench.job_image, volume)
    config = load({"CODEX_SHARD_INDEX": "1", "AGENT_WORKER_NAME": f"bench-{bench.run_id}"})
    guard = GuardProcess({1: volume})
    guarded_client = guard.client(1)
    try:
        guarded: list[float] = []
        raw: list[float] = []
        for i in range(bench.settings.job_runs + 1):
            context = {"queue": "codex-1", "shard": 1, "volume": volume, "worker": "bench",
                       "run_id": f"bench-guard-{bench.run_id}-{i}", "task_id": f"t{i}"}
            sides = [("guarded", guarded), ("raw", raw)] if i % 2 == 0 else [("raw", raw), ("guarded", guarded)]
            for side, out in sides:
                client = guarded_client if side == "guarded" else bench.docker
                started = time.perf_counter()
                JobLauncher(client, config, volume, context).run(bench.job_image, COMMAND)  # E042 unless 0
                if i:
                    out.append((time.perf_counter() - started) * 1000)
        created = len(guard.events("codex.guard.created"))
    finally:
        guarded_client.close()
        guard.close()
    paired = sorted(g / r for g, r in zip(guarded, raw))
    return [
        Row(id="13", what="Job launch through the Docker API guard (JobLauncher.run on the shard's endpoint)", unit="ms",
            samples=guarded, baseline_samples=raw, baseline_label="the same launch, raw docker SDK on the real socket",
            judged_label="ratio", target="ratio <= 1.05", test=lambda r: r <= 1.05,
            details={"paired_ratio_median": round(median(paired), 4), "guard_created_lines": created},
            method=f"`{' '.join(COMMAND)}` in {bench.job_image} with a logged-in volume, create to removed, sandbox on "
            "both sides, sides alternated; the guard is a separate process (python -m agent.guard).")
    ]
