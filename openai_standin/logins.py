"""Test logins written the way an operator's headless login would leave them, and the config that
points the Codex CLI at the stand-in instead of OpenAI.

:func:`login_files` gives the two files a ``CODEX_HOME`` needs: ``auth.json`` (mode 0600, as Codex
writes it) and ``config.toml`` with a custom model provider (``requires_openai_auth = true``, so a
ChatGPT login is used against it) and every feature that would contact another host turned off.
Write them into a directory with :meth:`LoginFiles.write`, or into a Docker volume with
:meth:`LoginFiles.put_into_volume` (no container runs: the archive API writes into a created one).
"""

from __future__ import annotations

import io
import json
import os
import tarfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from openai_standin.tokens import LoginTokens

__all__ = ["LoginFiles", "auth_json", "login_files", "provider_config", "MODEL", "PROVIDER"]

MODEL = "standin-model"
PROVIDER = "standin"


def auth_json(tokens: LoginTokens, last_refresh: float | None = None) -> dict[str, Any]:
    """``auth.json`` of a ChatGPT login holding ``tokens``."""
    stamp = datetime.fromtimestamp(last_refresh or time.time(), tz=UTC)
    return {
        "OPENAI_API_KEY": None,
        "tokens": {
            "id_token": tokens.id_token,
            "access_token": tokens.access_token,
            "refresh_token": tokens.refresh_token,
            "account_id": tokens.account_id,
        },
        "last_refresh": stamp.isoformat().replace("+00:00", "Z"),
    }


def provider_config(base_url: str) -> str:
    """``config.toml`` sending model and ChatGPT backend traffic to ``base_url`` and nowhere else."""
    base = base_url.rstrip("/")
    return (
        "# Written by openai_standin: every request of this login goes to the local stand-in.\n"
        f'model = "{MODEL}"\n'
        f'model_provider = "{PROVIDER}"\n'
        f'chatgpt_base_url = "{base}/backend-api/"\n'
        'approval_policy = "never"\n'
        'sandbox_mode = "read-only"\n'
        "\n"
        f"[model_providers.{PROVIDER}]\n"
        'name = "OpenAI stand-in"\n'
        f'base_url = "{base}/v1"\n'
        'wire_api = "responses"\n'
        "requires_openai_auth = true\n"
        "request_max_retries = 0\n"
        "stream_max_retries = 0\n"
        "\n"
        "[features]\n"
        "plugins = false\n"
        "apps = false\n"
        "\n"
        "[analytics]\n"
        "enabled = false\n"
    )


@dataclass(frozen=True)
class LoginFiles:
    """The files of one ``CODEX_HOME`` login: name -> (content, mode)."""

    files: dict[str, tuple[bytes, int]]

    def write(self, codex_home: Path, uid: int | None = None, gid: int | None = None) -> None:
        """Write into a directory (atomically per file), owned by ``uid:gid`` when given."""
        codex_home.mkdir(mode=0o700, parents=True, exist_ok=True)
        for name, (content, mode) in self.files.items():
            path = codex_home / name
            tmp = path.with_name(f".{name}.standin-tmp")
            tmp.write_bytes(content)
            os.chmod(tmp, mode)
            if uid is not None:
                os.chown(tmp, uid, gid if gid is not None else uid)
            os.replace(tmp, path)

    def tar(self, uid: int, gid: int) -> bytes:
        """A tar archive of the files owned by ``uid:gid`` (for Docker's archive API)."""
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as archive:
            for name, (content, mode) in self.files.items():
                info = tarfile.TarInfo(name)
                info.size, info.mode, info.uid, info.gid, info.mtime = len(content), mode, uid, gid, int(time.time())
                archive.addfile(info, io.BytesIO(content))
        return buffer.getvalue()

    def put_into_volume(self, client: Any, image: str, volume: str, *, uid: int = 1000, gid: int = 1000) -> None:
        """Write into a Docker named volume through a created, never started, container of ``image``."""
        container = client.containers.create(
            image, command=["true"], volumes=[f"{volume}:/v:rw"], labels={"cwa.test": "1"}
        )
        try:
            container.put_archive("/v", self.tar(uid, gid))
        finally:
            container.remove(force=True, v=False)


def login_files(tokens: LoginTokens | None, base_url: str | None, *, last_refresh: float | None = None) -> LoginFiles:
    """``auth.json`` for ``tokens`` and/or ``config.toml`` for ``base_url`` (either may be None)."""
    files: dict[str, tuple[bytes, int]] = {}
    if tokens is not None:
        files["auth.json"] = (json.dumps(auth_json(tokens, last_refresh), indent=2).encode(), 0o600)
    if base_url is not None:
        files["config.toml"] = (provider_config(base_url).encode(), 0o600)
    return LoginFiles(files)
