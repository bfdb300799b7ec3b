"""Keep the volume's login in ``auth.json``: read ``cli_auth_credentials_store`` from config.toml.

The Codex CLI can keep a login elsewhere (``keyring``, which fails in a container for want of
D-Bus; ``ephemeral``, which keeps it in memory and deletes it; ``auto``, either). The claim, the
checks, the revocation marker and the fingerprints all watch ``auth.json``, so anything but
``file`` (or unset, which means ``file``) is a check failure with the fix. The operator's
config.toml is only ever read, never rewritten.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from agent.errors import CredentialStoreError
from agent.util.smallfile import UnreadableFile, read_small_file

__all__ = ["CONFIG_FILE", "SETTING", "ACCEPTED", "credentials_store", "check_credentials_store"]

CONFIG_FILE = "config.toml"
SETTING = "cli_auth_credentials_store"
ACCEPTED = ("file",)

_READ_LIMIT = 1 << 20
"""A config.toml larger than this (1 MiB) is not one an operator wrote: refuse to parse it."""


def credentials_store(codex_home: Path) -> tuple[str | None, str | None]:
    """The configured store and, when config.toml cannot be understood, why.

    Returns:
        ``(value, None)`` with ``value`` None when the setting (or the file) is absent, or
        ``(None, cause)`` when the file cannot be read or parsed. Never raises.
    """
    try:  # a FIFO or a huge file in its place is a cause, not a hang
        found = read_small_file(Path(codex_home) / CONFIG_FILE, _READ_LIMIT)
    except UnreadableFile as e:
        return None, f"is unreadable: {e.cause}"
    if found is None:
        return None, None
    try:
        data = tomllib.loads(found[0].decode("utf-8"))
    except UnicodeDecodeError:
        return None, "is not UTF-8 text"
    except tomllib.TOMLDecodeError as e:
        return None, f"is not valid TOML ({e})"
    except RecursionError:  # tomllib recurses into nested arrays and tables
        return None, "is not valid TOML (nested too deeply)"
    value: Any = data.get(SETTING)
    if value is None:
        return None, None
    if not isinstance(value, str):
        return None, f"sets {SETTING} to a {type(value).__name__}, not a string"
    return value, None


def check_credentials_store(codex_home: Path, facts: dict[str, Any]) -> None:
    """Raise CredentialStoreError unless the login stays in auth.json.

    Raises:
        CredentialStoreError: CODEX-E035, naming the value or why config.toml is unreadable.
    """
    value, problem = credentials_store(codex_home)
    config_file = str(Path(codex_home) / CONFIG_FILE)
    if problem is not None:
        raise CredentialStoreError(**facts, config_file=config_file, cause=problem)
    if value is not None and value not in ACCEPTED:
        raise CredentialStoreError(
            **facts, config_file=config_file, cause=f'sets {SETTING} = {value!r} (accepted: unset or "file")'
        )
