"""Rows 9a/9b: real Codex phases against the OpenAI stand-in.

9a: a phase through the agent (``CodexPhase``: the guarded launcher, workspace volume, artifacts,
stream reading) against the same ``codex exec --json`` in a raw ``containers.run``, same image,
volume, workspace and stand-in, sides alternated. 9b: phases that each start inside Codex's
refresh window (access tokens living 305 s, phases 5.5 s apart), so every one refreshes: N/N must
complete on the one login, with the stand-in counting N refreshes and 0 reuses.
"""

from __future__ import annotations

import tempfile
import time
from typing import Any

from bench.core import Bench, Row, median

__all__ = ["bench_phases"]

JOB_HOME = "/home/app/.codex"
REFRESH_TTL = 305.0
IN_WINDOW_AFTER_S = 5.5


def _raw_phase(
    client: Any, image: str, volume: str, workspace: str, refresh_url: str, prompt: str, sandboxed: bool = False
) -> None:
    """What task code would write without the agent: the same job, no guard, no artifacts.

    ``sandboxed`` adds the job sandbox's secure defaults (``agent.settings.sandbox``: read-only root, a tmpfs
    ``/tmp``, an init, limits, no capabilities), which the agent imposes on every job: the third
    side of row 9a, to tell the sandbox's cost from the agent's own.
    """
    from agent.settings.sandbox import TMP_PATH, Sandbox

    sandbox = Sandbox()
    extra: dict[str, Any] = {**sandbox.run_options(), "tmpfs": {TMP_PATH: sandbox.tmpfs_options}} if sandboxed else {}
    client.containers.run(  # raises ContainerError unless codex exits 0
        image,
        ["codex", "exec", "--json", "--skip-git-repo-check", "-C", "/workspace", prompt],
        volumes={volume: {"bind": JOB_HOME, "mode": "rw"}, workspace: {"bind": "/workspace", "mode": "rw"}},
        environment={"CODEX_HOME": JOB_HOME, "CODEX_REFRESH_TOKEN_URL_OVERRIDE": refresh_url},
        user="1000:1000",
        network_mode="host",
        labels={"cwa.test": "1"},
        remove=True,
        stdout=True,
        stderr=True,
        **extra,
    )


def bench_phases(bench: Bench) -> list[Row]:
    """Both rows; every volume, workspace and container is removed afterwards."""
    from agent.jobs.launcher import JobLauncher
    from agent.jobs.phase import CodexPhase
    from agent.jobs.policy import workspace_name
    from agent.settings.config import load
    from openai_standin import StandIn, login_files
    from testkit import VolumeFactory

    artifacts = tempfile.mkdtemp(prefix="bench-artifacts-")
    make_volume = VolumeFactory(bench.docker, bench.cleanup, bench.busybox_image)
    runs = max(1, bench.settings.job_runs)
    workspaces: list[str] = []
    with StandIn() as standin:
        config = load(
            {
                "CODEX_SHARD_INDEX": "1",
                "AGENT_WORKER_NAME": f"bench-{bench.run_id}",
                "CODEX_JOB_NETWORK": "host",
                "CODEX_ARTIFACTS_ROOT": artifacts,
                "CODEX_JOB_IMAGE": bench.job_image,
                "CODEX_REFRESH_TOKEN_URL_OVERRIDE": standin.refresh_url,
            }
        )

        def logged_in(name: str, ttl: float | None) -> tuple[str, str]:
            volume = make_volume(name).name
            tokens = standin.authority.mint(access_ttl=ttl)
            login_files(tokens, standin.url).put_into_volume(bench.docker, bench.job_image, volume)
            return volume, tokens.family

        def phase(volume: str, run_id: str) -> dict[str, Any]:
            workspaces.append(workspace_name(volume, run_id))
            context = {
                "queue": "codex-1",
                "shard": 1,
                "volume": volume,
                "worker": "bench",
                "run_id": run_id,
                "task_id": run_id,
            }
            launcher = JobLauncher(bench.docker, config, volume, context)
            return CodexPhase(launcher).run(run_id=run_id, phase="p", prompt="bench", task_id=run_id)

        volume, _ = logged_in("bench_phase", None)
        agent_ms: list[float] = []
        raw_ms: list[float] = []
        sandboxed_ms: list[float] = []
        timings = {"agent": agent_ms, "raw": raw_ms, "sandboxed": sandboxed_ms}
        for i in range(runs + 1):  # run 0 of each side warms up and is dropped
            run_id = f"bench-{bench.run_id}-{i}"
            sides = ["agent", "raw", "sandboxed"][i % 3 :] + ["agent", "raw", "sandboxed"][: i % 3]
            for side in sides:
                started = time.perf_counter()
                if side == "agent":
                    phase(volume, f"{run_id}-a")
                else:
                    workspaces.append(workspace_name(volume, f"{run_id}-{side}"))
                    _raw_phase(
                        bench.docker,
                        bench.job_image,
                        volume,
                        workspaces[-1],
                        standin.refresh_url,
                        "bench",
                        sandboxed=side == "sandboxed",
                    )
                if i:
                    timings[side].append((time.perf_counter() - started) * 1000)

        refresh_volume, family = logged_in("bench_refresh", REFRESH_TTL)
        refresh_runs = max(1, runs // 6)
        completed = 0
        for i in range(refresh_runs):
            time.sleep(IN_WINDOW_AFTER_S)
            completed += phase(refresh_volume, f"bench-{bench.run_id}-refresh-{i}")["status"] == "completed"
        stats = standin.authority.stats()[family]
    for name in workspaces:
        try:
            bench.docker.volumes.get(name).remove(force=True)
        except Exception:  # noqa: BLE001  (never created: the run failed before)
            pass
    paired = sorted(a / r for a, r in zip(agent_ms, raw_ms, strict=False))
    return [
        Row(
            id="9a",
            what="Codex phase through the agent (codex exec --json, guarded job)",
            unit="ms",
            samples=agent_ms,
            baseline_samples=raw_ms,
            baseline_label="the same codex exec in a raw `containers.run`",
            judged_label="ratio",
            target="ratio <= 1.05",
            test=lambda r: r <= 1.05,
            details={
                "paired_ratio_median": round(median(paired), 4),
                "sandboxed_raw_median_ms": round(median(sandboxed_ms), 1),
                "ratio_vs_sandboxed_raw": round(median(agent_ms) / median(sandboxed_ms), 4),
            },
            method=f"`codex exec --json` in {bench.job_image} against the stand-in on loopback (host network), same volume "
            "and a workspace volume per run on both sides; the agent side adds the policy, the sandbox's secure defaults, "
            "artifacts and stream reading. A third side, raw with the sandbox's options (read-only root, tmpfs /tmp, "
            "init, limits, no capabilities), tells the sandbox's cost from the agent's own (`ratio_vs_sandboxed_raw`).",
        ),
        Row(
            id="9b",
            what="Phases completed on one login under forced refreshes",
            unit="",
            samples=[float(completed)],
            judged=float(completed),
            judged_label=f"of {refresh_runs}",
            target=f"{refresh_runs}/{refresh_runs}, 0 reuse",
            test=lambda c: c == refresh_runs and stats.reuses == 0,
            details={
                "runs": refresh_runs,
                "refreshes": stats.refreshes,
                "reuses": stats.reuses,
                "model_calls": stats.model_calls,
                "login_made_again": 0,
            },
            method=f"access tokens living {REFRESH_TTL:.0f} s, each phase started {IN_WINDOW_AFTER_S} s after the previous "
            "refresh (inside Codex's 5-minute window), counted at the stand-in.",
        ),
    ]
