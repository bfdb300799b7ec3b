"""The chaos soak: real Codex phases under worker kills and broker restarts, with and without the harvest.

``python -m bench.soak [--phases 24] [--shards 3] [--delay 6] [--chaos 8] [--variant both|harvest|unharvested]
[--out DIR]``

Not a row of ``bench/run`` (it measures no speed) and not part of the suite. Everything is its own:
a RabbitMQ node and a Redis (results) of the run (:mod:`testkit.private_brokers`), the OpenAI
stand-in, one volume, guard and worker container per shard (:class:`testkit.phases.PhaseLab`,
job containers on the host network). Each variant publishes ``--phases`` prompt phases (``codex
exec --json``, every model call answered after ``--delay`` seconds) spread over the shards, then
plays its chaos while they run:

* ``kill-exits-while-down``: SIGKILL a worker while a job of its runs; wait for the job to exit;
  restart the worker (same name, same guard);
* ``kill-back-while-running``: SIGKILL a worker while a job of its runs; restart it at once (whether
  the job still ran when the worker was back is recorded per kill);
* ``kill-after-job``: SIGKILL a worker right after one of its jobs logged ``codex.job.finished``;
* ``broker-restart``: stop and start the RabbitMQ node while jobs run.

Then it waits for every result and reads every worker's log (killed containers included):
completed, lost (no result by the deadline), failed, redelivered (a task id audited more than
once), skipped by the completion record, harvested, job containers left, and per phase the Codex
runs that *completed* (distinct job containers whose ``codex.job.finished`` says exit 0), with the
stand-in's model calls beside them. The ``unharvested`` variant is the same run on workers whose
harvest is turned off (:data:`testkit.phases.UNHARVESTED_SITE`): the test of the protection.

Writes ``soak.json`` and the soak section of ``RESULTS.md`` (between markers, kept by
``bench/run``) in ``--out`` (``bench/`` by default).
"""

from __future__ import annotations

import json
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import click

from bench.core import REPO_ROOT

__all__ = ["SOAK_BEGIN", "SOAK_END", "main", "run_variant", "soak_section"]

SOAK_BEGIN = "<!-- soak:begin -->"
SOAK_END = "<!-- soak:end -->"
PLAN = (
    "kill-exits-while-down",
    "broker-restart",
    "kill-back-while-running",
    "kill-after-job",
    "kill-exits-while-down",
    "kill-back-while-running",
    "broker-restart",
    "kill-after-job",
)
"""The chaos of a variant, in order; each kill goes to the next shard in turn."""


def _running_jobs(docker: Any, volume: str) -> list[Any]:
    return list(docker.containers.list(filters={"label": f"codex.volume={volume}", "status": "running"}))


def _wait(predicate: Any, timeout: float, step: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        time.sleep(step)
    return None


def run_variant(
    images: Any, harvest: bool, phases: int, shards: int, delay: float, deadline_s: float, chaos: int = len(PLAN)
) -> dict[str, Any]:
    """One soak run on ``images`` (``testkit.dockerkit.build_images()``); returns its figures and chaos."""
    import docker

    import worker_entry.tasks  # noqa: F401  (the publisher knows codex.phase)
    from agent.settings.config import load
    from openai_standin import Behaviour, StandIn
    from testkit.phases import UNHARVESTED_SITE, PhaseLab
    from testkit.private_brokers import PrivateRabbitMQ, PrivateRedis
    from testkit.workers import keys_for_shard
    from worker_entry.app import create_app

    client = docker.from_env()
    tag = f"{'h' if harvest else 'u'}{uuid.uuid4().hex[:4]}"
    scratch = Path(tempfile.mkdtemp(prefix="cwa-soak-"))
    broker, backend = PrivateRabbitMQ(), PrivateRedis(scratch)
    broker.start()
    backend.start()
    started = time.monotonic()
    timeline: list[dict[str, Any]] = []
    try:
        with StandIn() as standin:
            standin.script.default = Behaviour("delay", seconds=delay)
            lab = PhaseLab(client, standin, images.worker, images.job)
            try:
                env = {} if harvest else lab.site("unharvested-site", UNHARVESTED_SITE)
                homes = [lab.shard(i) for i in range(shards)]
                guards = [lab.guard(home) for home in homes]
                names = [f"cwa_soak_{tag}_{i}" for i in range(shards)]

                def start(i: int) -> Any:
                    return lab.ready_worker(
                        homes[i], broker.url, backend.url, guard=guards[i], AGENT_WORKER_NAME=names[i], **env
                    )

                workers = [start(i) for i in range(shards)]
                publisher = create_app(load({"CELERY_BROKER_URL": broker.url}), result_backend=backend.url)
                keys = [keys_for_shard(i, 1)[0] for i in range(shards)]
                results: dict[str, Any] = {}
                for n in range(phases):
                    run_id = f"cwa-soak-{tag}-{n:03d}"
                    results[run_id] = publisher.send_task(
                        "codex.phase",
                        kwargs={
                            "affinity_key": keys[n % shards],
                            "run_id": run_id,
                            "phase": "plan",
                            "prompt": f"soak phase of {run_id}.",
                        },
                    )
                targeted: set[str] = set()
                for step, kind in enumerate(PLAN[:chaos]):
                    i = step % shards
                    at = round(time.monotonic() - started, 1)
                    if kind == "broker-restart":
                        _wait(lambda: any(_running_jobs(client, h.volume) for h in homes), 60)
                        broker.stop()
                        broker.start()
                        timeline.append({"at_s": at, "event": kind})
                        continue
                    if kind == "kill-after-job":
                        seen = len(workers[i].events("codex.job.finished"))
                        _wait(lambda: len(workers[i].events("codex.job.finished")) > seen, 90, 0.05)
                        workers[i].container.kill()
                        workers[i] = start(i)
                        timeline.append({"at_s": at, "event": kind, "shard": i})
                        continue
                    job = _wait(lambda: [c for c in _running_jobs(client, homes[i].volume) if c.id not in targeted], 90)
                    if not job:
                        timeline.append({"at_s": at, "event": kind, "shard": i, "skipped": "no job ran"})
                        continue
                    container = job[0]
                    targeted.add(container.id)
                    workers[i].container.kill()
                    if kind == "kill-exits-while-down":
                        _wait(lambda: (container.reload(), container.status == "exited")[1], 120)
                    workers[i] = start(i)
                    container.reload()
                    timeline.append(
                        {
                            "at_s": at,
                            "event": kind,
                            "shard": i,
                            "job": container.id[:12],
                            "job_at_restart": container.status,
                        }
                    )
                deadline = time.monotonic() + deadline_s
                outcomes: dict[str, str] = {}
                for run_id, result in results.items():
                    while not result.ready() and time.monotonic() < deadline:
                        time.sleep(0.5)
                    outcomes[run_id] = (
                        "lost"
                        if not result.ready()
                        else "completed"
                        if result.successful() and result.get()["job"]["status"] == "completed"
                        else "failed"
                    )
                left = sum(
                    len(client.containers.list(all=True, filters={"label": f"codex.volume={h.volume}"})) for h in homes
                )
                lines = [line for worker in lab.workers for line in worker.lines()]
                calls = standin.script.calls()
            finally:
                lab.close()
    finally:
        broker.close()
        backend.close()
    return _figures(
        harvest, phases, shards, delay, outcomes, lines, calls, left, timeline, round(time.monotonic() - started, 1)
    )


def _figures(
    harvest: bool,
    phases: int,
    shards: int,
    delay: float,
    outcomes: dict[str, str],
    lines: list[dict[str, Any]],
    calls: list[Any],
    left: int,
    timeline: list[dict[str, Any]],
    seconds: float,
) -> dict[str, Any]:
    def of(event: str) -> list[dict[str, Any]]:
        return [line for line in lines if line.get("event") == event and str(line.get("run_id", "")) in outcomes]

    audits = Counter(str(line.get("task_id")) for line in of("codex.run.audit"))
    runs: dict[str, set[str]] = {run_id: set() for run_id in outcomes}
    for line in of("codex.job.finished"):
        if line.get("exit_code") == 0 and line.get("container_id"):
            runs[str(line["run_id"])].add(str(line["container_id"]))
    model_calls = {run_id: sum(1 for c in calls if any(f"{run_id}." in t for t in c.texts)) for run_id in outcomes}
    harvested = {
        str(line.get("container_id")) for line in of("codex.phase.harvested") if line.get("result") == "completed"
    }
    kills = [t for t in timeline if t["event"].startswith("kill")]
    tally = Counter(outcomes.values())
    return {
        "variant": "harvest" if harvest else "unharvested",
        "phases": phases,
        "shards": shards,
        "model_delay_s": delay,
        "seconds": seconds,
        "completed": tally["completed"],
        "lost": tally["lost"],
        "failed": tally["failed"],
        "redelivered": sum(1 for count in audits.values() if count > 1),
        "skipped_by_record": len({str(line.get("task_id")) for line in of("codex.phase.skipped")}),
        "harvested": len(harvested),
        "codex_runs_completed": sum(len(r) for r in runs.values()),
        "phases_completed_more_than_once": sum(1 for r in runs.values() if len(r) > 1),
        "phases_with_more_than_one_model_call": sum(1 for n in model_calls.values() if n > 1),
        "model_calls": len(calls),
        "acks_lost_lines": len(of("codex.ack.lost")),
        "critical_lines": sum(1 for line in lines if line.get("level") == "critical"),
        "job_containers_left": left,
        "worker_kills": len([k for k in kills if "skipped" not in k]),
        "broker_restarts": len([t for t in timeline if t["event"] == "broker-restart"]),
        "timeline": timeline,
    }


def soak_section(results: list[dict[str, Any]], when: str) -> str:
    """The RESULTS.md section of a soak run (a table per variant, then the chaos of each)."""
    rows = (
        "phases",
        "completed",
        "lost",
        "failed",
        "redelivered",
        "skipped_by_record",
        "harvested",
        "codex_runs_completed",
        "phases_completed_more_than_once",
        "phases_with_more_than_one_model_call",
        "model_calls",
        "acks_lost_lines",
        "critical_lines",
        "job_containers_left",
        "worker_kills",
        "broker_restarts",
        "seconds",
    )
    head = "| figure | " + " | ".join(r["variant"] for r in results) + " |"
    lines = [
        SOAK_BEGIN,
        "## Chaos soak (`python -m bench.soak`)",
        "",
        f"Run {when}: {results[0]['shards']} shards, prompt phases against the stand-in (every model "
        f"call answered after {results[0]['model_delay_s']} s), private RabbitMQ and Redis. Target: "
        "0 lost, 0 failed, **0 phases whose Codex run completed more than once** with the harvest; "
        "the unharvested variant is the test of the protection.",
        "",
        head,
        "|---|" + "---|" * len(results),
    ]
    lines += [f"| {row} | " + " | ".join(str(r[row]) for r in results) + " |" for row in rows]
    for r in results:
        lines += [
            "",
            f"Chaos of `{r['variant']}`: "
            + "; ".join(
                f"{t['at_s']} s {t['event']}"
                + (f" (shard {t['shard']}" if "shard" in t else "")
                + (f", job {t['job_at_restart']} at the restart" if "job_at_restart" in t else "")
                + (f", {t['skipped']}" if "skipped" in t else "")
                + (")" if "shard" in t else "")
                for t in r["timeline"]
            ),
        ]
    lines.append(SOAK_END)
    return "\n".join(lines)


def write_section(path: Path, section: str) -> None:
    """Put ``section`` in ``path`` in place of the previous soak section (or at its end)."""
    text = path.read_text() if path.exists() else ""
    if SOAK_BEGIN in text and SOAK_END in text:
        before, rest = text.split(SOAK_BEGIN, 1)
        text = before + section + rest.split(SOAK_END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(text)


@click.command()
@click.option("--phases", default=24, show_default=True, help="prompt phases per variant")
@click.option("--shards", default=3, show_default=True)
@click.option("--delay", default=6.0, show_default=True, help="seconds before each model reply")
@click.option("--variant", type=click.Choice(["both", "harvest", "unharvested"]), default="both", show_default=True)
@click.option("--chaos", default=len(PLAN), show_default=True, help="how many events of the plan to play")
@click.option("--deadline", default=240.0, show_default=True, help="seconds to wait for the results after the chaos")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=REPO_ROOT / "bench", show_default=True)
def main(phases: int, shards: int, delay: float, variant: str, chaos: int, deadline: float, out: Path) -> None:
    """Run the soak and write soak.json and the soak section of RESULTS.md."""
    from testkit.dockerkit import build_images

    variants = {"both": (True, False), "harvest": (True,), "unharvested": (False,)}[variant]
    images = build_images()
    results = []
    for harvest in variants:
        figures = run_variant(images, harvest, phases, shards, delay, deadline, chaos)
        print(json.dumps({k: v for k, v in figures.items() if k != "timeline"}), flush=True)
        results.append(figures)
    out.mkdir(parents=True, exist_ok=True)
    (out / "soak.json").write_text(json.dumps(results, indent=2) + "\n")
    write_section(out / "RESULTS.md", soak_section(results, time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())))


if __name__ == "__main__":
    main()
