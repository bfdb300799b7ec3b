"""What both command lines share: agent errors shown once by click, shared options, the app import.

Commands only raise :class:`~agent.errors.AgentError`; :class:`AgentGroup` and
:class:`AgentCommand` turn it into an :class:`AgentClickException` (click's ``ClickException``
pattern: the error knows its ``exit_code`` and how to show itself), so no command calls
``sys.exit`` for an error. ``--json`` is declared once and also decides how the error is shown.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from typing import IO, Any, TypeVar

import click

from agent.errors import AgentError, ConfigError
from agent.login.codex_cli import SUPPORTED_VERSION

__all__ = [
    "AgentClickException",
    "AgentCommand",
    "AgentGroup",
    "VERSION_MESSAGE",
    "import_app",
    "json_option",
    "mode_option",
    "shards_option",
]

F = TypeVar("F", bound=Callable[..., Any])

_AS_JSON = "codex_agent.as_json"
"""``ctx.meta`` key: the running command asked for JSON, so its error is JSON too."""


class AgentClickException(click.ClickException):
    """An AgentError shown once: its code, message and fix (or a JSON object), with its exit code."""

    def __init__(self, error: AgentError, as_json: bool = False) -> None:
        super().__init__(error.message)
        self.error = error
        self.exit_code = error.exit_code  # type: ignore[misc]  # click reads it per instance
        self.as_json = as_json

    def show(self, file: IO[Any] | None = None) -> None:
        if self.as_json:  # the answer channel stays JSON, for scripts
            click.echo(json.dumps({"ok": False, "error": self.error.to_dict()}, indent=2), file=file)
            return
        click.echo(f"error {self.error.code}: {self.error.message}", err=True, file=file)
        click.echo(f"  fix: {self.error.remediation}", err=True, file=file)


def _translated(ctx: click.Context, invoke: Callable[[click.Context], Any]) -> Any:
    try:
        return invoke(ctx)
    except AgentError as e:
        raise AgentClickException(e, as_json=bool(ctx.meta.get(_AS_JSON))) from e


class AgentGroup(click.Group):
    """A group whose commands' AgentErrors are shown once, by click."""

    def invoke(self, ctx: click.Context) -> Any:
        return _translated(ctx, super().invoke)


class AgentCommand(click.Command):
    """A single command whose AgentErrors are shown once, by click."""

    def invoke(self, ctx: click.Context) -> Any:
        return _translated(ctx, super().invoke)


def _remember_json(ctx: click.Context, _param: click.Parameter, value: bool) -> bool:
    ctx.meta[_AS_JSON] = value
    return value


def json_option(what: str = "report") -> Callable[[F], F]:
    """``--json``: print the answer (and any error) as JSON."""
    return click.option(
        "--json", "as_json", is_flag=True, callback=_remember_json, is_eager=True, help=f"Print the {what} as JSON."
    )


shards_option = click.option(
    "--shards", type=click.IntRange(min=1), default=None, help="Shard count (default CODEX_SHARDS)."
)
mode_option = click.option(
    "--mode", type=click.Choice(["sharded", "single"]), default=None, help="Queue mode (default CODEX_QUEUE_MODE)."
)


VERSION_MESSAGE = f"%(prog)s %(version)s (codex-worker-agent, Codex CLI {SUPPORTED_VERSION})"
"""``--version`` of every command: the agent's release and the Codex CLI release it supports."""


def import_app(path: str) -> Any:
    """The Celery app at ``module:attr``, with its ``include`` modules (and so its tasks) loaded.

    The current directory is on ``sys.path`` first, as ``celery -A`` has it: ``myproj.celery:app``
    is found beside the command, not only in site-packages.

    Raises:
        ConfigError: it cannot be imported (CODEX-E001 naming ``--app``).
    """
    from celery.utils.imports import symbol_by_name

    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    try:
        app = symbol_by_name(path)
        app.loader.import_default_modules()
    except (ImportError, AttributeError, ValueError) as e:
        raise ConfigError(
            variable="--app", value=path, cause=f"cannot import it ({e})", accepted="module:attribute of a Celery app"
        ) from e
    return app
