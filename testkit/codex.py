"""Make real Codex CLI logins with throwaway API keys (``codex login --with-api-key``).

Keys are fake (``sk-test-<random>``) and returned so that tests can assert they never leak; the
helpers never put a key in an argv, an environment variable or an error message.
"""

from __future__ import annotations

import os
import secrets
import subprocess
from pathlib import Path

__all__ = ["fake_api_key", "make_api_key_login", "make_api_key_login_in_volume", "LoginFailed"]

LOGIN_TIMEOUT_S = 60


class LoginFailed(RuntimeError):
    """``codex login --with-api-key`` exited non-zero; carries argv, exit code, output tail."""

    def __init__(self, argv: list[str], returncode: int, output: str, key: str) -> None:
        self.argv = argv
        self.returncode = returncode
        self.output_tail = output[-2000:].replace(key, "<redacted>")
        super().__init__(f"{argv} exited {returncode}: {self.output_tail}")


def fake_api_key() -> str:
    """Return a new API key that looks real but is not."""
    return f"sk-test-{secrets.token_hex(16)}"


def _login(argv: list[str], env: dict[str, str] | None, key: str | None = None) -> str:
    """Run a login argv with ``key`` (a fresh one by default) on stdin and return the key."""
    key = key or fake_api_key()
    proc = subprocess.run(
        argv,
        input=key,
        capture_output=True,
        text=True,
        env=env,
        timeout=LOGIN_TIMEOUT_S,
        check=False,
    )
    if proc.returncode != 0:
        raise LoginFailed(argv, proc.returncode, proc.stdout + proc.stderr, key)
    return key


def make_api_key_login(codex_bin: str | Path, codex_home: Path, key: str | None = None) -> str:
    """Log ``codex_home`` in with a fake API key, using the host's Codex CLI.

    Args:
        codex_bin: the Codex CLI binary.
        codex_home: the ``CODEX_HOME`` directory; created (0700) when missing.
        key: the key to plant (a fresh random one by default).

    Returns:
        The key, so that a test can assert it appears in no output.

    Raises:
        LoginFailed: the CLI exited non-zero.
    """
    codex_home.mkdir(mode=0o700, parents=True, exist_ok=True)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(codex_home.parent)}
    env["CODEX_HOME"] = str(codex_home)
    return _login([str(codex_bin), "login", "--with-api-key"], env, key)


def make_api_key_login_in_volume(image: str, volume: str, codex_home: str = "/home/app/.codex") -> str:
    """Log a Docker volume in with a fake API key, from a throwaway container of ``image``.

    Runs ``docker run --rm -i -v VOLUME:CODEX_HOME --entrypoint codex IMAGE login --with-api-key``
    with the key on stdin (the Docker CLI, because docker-py has no simple stdin for ``run``).

    Args:
        image: an image with the Codex CLI whose user can write the volume (worker or job image).
        volume: the named volume.
        codex_home: where the volume is mounted; the image's ``CODEX_HOME``.

    Returns:
        The key.

    Raises:
        LoginFailed: the container exited non-zero.
    """
    argv = ["docker", "run", "--rm", "-i", "--label", "cwa.test=1"]
    argv += ["-v", f"{volume}:{codex_home}", "-e", f"CODEX_HOME={codex_home}"]
    argv += ["--entrypoint", "codex", image, "login", "--with-api-key"]
    return _login(argv, None)
