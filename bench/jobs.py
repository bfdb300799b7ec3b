"""Row 5: a job container through the guarded client vs the raw Docker SDK ``containers.run``."""

from __future__ import annotations

import time
from typing import Any

from bench.core import Bench, Row, median

__all__ = ["bench_jobs"]

COMMAND = ["codex", "login", "status"]
JOB_HOME = "/home/app/.codex"


def _raw_run(client: Any, image: str, volume: str) -> None:
    """What task code would write without the agent: the same image, command, volume, user, env."""
    client.containers.run(  # raises ContainerError unless the CLI exits 0 (logged in)
        image,
        COMMAND,
        volumes={volume: {"bind": JOB_HOME, "mode": "rw"}},
        environment={"CODEX_HOME": JOB_HOME},
        user="1000:1000",
        labels={"cwa.test": "1"},
        remove=True,
        stdout=True,
        stderr=True,
    )


def bench_jobs(bench: Bench) -> list[Row]:
    """JobLauncher.run and raw containers.run, alternated so drift hits both sides alike."""
    from agent.jobs.launcher import JobLauncher
    from agent.settings.config import load
    from testkit import VolumeFactory, make_api_key_login_in_volume

    volume = VolumeFactory(bench.docker, bench.cleanup, bench.busybox_image)("bench_job").name
    make_api_key_login_in_volume(bench.job_image, volume)
    config = load({"CODEX_SHARD_INDEX": "1", "AGENT_WORKER_NAME": f"bench-{bench.run_id}"})
    guarded: list[float] = []
    raw: list[float] = []
    for i in range(bench.settings.job_runs + 1):  # run 0 of each side warms up and is dropped
        context = {
            "queue": "codex-1",
            "shard": 1,
            "volume": volume,
            "worker": "bench",
            "run_id": f"bench-{bench.run_id}-{i}",
            "task_id": f"t{i}",
        }
        sides = [("guarded", guarded), ("raw", raw)] if i % 2 == 0 else [("raw", raw), ("guarded", guarded)]
        for side, out in sides:
            started = time.perf_counter()
            if side == "guarded":
                JobLauncher(bench.docker, config, volume, context).run(bench.job_image, COMMAND)  # E042 unless 0
            else:
                _raw_run(bench.docker, bench.job_image, volume)
            if i:
                out.append((time.perf_counter() - started) * 1000)
    paired = sorted(g / r for g, r in zip(guarded, raw, strict=False))
    return [
        Row(
            id="5",
            what="Job container through the guarded client (JobLauncher.run)",
            unit="ms",
            samples=guarded,
            baseline_samples=raw,
            baseline_label="raw docker SDK `containers.run`",
            judged_label="ratio",
            target="ratio <= 1.05",
            test=lambda r: r <= 1.05,
            details={"paired_ratio_median": round(median(paired), 4)},
            method=f"`{' '.join(COMMAND)}` in {bench.job_image} with a logged-in volume, create to removed, "
            "sides alternated, one client shared.",
        )
    ]
