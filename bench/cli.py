"""The one benchmark command: run every benchmark, print the table, write JSON and RESULTS.md."""

from __future__ import annotations

import os
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from string import ascii_lowercase

import click

from bench.core import REPO_ROOT, Bench, Row, Settings
from bench.guard import bench_guard
from bench.inproc import bench_checks, bench_preflight, bench_routing
from bench.jobs import bench_jobs
from bench.lease import bench_lease
from bench.limits import bench_limits
from bench.machine import machine_details
from bench.metrics import bench_events, bench_metrics
from bench.phases import bench_phases
from bench.report import table, write_json, write_markdown
from bench.usage import bench_usage
from bench.volumes import bench_volumes
from bench.watch import bench_watch
from bench.workers import bench_heal, bench_refusal, bench_startup

__all__ = ["SUITES", "main"]

Suite = tuple[str, Callable[[Bench], list[Row]], tuple[tuple[str, str], ...]]

SUITES: tuple[Suite, ...] = (
    ("checks", bench_checks, (("1", "All startup checks"),)),
    ("startup", bench_startup, (("2", "Worker start to consuming its shard queue"), ("8", "Resident memory added"))),
    ("preflight", bench_preflight, (("3a", "Per-task pre-flight, cached"), ("3b", "Per-task pre-flight, uncached"))),
    (
        "routing",
        bench_routing,
        (("4a", "Routing decisions/s"), ("4b", "Shard balance"), ("4c", "Moved fraction 3 -> 4")),
    ),
    ("jobs", bench_jobs, (("5", "Job container through the guarded client"),)),
    ("heal", bench_heal, (("6", "auth.json landing, to the gate open"),)),
    ("refusal", bench_refusal, (("7", "Second worker on a claimed volume, to its refusal"),)),
    ("phases", bench_phases, (("9a", "Codex phase through the agent"), ("9b", "Phases under forced refreshes"))),
    (
        "watch",
        bench_watch,
        (
            ("10a", "Volume chmod on an open shard, to the gate closed"),
            ("10b", "Login landing on a closed shard, to the gate opened"),
        ),
    ),
    (
        "lease",
        bench_lease,
        (
            ("11a", "Fleet duplicate refused"),
            ("11b", "Lease freed after kill -9, RabbitMQ"),
            ("11c", "Lease freed after kill -9, Redis"),
            ("11d", "Startup with the fleet lease"),
        ),
    ),
    (
        "metrics",
        bench_metrics,
        (
            ("12a", "Per-task metrics overhead"),
            ("12b", "Metrics scrape latency"),
            ("12c", "Resident memory added by the metrics"),
        ),
    ),
    ("events", bench_events, (("12d", "Celery task events on, per task"),)),
    (
        "guard",
        bench_guard,
        (
            ("13", "Job launch through the Docker API guard"),
            ("13b", "Job launch through the guard while another shard floods it"),
        ),
    ),
    ("usage", bench_usage, (("14a", "Usage snapshot read per job"), ("14b", "Usage reset time, to the re-check"))),
    (
        "limits",
        bench_limits,
        (("14c", "Usage limit met, to the gate closed"), ("14d", "Usage reset, to the held phase started")),
    ),
    ("volumes", bench_volumes, (("14e", "codex-agent volumes over 34 volumes"),)),
)
"""Name, function and the rows it produces (id, short name), in the order they run."""

_ORDER = sorted(
    (row_id for _, _, rows in SUITES for row_id, _ in rows), key=lambda i: (int(i.rstrip(ascii_lowercase)), i)
)
"""Rows in the table by number (1, 2, 3a, 3b, …), whichever suite makes them."""
FINDINGS = Path(__file__).with_name("FINDINGS.md")


def _components(broker: str, backend: str) -> dict[str, str]:
    """Find the Codex CLI, the brokers and the images, or exit naming what is absent."""
    import docker

    from testkit import find_codex_bin, require_port

    codex = find_codex_bin()
    if codex is None:
        raise click.ClickException("Codex CLI absent: set CODEX_BIN or run scripts/provision.sh")
    if os.geteuid() != 0:
        raise click.ClickException("run as root: the benchmarks bind-mount Docker volumes at CODEX_HOME")
    for url, name in ((broker, "RabbitMQ/broker"), (backend, "Redis")):
        try:
            require_port(url, name)
        except BaseException as e:  # pytest's Skipped is a BaseException
            raise click.ClickException(str(e)) from None
    client = docker.from_env()
    try:
        client.ping()
        found = {tag for image in client.images.list() for tag in image.tags}
    finally:
        client.close()
    images = {"job": "codex-worker-agent/job:dev", "busybox": "codex-worker-agent/busybox:dev"}
    if not set(images.values()) <= found:
        from testkit import build_images

        built = build_images()
        images = {"job": built.job, "busybox": built.busybox}
    return {"codex_bin": str(codex), **images}


def _failed_rows(suite: Suite, error: str) -> list[Row]:
    return [Row(id=i, what=f"{what} (FAILED)", unit="", samples=[], details={"error": error}) for i, what in suite[2]]


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--quick", is_flag=True, help="Tiny counts (seconds, for the smoke test); figures are not meaningful.")
@click.option("--only", default="", help="Comma-separated suites: " + ",".join(s[0] for s in SUITES) + ".")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path(__file__).parent,
    show_default=True,
    help="Where results.json and RESULTS.md go.",
)
@click.option(
    "--broker",
    default=lambda: os.environ.get("BENCH_BROKER_URL", "amqp://guest:guest@localhost:5672//"),
    show_default="amqp://guest:guest@localhost:5672//",
    help="Celery broker (env BENCH_BROKER_URL).",
)
@click.option(
    "--backend",
    default=lambda: os.environ.get("BENCH_BACKEND_URL", "redis://localhost:6379/1"),
    show_default="redis://localhost:6379/1",
    help="Result backend (env BENCH_BACKEND_URL).",
)
def cli(quick: bool, only: str, out_dir: Path, broker: str, backend: str) -> None:
    """Run every benchmark of the codex worker agent against its baseline."""
    from agent.telemetry.audit import configure_logging

    wanted = {name.strip() for name in only.split(",") if name.strip()}
    unknown = wanted - {s[0] for s in SUITES}
    if unknown:
        raise click.BadParameter(f"unknown suite(s): {', '.join(sorted(unknown))}", param_hint="--only")
    components = _components(broker, backend)
    devnull = open(os.devnull, "w")  # noqa: SIM115  (the agent's own log lines, in this process)
    configure_logging("INFO", stream=devnull)
    settings = Settings.tiny() if quick else Settings.full()
    bench = Bench(
        settings,
        codex_bin=components["codex_bin"],
        broker_url=broker,
        backend_url=backend,
        job_image=components["job"],
        busybox_image=components["busybox"],
    )
    started = time.monotonic()
    rows: list[Row] = []
    failures = 0
    try:
        machine = machine_details(bench.codex_bin, bench.docker, broker)
        for suite in SUITES:
            name, run, _ = suite
            if wanted and name not in wanted:
                continue
            click.echo(f"[bench] {name} ...", err=True)
            suite_started = time.monotonic()
            try:
                rows += run(bench)
            except Exception as e:  # noqa: BLE001  (one broken benchmark must not hide the others)
                failures += 1
                click.echo(traceback.format_exc(), err=True)
                rows += _failed_rows(suite, f"{type(e).__name__}: {e}"[:2000])
            click.echo(f"[bench] {name} done in {time.monotonic() - suite_started:.1f} s", err=True)
    finally:
        bench.close()
    rows.sort(key=lambda r: _ORDER.index(r.id) if r.id in _ORDER else len(_ORDER))
    command = "python -m bench" + " --quick" * quick + (f" --only {only}" if only else "")
    run_info = {
        "command": command,
        "mode": "quick" if quick else "full",
        "duration_s": round(time.monotonic() - started, 1),
        "settings": settings.to_dict(),
        "machine": {**machine, "load_average_at_end": [round(x, 2) for x in os.getloadavg()]},
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "results.json", run_info, rows)
    findings = FINDINGS.read_text() if FINDINGS.exists() else None
    write_markdown(out_dir / "RESULTS.md", run_info, rows, findings)
    click.echo(table(rows))
    click.echo(f"\nwrote {out_dir / 'results.json'} and {out_dir / 'RESULTS.md'}")
    if failures:
        sys.exit(1)


def main() -> None:
    """Entry point of ``python -m bench`` and ``bench/run``."""
    os.chdir(REPO_ROOT)
    cli(prog_name="python -m bench")
