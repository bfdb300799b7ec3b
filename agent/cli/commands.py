"""``codex-agent``: thin command line over the library.

Each command parses, calls the library and echoes; an AgentError it raises is shown once by click
with its code, fix and exit code (:mod:`agent.cli.clickext`).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any, cast

import click

from agent import __version__
from agent.cli.clickext import (
    VERSION_MESSAGE,
    AgentClickException,
    AgentGroup,
    import_app,
    json_option,
    mode_option,
    shards_option,
)
from agent.engine.client import client_from_env
from agent.engine.optional import client_for_mount_check
from agent.fleet.roster import FleetEntry, FleetReport, read_fleet
from agent.fleet.state import judge_health, read_state
from agent.login import usage
from agent.routing import drain as drain_mod
from agent.routing.drain import DrainReport
from agent.settings import config as config_mod
from agent.settings import topology
from agent.telemetry.audit import configure_logging
from agent.volume.inventory import VolumesReport, list_volumes
from agent.volume.transfer import export_login, import_login
from agent.worker.checks import Checker, CheckReport

__all__ = ["main", "cli"]


def _echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=False))


def _answer(report: Any, as_json: bool, echo_text: Any) -> None:
    """Echo a report as JSON (its ``to_dict()``) or through ``echo_text``."""
    if as_json:
        _echo_json(report.to_dict())
    else:
        echo_text(report)


def _echo_report(report: CheckReport) -> None:
    click.echo(f"shard {report.shard}  volume {report.volume}  queue {report.queue}  codex_home {report.codex_home}")
    for result in report.results:
        mark = "ok  " if result.ok else "FAIL"
        code = f" {result.code}" if result.code else ""
        click.echo(f"  {mark} {result.name:<6}{code} {result.message}")
        if result.remediation and not result.ok:
            click.echo(f"         fix: {result.remediation}")
        for warning in result.warnings:
            click.echo(f"  warn {result.name:<6} {warning.code} {warning.message}")
            click.echo(f"         fix: {warning.remediation}")
    click.echo("healthy" if report.ok else "UNHEALTHY")


@click.group(
    cls=AgentGroup,
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog="Exit codes: 0 done or healthy, 1 a failure the agent detected or unhealthy, "
    "2 bad usage or configuration (CODEX-E001).",
)
@click.version_option(__version__, "-V", "--version", prog_name="codex-agent", message=VERSION_MESSAGE)
def cli() -> None:
    """Codex worker agent: one login per volume, claimed, verified and gated."""
    # stdout carries the command's answer (often JSON); the agent's log lines go to stderr.
    configure_logging("CRITICAL", stream=sys.stderr)


@cli.command()
@json_option()
@click.pass_context
def check(ctx: click.Context, as_json: bool) -> None:
    """Run every check once here; exit 0 when healthy, 1 when not."""
    config = config_mod.load()
    checker = Checker(config, docker_client=client_for_mount_check(), accept_own_container=True)
    try:
        report = checker.run()
    finally:
        checker.claim.release()
    _answer(report, as_json, _echo_report)
    ctx.exit(0 if report.ok else 1)


@cli.command()
@json_option("state")
@click.option("--probe", is_flag=True, help="HEALTHCHECK mode: one line, exit 0 healthy, 1 not.")
@click.pass_context
def status(ctx: click.Context, as_json: bool, probe: bool) -> None:
    """Show the running agent's live state: gate, checks, claim, queue, shard, volume."""
    config = config_mod.load()
    state = read_state(config.state_dir)
    health = judge_health(state)
    if as_json:
        _echo_json({"healthy": health.healthy, "summary": health.summary, "state": state.to_dict() if state else None})
    elif probe or state is None:
        click.echo(health.summary)
    else:
        click.echo(health.summary)
        since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(state.gate_since))
        click.echo(
            f"  gate {state.gate} since {since}  queue {state.queue}  shard {state.shard}  volume {state.volume}"
        )
        if state.claim:
            click.echo(f"  claim {state.claim['holder']}")
        if state.usage:
            click.echo(f"  usage {_usage_line(state.usage)}")
        for reason in state.reason:
            click.echo(f"  {reason.get('code')} {reason.get('message')}")
            if reason.get("remediation"):
                click.echo(f"    fix: {reason['remediation']}")
    ctx.exit(0 if health.healthy else 1)


@cli.command()
@click.argument("key")
@shards_option
@mode_option
def route(key: str, shards: int | None, mode: str | None) -> None:
    """Print the queue an affinity KEY routes to (a run's first phase)."""
    config = config_mod.load()
    queues = topology.Topology(shards or config.shards, cast(topology.QueueMode, mode or config.queue_mode))
    click.echo(queues.route({topology.DEFAULT_AFFINITY_ARG: key}))


@cli.command("reshard-plan")
@click.option("--from", "old", type=click.IntRange(min=1), required=True, help="Current shard count.")
@click.option("--to", "new", type=click.IntRange(min=1), required=True, help="New shard count.")
@click.option(
    "--keys",
    "keys_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="File of affinity keys, one per line; lists each key that moves.",
)
@click.option(
    "--sample",
    type=click.IntRange(min=1),
    default=10000,
    show_default=True,
    help="Synthetic keys when --keys is absent.",
)
@json_option("plan")
def reshard_plan(old: int, new: int, keys_file: Path | None, sample: int, as_json: bool) -> None:
    """Say how many keys move, and which, when the shard count changes."""
    if keys_file is not None:
        keys = [line.strip() for line in keys_file.read_text().splitlines() if line.strip()]
    else:
        keys = [f"sample-key-{i}" for i in range(sample)]
    plan = topology.reshard_plan(keys, old, new)
    if as_json:
        _echo_json(plan.to_dict(with_moves=keys_file is not None))
        return
    source = str(keys_file) if keys_file else f"{sample} synthetic keys"
    click.echo(
        f"{old} -> {new} shards: {len(plan.moves)} of {plan.total} keys move ({plan.moved_fraction:.1%}) [{source}]"
    )
    if keys_file:
        queues = topology.Topology(max(old, new))
        for key, before, after in plan.moves:
            click.echo(f"  {key}: {queues.shard_queue(before)} -> {queues.shard_queue(after)}")


def _echo_volumes(report: VolumesReport) -> None:
    if not report.volumes:
        click.echo("no Codex auth volumes (label codex.auth=1 or name codex_auth_*)")
    click.echo(
        f"{'VOLUME':<28} {'LOGIN':<12} {'MODE':<8} {'AGE':>7} {'FINGERPRINT':<17} {'5H':>4} {'WEEKLY':>6} HOLDER"
    )
    for volume in report.volumes:
        login = volume.login["method"] if volume.logged_in else (volume.login.get("code") or "FAIL")
        if volume.revoked is not None:
            login = "CODEX-E034"
        age = volume.auth.credential_age_days()
        holder = volume.holder
        held = "-" if holder is None else f"{holder['holder']} ({'fresh' if holder.get('fresh') else 'stale'})"
        click.echo(
            f"{volume.name:<28} {login:<12} {volume.auth.auth_mode or '-':<8} "
            f"{'-' if age is None else f'{age:.1f}d':>7} {volume.auth.fingerprint or '-':<17} "
            f"{_percent(volume.usage, '5h'):>4} {_percent(volume.usage, 'weekly'):>6} {held}"
        )
        if not volume.logged_in:
            click.echo(f"  {volume.login.get('message')}")
        elif volume.revoked is not None:
            click.echo(
                f"  revoked during run {volume.revoked.get('run_id')} ({volume.revoked.get('reason')}); log this volume in again"
            )
        if volume.usage is not None and volume.usage.get("headroom"):
            click.echo(f"  usage {_usage_line({**volume.usage, 'limited': False})}")
        if volume.limited is not None:
            click.echo(
                f"  CODEX-E036 {volume.limited.get('window')} usage limit until {volume.limited.get('resets_at_utc')}; "
                "the gate reopens by itself then"
            )
    for warning in report.warnings:
        click.echo(f"warn {warning.code} {warning.message}")
        click.echo(f"  fix: {warning.remediation}")


@cli.command()
@click.argument("names", nargs=-1)
@json_option()
@click.option(
    "--prometheus",
    "as_prometheus",
    is_flag=True,
    help="Print the per-volume numbers in the Prometheus text format (for a textfile collector).",
)
@click.option("--image", default=None, help="Image of the inspection container (default CODEX_LOGIN_CHECK_IMAGE).")
def volumes(names: tuple[str, ...], as_json: bool, as_prometheus: bool, image: str | None) -> None:
    """List every Codex auth volume (or only NAMES): login, claim holder, credential age, usage."""
    config = config_mod.load()
    if image:
        config = dataclasses.replace(config, login_check_image=image)
    client = client_from_env({"shard": "-", "volume": "-"})
    report = list_volumes(client, config, names)
    if as_prometheus:
        from agent.telemetry.metrics import volumes_exposition

        click.echo(volumes_exposition(report), nl=False)
        return
    _answer(report, as_json, _echo_volumes)


def _echo_drain(report: DrainReport) -> None:
    verb = "would move" if report.dry_run else "moved"
    click.echo(
        f"{report.queue} -> {report.shards} shards: {verb} {len(report.moves)} task(s), {report.left} left in {report.queue}"
    )
    for queue, count in report.counts().items():
        click.echo(f"  {count:>6}  -> {queue}")
    if report.already_moved:
        verb = "would drop" if report.dry_run else "dropped"
        click.echo(f"{verb} {len(report.already_moved)} original(s) an earlier drain had already copied (journal)")


@cli.command()
@click.argument("queue")
@click.option("--broker", envvar="CELERY_BROKER_URL", default=None, help="Broker URL (default CELERY_BROKER_URL).")
@shards_option
@mode_option
@click.option(
    "--app",
    "app_path",
    default="worker_entry.app:app",
    show_default=True,
    help="Celery app (module:attr, imported from the current directory too) whose tasks, affinity "
    "arguments and task_default_queue place each task; a task it does not know stays queued (CODEX-E051).",
)
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Move at most this many tasks, then stop.")
@click.option("--dry-run", is_flag=True, help="Only say where each task would go; move nothing.")
@json_option()
def drain(
    queue: str,
    broker: str | None,
    shards: int | None,
    mode: str | None,
    app_path: str,
    limit: int | None,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Move the tasks waiting in a removed shard's QUEUE to where they route now.

    Each task is republished unchanged (same task id) with publisher confirms, journaled, and only
    then removed from QUEUE; on any error the drain stops and the rest stay queued (CODEX-E060).
    Running it again carries on without copying any task twice.
    """
    config = config_mod.load()
    app = import_app(app_path)
    report = drain_mod.drain(
        broker or config.broker_url,
        queue,
        shards=shards if shards is not None else config.shards,
        mode=cast(topology.QueueMode, mode or config.queue_mode),
        kinds=drain_mod.task_kinds_from_app(app),
        dry_run=dry_run,
        limit=limit,
        state_dir=config.state_dir,
        default_queue=app.conf.task_default_queue or "celery",
    )
    _answer(report, as_json, _echo_drain)
    if report.error is not None:  # after the report (what moved), why it stopped, on stderr
        raise AgentClickException(report.error, as_json=False)


def _echo_fleet(report: FleetReport) -> None:
    now = report.read_at
    click.echo(
        f"{'SHARD':<6} {'STATUS':<8} {'WORKER':<24} {'HOST':<20} {'GATE':<8} {'SINCE':>7} {'SEEN':>5}  VOLUME / WHY"
    )
    for row in report.rows:
        if not row.entries:
            click.echo(f"{row.shard:<6} {row.status:<8} -")
        for e in row.entries:
            why = ", ".join(e.codes) if e.codes else "-"
            click.echo(
                f"{row.shard:<6} {row.status:<8} {e.worker:<24} {e.host:<20} {e.gate:<8} "
                f"{now - e.gate_since:>6.0f}s {now - e.posted_at:>4.0f}s  {e.volume or '-'} / {why}{_usage_text(e)}"
            )
    for e in report.others:
        click.echo(f"{'-':<6} {'-':<8} {e.worker:<24} {e.host:<20} {e.gate:<8} (not a Codex worker)")
    opened = sum(row.status == "open" for row in report.rows)
    click.echo(f"{opened} of {len(report.rows)} shard(s) open (broker {report.broker})")
    if report.earliest_reset is not None:
        who = "every login is limited" if report.all_limited else "some logins are limited"
        click.echo(f"{who} (CODEX-E036); the earliest resets at {usage.utc(report.earliest_reset)}")


def _usage_line(view: dict[str, Any]) -> str:
    """``5h 42% (resets ...) weekly 91% (resets ...)``, and the limit of a limited login."""
    parts = []
    for name in ("5h", "weekly"):
        used, resets = view.get(f"{name}_used_percent"), view.get(f"{name}_resets_at")
        if isinstance(used, (int, float)):
            stamp = usage.utc(resets) if isinstance(resets, (int, float)) else "unknown"
            parts.append(f"{name} {used:.0f}% (resets {stamp})")
    limit = view.get("limit")
    if view.get("limited") and isinstance(limit, dict):
        parts.append(f"LIMITED until {limit.get('resets_at_utc')} (CODEX-E036)")
    return " ".join(parts) or "no snapshot yet"


def _percent(view: dict[str, Any] | None, name: str) -> str:
    """``42%`` of the window named ``5h`` or ``weekly`` (as ``codex-agent fleet`` shows it), or ``-``."""
    used = (view or {}).get(f"{name}_used_percent")
    return f"{used:.0f}%" if isinstance(used, (int, float)) else "-"


def _usage_text(entry: FleetEntry) -> str:
    """`` / 5h 42% weekly 91%`` and the reset time of a limited login; empty when nothing is known."""
    parts = [
        f"{name} {value:.0f}%"
        for name, value in (("5h", entry.used_5h), ("weekly", entry.used_weekly))
        if value is not None
    ]
    if entry.limited_until is not None:
        parts.append(f"limited until {usage.utc(entry.limited_until)}")
    return f" / {' '.join(parts)}" if parts else ""


@cli.command()
@click.option("--broker", envvar="CELERY_BROKER_URL", default=None, help="Broker URL (default CELERY_BROKER_URL).")
@shards_option
@json_option("fleet")
@click.pass_context
def fleet(ctx: click.Context, broker: str | None, shards: int | None, as_json: bool) -> None:
    """Show every shard's state across hosts, as the agents post it to the broker; exit 0 when all are open."""
    config = config_mod.load()
    report = read_fleet(broker or config.broker_url, shards if shards is not None else config.shards)
    _answer(report, as_json, _echo_fleet)
    ctx.exit(0 if report.ok else 1)


def _login_move(name: str, move: Any, help_text: str, done: str) -> None:
    """Declare ``codex-agent NAME BUNDLE [--json]`` over ``move(config, bundle)``; ``done`` formats its receipt."""

    @click.argument("bundle", type=click.Path(dir_okay=False, path_type=Path))
    @json_option("receipt")
    def command(bundle: Path, as_json: bool) -> None:
        receipt = move(config_mod.load(), bundle)
        _answer(receipt, as_json, lambda r: click.echo(done.format_map(r.to_dict())))

    cli.command(name, help=help_text)(command)


_login_move(
    "login-export",
    export_login,
    "Move this volume's login into BUNDLE (mode 0600) and out of the volume; the worker must be stopped.",
    "moved the login of volume {volume} (fingerprint {fingerprint}) into {bundle}; the volume holds no login now: "
    "import it with codex-agent login-import on the target",
)
_login_move(
    "login-import",
    import_login,
    "Move the login in BUNDLE into this (empty) volume, then delete BUNDLE.",
    "moved the login (fingerprint {fingerprint}) into volume {volume}; {bundle} is deleted",
)


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="codex-agent")
