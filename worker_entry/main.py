"""``worker-entry``: the image entrypoint.

Reads the configuration, sets up JSON logging, imports the Celery app, installs the agent and
starts the worker with the queues and safety settings a Codex shard needs.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import click
import structlog

from agent import __version__
from agent.cli.clickext import VERSION_MESSAGE, AgentClickException, AgentCommand, import_app
from agent.settings import config as config_mod
from agent.settings.config import AgentConfig
from agent.telemetry.audit import configure_logging
from agent.worker.runtime import install

__all__ = ["main", "worker_argv"]

DEFAULT_APP = "worker_entry.app:app"

log = structlog.get_logger("worker_entry")


def _queues_given(args: Sequence[str]) -> tuple[list[str], list[str]]:
    """Split user args into the -Q/--queues values and everything else."""
    queues: list[str] = []
    rest: list[str] = []
    items = list(args)
    i = 0
    while i < len(items):
        arg = items[i]
        if arg in ("-Q", "--queues") and i + 1 < len(items):
            queues += items[i + 1].split(",")
            i += 2
            continue
        if arg.startswith("--queues="):
            queues += arg.split("=", 1)[1].split(",")
        elif arg.startswith("-Q") and len(arg) > 2:
            queues += arg[2:].split(",")
        else:
            rest.append(arg)
        i += 1
    return [q for q in queues if q], rest


def _has_option(args: Sequence[str], *names: str) -> bool:
    return any(
        a == n or a.startswith(n + "=") or (len(n) == 2 and a.startswith(n) and len(a) > 2) for a in args for n in names
    )


def worker_argv(config: AgentConfig, default_queue: str, extra: Sequence[str] = ()) -> list[str]:
    """The ``celery`` argv for this worker: explicit queues always, one Codex task at a time.

    Queues are always explicit (``-Q``): with none given, older Celery ignores ``deselect`` and
    the gate could not close. A Codex shard defaults to concurrency 1 and prefetch 1 (one
    login, one Codex process at a time); the user's own options win.
    """
    user_queues, rest = _queues_given(extra)
    if config.codex_queues:
        queues = [*config.codex_queues, *(q for q in user_queues if q not in config.codex_queues)]
    else:
        queues = user_queues or [default_queue]
    argv = ["--quiet", "worker", "--loglevel", config.log_level, "-Q", ",".join(queues)]
    if not _has_option(rest, "-n", "--hostname"):
        argv += ["--hostname", f"{config.codex_queue or default_queue}@{config.worker_name}"]
    if config.codex_queue:
        if not _has_option(rest, "-c", "--concurrency"):
            argv += ["--concurrency", "1"]
        if not _has_option(rest, "--prefetch-multiplier"):
            argv += ["--prefetch-multiplier", "1"]
    return argv + rest


_CELERY_ARGS = "worker_entry.celery_args"
"""``ctx.meta`` key: the words after ``--``, for ``celery worker``."""


class _EntryCommand(AgentCommand):
    """worker-entry's errors also become a critical JSON line: ``docker logs`` is the audit trail.

    Only the words after ``--`` go to ``celery worker``; before it, an unknown option or word is a
    usage error (exit 2) and nothing starts, so ``-h`` and ``--version`` are worker-entry's own.
    """

    def collect_usage_pieces(self, ctx: click.Context) -> list[str]:
        return [*super().collect_usage_pieces(ctx), "[-- CELERY_WORKER_ARGS...]"]

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        at = args.index("--") if "--" in args else len(args)
        ctx.meta[_CELERY_ARGS] = tuple(args[at + 1 :])
        return super().parse_args(ctx, args[:at])

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except AgentClickException as e:
            log.critical(
                "codex.agent.startup_failed", code=e.error.code, error=e.error.message, remediation=e.error.remediation
            )
            raise


@click.command(
    cls=_EntryCommand,
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog="Exit codes: 0 the worker stopped cleanly, 1 a failure the agent detected (AGENT_FAIL_FAST=1), "
    "2 bad usage or configuration (CODEX-E001).",
)
@click.option(
    "--app",
    "app_path",
    default=DEFAULT_APP,
    show_default=True,
    help="The Celery app, module:attr; imported from the current directory too, like celery -A.",
)
@click.version_option(__version__, "-V", "--version", prog_name="worker-entry", message=VERSION_MESSAGE)
@click.pass_context
def cli(ctx: click.Context, app_path: str) -> None:
    """Start a Celery worker with the codex agent installed.

    Arguments after -- go to `celery worker`: worker-entry --app myproj.celery:app -- --max-tasks-per-child 100
    """
    celery_args: tuple[str, ...] = ctx.meta.get(_CELERY_ARGS, ())
    configure_logging("INFO")  # until the configuration says otherwise: a bad one is logged too
    config = config_mod.load()
    configure_logging(config.log_level)
    if config.metrics_port is not None:  # before the app import and the pool's fork (agent.telemetry.metrics)
        from agent.telemetry.metrics import enable

        enable(
            config.metrics_port,
            state_dir=config.state_dir,
            codex_home=config.codex_home,
            volume=config.volume_name or "-",
            shard="-" if config.shard_index is None else str(config.shard_index),
        )
    app = import_app(app_path)
    install(app, config)
    argv = worker_argv(config, app.conf.task_default_queue or "celery", celery_args)
    log.info("codex.agent.starting", argv=argv, app=app_path)
    sys.exit(app.start(argv) or 0)


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="worker-entry")
