"""``codex-agent volumes`` over 34 login volumes (issue 19, row 14e): one read-only inspection
container for the whole listing, against the per-volume way it replaced, in the same run.

The 34 volumes are this run's own (``codex_auth_<CODEX_IMAGE_TAG>_bench_<run>_<n>``, labelled
``codex.bench=<run>``) and are listed by name, so no other volume on the engine is read; they are
removed when the bench closes. Each holds an API-key login, a claim marker and a rollout with a rate-limit snapshot, so
both sides read what a fleet's volumes hold. The baseline is the path before issue 19: per volume,
one container of the job image runs ``codex login status`` with the volume at ``CODEX_JOB_HOME``,
then ``auth.json`` and the three markers are read through the archive API, four volumes at a time.
"""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import docker.errors

from bench.core import Bench, Row, median

__all__ = ["bench_volumes"]

VOLUMES = 34
QUICK_VOLUMES = 4
"""``--quick`` (the suite's smoke test) lists this many: the figures mean nothing there anyway."""
_ROLLOUT = json.dumps(
    {
        "timestamp": "2026-12-01T21:12:05.838Z",
        "type": "event_msg",
        "payload": {
            "type": "token_count",
            "rate_limits": {
                "primary": {"used_percent": 42.5, "window_minutes": 300, "resets_at": 1796177521},
                "secondary": {"used_percent": 91.0, "window_minutes": 10080, "resets_at": 1796764321},
            },
        },
    }
)


def _count(bench: Bench) -> int:
    return QUICK_VOLUMES if bench.settings.quick else VOLUMES


def _make_volumes(bench: Bench) -> list[str]:
    """34 volumes of this run, each a login with a claim marker and a rollout (one container plants all)."""
    from testkit import run_once

    tag = os.environ.get("CODEX_IMAGE_TAG", "dev")
    names = [f"codex_auth_{tag}_bench_{bench.run_id}_{n:02d}" for n in range(_count(bench))]
    for name in names:
        bench.docker.volumes.create(name, labels={"codex.auth": "1", "codex.bench": bench.run_id, "cwa.test": "1"})
        bench.cleanup.volume(name)
    script = ["set -e"]
    now = time.time()
    for n in range(_count(bench)):
        auth = json.dumps({"auth_mode": "apikey", "OPENAI_API_KEY": f"sk-bench-{bench.run_id}-{n:02d}-0123456789"})
        claim = json.dumps(
            {
                "claim_id": "c" * 32,
                "worker": f"bench-{n}",
                "container_id": "ab" * 32,
                "hostname": "h",
                "boot_id": "b",
                "pid": 7,
                "process_start": now,
                "shard": n,
                "volume": names[n],
                "claimed_at": now,
                "heartbeat": now,
            }
        )
        day = f"/v{n}/sessions/2026/12/01"
        script += [
            f"mkdir -p {day}",
            f"printf '%s' '{auth}' > /v{n}/auth.json",
            f"printf '%s' '{claim}' > /v{n}/.codex-agent-claim.json",
            f"printf '%s\\n' '{_ROLLOUT}' > {day}/rollout-2026-12-01T21-12-05-bench.jsonl",
            f"chown -R 1000:1000 /v{n}",
            f"chmod 700 /v{n}",
        ]
    code, output = run_once(
        bench.docker,
        bench.cleanup,
        bench.busybox_image,
        ["sh", "-c", "; ".join(script)],
        volumes={name: f"/v{n}" for n, name in enumerate(names)},
        user="0:0",
    )
    if code != 0:
        raise RuntimeError(f"planting the bench volumes failed: {output[-500:]}")
    return names


def _per_volume(client: Any, image: str, name: str, home: str) -> tuple[int, int]:
    """The path before issue 19, for one volume: a container, then the archive reads; removed after."""
    container = client.containers.create(
        image,
        ["codex", "login", "status"],
        entrypoint=[],
        user="1000:1000",
        environment={"CODEX_HOME": home, "NO_COLOR": "1"},
        volumes=[f"{name}:{home}:rw"],
        labels={"codex.purpose": "inspect", "codex.volume": name},
        network_mode="none",
    )
    try:
        container.start()
        code = int(container.wait(timeout=30).get("StatusCode", -1))
        container.logs(stdout=True, stderr=True)
        read = 0
        for file in ("auth.json", ".codex-agent-claim.json", ".codex-agent-revoked.json", ".codex-agent-limited.json"):
            try:
                chunks, _ = container.get_archive(f"{home}/{file}")
                read += len(b"".join(chunks)) > 0
            except docker.errors.NotFound:
                pass
        return code, read
    finally:
        container.remove(force=True)


def bench_volumes(bench: Bench) -> list[Row]:
    """Row 14e: ``list_volumes`` over 34 volumes, against one container per volume (four at a time)."""
    from agent.settings.config import load
    from agent.volume.inventory import list_volumes

    names = _make_volumes(bench)
    config = load({"HOME": str(bench.tmp), "CODEX_LOGIN_CHECK_IMAGE": bench.job_image})
    runs = 1 if bench.settings.quick else 7
    count = _count(bench)
    new: list[float] = []
    old: list[float] = []
    for _ in range(runs):  # sides alternated: load drifts on this machine
        started = time.perf_counter()
        report = list_volumes(bench.docker, config, names)
        new.append(time.perf_counter() - started)
        rows = [v.to_dict() for v in report.volumes]
        if len(rows) != count or not all(
            r["logged_in"] and r["holder"]["worker"] == f"bench-{n}" and r["usage"]["5h_used_percent"] == 42.5
            for n, r in enumerate(rows)
        ):
            raise RuntimeError("the one-container listing misread a bench volume")
        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=4) as pool:
            done = list(pool.map(lambda n: _per_volume(bench.docker, bench.job_image, n, config.job_home), names))
        old.append(time.perf_counter() - started)
        if not all(code == 0 and read == 2 for code, read in done):
            raise RuntimeError(f"the per-volume baseline failed: {done[:3]}")
    return [
        Row(
            id="14e",
            what=f"`codex-agent volumes` over {count} volumes (one read-only inspection container)",
            unit="s",
            samples=new,
            baseline_samples=old,
            baseline_label="one container per volume, four at a time (the path before issue 19)",
            target="<= 1.5 s",
            test=lambda v: v <= 1.5,
            details={"volumes": count, "new_per_volume_ms_median": round(median(new) / count * 1000, 1)},
            method=f"agent.volume.inventory.list_volumes on {count} volumes of this run (API-key login, claim marker, a "
            "rollout each), end to end (volume listing, the container, parsing, the users' listing); the baseline "
            "creates, runs, reads (logs + 4 archive reads) and removes one container per volume, 4 at a time; "
            "sides alternated, same job image.",
        )
    ]
