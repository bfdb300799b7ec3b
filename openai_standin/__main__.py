"""``openai-standin``: run the stand-in, or write a stand-in login into a CODEX_HOME (staging)."""

from __future__ import annotations

import json
import sys
import urllib.request
from pathlib import Path

import click

from agent import __version__
from agent.cli.clickext import VERSION_MESSAGE
from openai_standin.logins import login_files
from openai_standin.server import LOOPBACK, StandIn
from openai_standin.tokens import DEFAULT_ACCESS_TTL, LoginTokens, TokenAuthority

__all__ = ["main"]


@click.group(
    context_settings={"help_option_names": ["-h", "--help"]}, epilog="Exit codes: 0 done, 1 a failure, 2 bad usage."
)
@click.version_option(__version__, "-V", "--version", prog_name="openai-standin", message=VERSION_MESSAGE)
def main() -> None:
    """Local stand-ins for OpenAI's token endpoint and Responses API (never contacts OpenAI)."""


@main.command()
@click.option("--host", default=LOOPBACK, show_default=True, help="Address to bind (loopback, or a test network's).")
@click.option("--port", default=8765, show_default=True, type=click.IntRange(0, 65535))
@click.option(
    "--access-ttl",
    default=DEFAULT_ACCESS_TTL,
    show_default=True,
    type=click.FloatRange(min=1),
    help="Seconds access tokens live (keep above 300: Codex refreshes within 5 minutes of exp).",
)
def serve(host: str, port: int, access_ttl: float) -> None:
    """Serve until interrupted; prints the URLs Codex needs."""
    standin = StandIn(host, port, authority=TokenAuthority(access_ttl))
    click.echo(json.dumps({"url": standin.url, "refresh_url": standin.refresh_url}), err=True)
    try:
        standin.serve_forever()
    except KeyboardInterrupt:
        standin.stop()


@main.command()
@click.option("--server", required=True, help="The stand-in's base URL as Codex will reach it.")
@click.option("--codex-home", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--access-ttl", type=click.FloatRange(min=1), default=None)
def login(server: str, codex_home: Path, access_ttl: float | None) -> None:
    """Mint a login at a running stand-in and write auth.json + config.toml into CODEX_HOME."""
    request = urllib.request.Request(
        f"{server.rstrip('/')}/_standin/logins",
        data=json.dumps({"access_ttl": access_ttl}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as reply:  # noqa: S310  (the operator's own URL)
        tokens = LoginTokens(**json.loads(reply.read()))
    login_files(tokens, server).write(codex_home)
    click.echo(f"wrote a stand-in login (family {tokens.family}) into {codex_home}")


if __name__ == "__main__":
    sys.exit(main())
