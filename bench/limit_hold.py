"""The usage-limit hold at the issue's scale: 3 shards, one login limited until a reset minutes away.

``python -m bench.limit_hold [--hold 150] [--held 5] [--every 10] [--broker both|rabbitmq|redis]
[--variant both|protected|unprotected] [--out DIR]``

Not a row of ``bench/run`` (it measures no speed) and not part of the suite, which runs the same hold
smaller (``tests/integration/test_usage_limits.py``: 2 workers, a 75 s reset). Everything is its
own: a broker and a Redis (results) of the run (:mod:`testkit.private_brokers`), the OpenAI
stand-in, one volume, guard and worker container per shard (:class:`testkit.phases.PhaseLab`), the
workers' default retries (2, after 30 s and 60 s).

Shard 2's login answers every model call with HTTP 429 ``usage_limit_reached`` until ``--hold``
seconds from the start. ``--held`` phases go to shard 2; one phase goes to each of shards 0 and 1
every ``--every`` seconds until the held ones are done. Reported per broker and variant: the held
phases completed, failed and run twice; ``link_error`` calls (``codex.run.failed``) and retries
(``codex.run.retrying``) on shard 2; the code of its closed gate and whether its message names the
reset; the first held phase's start and the last one's end after the reset; the other shards'
phases completed and failed during the hold. ``unprotected`` is the same run on a shard-2 worker
that does not tell a usage limit from a failed job (:data:`testkit.phases.UNCLASSIFIED_LIMIT_SITE`).

Writes ``limit_hold.json`` in ``--out`` (``bench/`` by default) and prints the table.
"""

from __future__ import annotations

import json
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import click

from bench.core import REPO_ROOT

__all__ = ["main", "run_hold"]

LIMITED = 2
"""The shard whose login is at its limit; 0 and 1 keep working."""

VISIBILITY = {"CELERY_VISIBILITY_TIMEOUT": "21600"}
"""The product's default, not the lab's 30 s (made for kill tests): on Redis a retry waits unacked
for its countdown (60 s for the last), and a shorter timeout runs it twice."""


def _ended(result: Any) -> str | None:
    if not result.ready():
        return None
    if not result.successful():
        return "failed"
    return "completed" if result.get()["job"]["status"] == "completed" else "failed"


def run_hold(images: Any, broker_kind: str, protected: bool, hold: float, held: int, every: float) -> dict[str, Any]:
    """One hold on ``images`` (``testkit.dockerkit.build_images()``); returns its figures."""
    import docker

    import worker_entry.tasks  # noqa: F401  (the publisher knows codex.phase and codex.run_failed)
    from agent.login import usage
    from agent.settings.config import load
    from openai_standin import StandIn
    from testkit.phases import UNCLASSIFIED_LIMIT_SITE, PhaseLab
    from testkit.private_brokers import PrivateRabbitMQ, PrivateRedis
    from testkit.workers import keys_for_shard
    from worker_entry.app import create_app

    client = docker.from_env()
    tag = uuid.uuid4().hex[:6]
    scratch = Path(tempfile.mkdtemp(prefix="cwa-hold-"))
    results_store = PrivateRedis(scratch)
    rabbit = PrivateRabbitMQ() if broker_kind == "rabbitmq" else None
    results_store.start()
    if rabbit is not None:
        rabbit.start()
    broker_url = rabbit.url if rabbit is not None else results_store.url
    backend_url = results_store.url.rsplit("/", 1)[0] + "/1"
    try:
        with StandIn() as standin:
            lab = PhaseLab(client, standin, images.worker, images.job)
            try:
                homes = [lab.shard(i) for i in range(3)]
                site = {} if protected else lab.site("unclassified-limit-site", UNCLASSIFIED_LIMIT_SITE)
                workers = [
                    lab.ready_worker(
                        home, broker_url, backend_url, **VISIBILITY, **(site if home.index == LIMITED else {})
                    )
                    for home in homes
                ]
                publisher = create_app(load({"CELERY_BROKER_URL": broker_url}), result_backend=backend_url)

                def send(key: str, run_id: str) -> Any:
                    kwargs = {"affinity_key": key, "run_id": run_id, "phase": "plan", "prompt": f"Plan {run_id}."}
                    return publisher.send_task(
                        "codex.phase", kwargs=kwargs, link_error=publisher.signature("codex.run_failed")
                    )

                reset = time.time() + hold
                standin.usage.limit(homes[LIMITED].tokens.family, reset)  # type: ignore[union-attr]
                held_runs = {
                    f"cwa-hold-{tag}-{i}": send(key, f"cwa-hold-{tag}-{i}")
                    for i, key in enumerate(keys_for_shard(LIMITED, held, prefix=tag))
                }
                others: dict[str, Any] = {}
                closed: dict[str, Any] | None = None
                next_send, rounds = time.time(), 0
                deadline = reset + 300
                while time.time() < deadline and any(_ended(r) is None for r in held_runs.values()):
                    if time.time() >= next_send:
                        for shard in (0, 1):
                            run_id = f"cwa-other-{tag}-{shard}-{rounds}"
                            others[run_id] = send(keys_for_shard(shard, 1, prefix=f"{tag}{rounds}")[0], run_id)
                        rounds, next_send = rounds + 1, next_send + every
                    if closed is None:
                        state = workers[LIMITED].status().get("state") or {}
                        if state.get("gate") == "closed" and state.get("reason"):
                            closed = state["reason"][0]
                    time.sleep(0.5)
                outcomes = {run_id: _ended(r) or "lost" for run_id, r in held_runs.items()}
                jobs = [r.get()["job"] for r in held_runs.values() if _ended(r) == "completed"]
                for result in others.values():
                    while not result.ready() and time.time() < deadline + 120:
                        time.sleep(0.5)
                other_outcomes = [_ended(r) or "lost" for r in others.values()]
                limited = workers[LIMITED]
                audits = [limited.events("codex.run.audit", run_id=run_id) for run_id in held_runs]
                figures = {
                    "broker": broker_kind,
                    "variant": "protected" if protected else "unprotected",
                    "hold_s": hold,
                    "held": held,
                    "held_completed": sum(o == "completed" for o in outcomes.values()),
                    "held_failed": sum(o == "failed" for o in outcomes.values()),
                    "held_lost": sum(o == "lost" for o in outcomes.values()),
                    "held_run_twice": sum(len({a["task_id"] for a in found}) > 1 for found in audits),
                    "link_error_calls": len(limited.events("codex.run.failed")),
                    "retries": len(limited.events("codex.run.retrying")),
                    "requeued_at_limit": len(limited.events("codex.run.requeued", code="CODEX-E036")),
                    "gate_code": closed.get("code") if closed else None,
                    "gate_names_reset": bool(closed and usage.utc(int(reset)) in str(closed.get("message"))),
                    "first_start_after_reset_s": (
                        round(min(j["started_at"] for j in jobs) - reset, 2) if jobs else None
                    ),
                    "last_end_after_reset_s": (
                        round(max(j["completed_at"] for j in jobs) - reset, 2)
                        if jobs and all(j.get("completed_at") for j in jobs)
                        else None
                    ),
                    "other_phases": len(other_outcomes),
                    "other_completed": other_outcomes.count("completed"),
                    "other_failed": other_outcomes.count("failed") + other_outcomes.count("lost"),
                    "refused_429": standin.usage.refusals.get(homes[LIMITED].tokens.family, 0),  # type: ignore[union-attr]
                }
            finally:
                lab.close()
    finally:
        if rabbit is not None:
            rabbit.close()
        results_store.close()
    return figures


COLUMNS = (
    ("broker", "broker"),
    ("variant", "variant"),
    ("held_completed", "held done"),
    ("held_failed", "failed"),
    ("held_run_twice", "twice"),
    ("link_error_calls", "link_error"),
    ("retries", "retries"),
    ("gate_code", "gate"),
    ("first_start_after_reset_s", "1st start s"),
    ("last_end_after_reset_s", "last end s"),
    ("other_completed", "others done"),
    ("other_failed", "others failed"),
)


def table(runs: list[dict[str, Any]]) -> str:
    """The runs as a plain text table, one row per broker and variant."""
    rows = [[label for _, label in COLUMNS]]
    rows += [["-" if run.get(key) is None else str(run[key]) for key, _ in COLUMNS] for run in runs]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows)


@click.command()
@click.option("--hold", type=click.FloatRange(min=30), default=150.0, show_default=True, help="Seconds to the reset.")
@click.option(
    "--held", type=click.IntRange(min=1), default=5, show_default=True, help="Phases sent to the limited shard."
)
@click.option("--every", type=click.FloatRange(min=1), default=10.0, show_default=True, help="Seconds between others.")
@click.option("--broker", type=click.Choice(["both", "rabbitmq", "redis"]), default="both", show_default=True)
@click.option("--variant", type=click.Choice(["both", "protected", "unprotected"]), default="both", show_default=True)
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=REPO_ROOT / "bench")
def main(hold: float, held: int, every: float, broker: str, variant: str, out_dir: Path) -> None:
    """Hold a limited shard's phases to the reset while the other shards work; print what happened."""
    from testkit.dockerkit import build_images

    images = build_images()
    runs = []
    for kind in ("rabbitmq", "redis") if broker == "both" else (broker,):
        for protected in (True, False) if variant == "both" else (variant == "protected",):
            click.echo(f"[limit-hold] {kind} {'protected' if protected else 'unprotected'} ...", err=True)
            runs.append(run_hold(images, kind, protected, hold, held, every))
            click.echo(json.dumps(runs[-1]), err=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "limit_hold.json").write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "runs": runs}, indent=2))
    click.echo(table(runs))


if __name__ == "__main__":
    main()
