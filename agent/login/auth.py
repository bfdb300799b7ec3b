"""Is the volume's Codex login usable? Ask the real CLI, and read ``auth.json`` offline.

``codex login status`` runs with an argv list, an explicit environment and a timeout; on timeout
its whole process group is killed. Its output is judged here and never passed on raw (it echoes
part of the API key). :func:`inspect_auth_file` reads only non-secret facts from ``auth.json``:
the auth mode, the access token's expiry, the age of the last refresh and a one-way fingerprint
of the long-lived credential, so copies of one login in two volumes can be spotted.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import os
import re
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agent.errors import (
    CodexMissingError,
    LoginCheckError,
    LoginTimeoutError,
    NotLoggedInError,
)
from agent.util.redact import scrub
from agent.util.smallfile import UnreadableFile, read_small_file

__all__ = [
    "AUTH_FILE",
    "AuthFacts",
    "LoginStatus",
    "inspect_auth_file",
    "facts_from_text",
    "fingerprint",
    "judge_status_output",
    "require_readable",
    "run_status_command",
    "run_login_status",
    "status_argv",
]

AUTH_FILE = "auth.json"
_TAIL_CHARS = 300
_MAX_AUTH_BYTES = 1 << 20
"""A real auth.json is a few KiB; anything past 1 MiB is not one (and is not read whole)."""
_AUTH_MODE = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,31}")
_UNREADABLE_AUTH_OUTPUT = ("did not contain valid utf-8", "failed to deserialize cli auth")
"""What ``codex login status`` says when auth.json exists but is not a login it can read."""


@dataclass(frozen=True)
class LoginStatus:
    """A passed login check."""

    method: str
    duration_s: float


@dataclass(frozen=True)
class AuthFacts:
    """Non-secret facts about an ``auth.json``."""

    present: bool
    auth_mode: str | None = None
    access_token_expires_at: float | None = None
    last_refresh: float | None = None
    fingerprint: str | None = None
    modified_at: float | None = None
    unreadable: str | None = None
    """Why the file holds no usable login (not UTF-8, not JSON, no credential…); None when readable."""

    def access_token_expired(self, now: float | None = None) -> bool:
        """Whether the access token's ``exp`` is in the past."""
        return self.access_token_expires_at is not None and self.access_token_expires_at < (now or time.time())

    def refresh_age_days(self, now: float | None = None) -> float | None:
        """Days since ``last_refresh``, or None when unknown."""
        if self.last_refresh is None:
            return None
        return ((now or time.time()) - self.last_refresh) / 86400

    def credential_age_days(self, now: float | None = None) -> float | None:
        """Days since the login was last written (refresh, else file mtime)."""
        stamp = self.last_refresh or self.modified_at
        return None if stamp is None else ((now or time.time()) - stamp) / 86400

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe view; holds no secret."""
        age = self.credential_age_days()
        return {
            "present": self.present,
            "auth_mode": self.auth_mode,
            "access_token_expires_at": self.access_token_expires_at,
            "access_token_expired": self.access_token_expired(),
            "last_refresh": self.last_refresh,
            "credential_age_days": None if age is None else round(age, 2),
            "fingerprint": self.fingerprint,
            "unreadable": self.unreadable,
        }


def _jwt_exp(token: Any) -> float | None:
    """A JWT's ``exp`` claim when it is a finite number; None for a payload of any other shape."""
    if not isinstance(token, str) or token.count(".") < 1:
        return None
    payload = token.split(".")[1]
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (ValueError, binascii.Error, RecursionError):  # bad base64, not UTF-8, not JSON, a nesting bomb
        return None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    if isinstance(exp, bool) or not isinstance(exp, (int, float)):
        return None
    try:
        value = float(exp)
    except OverflowError:  # an integer beyond any float
        return None
    return value if math.isfinite(value) else None


def _timestamp(value: Any) -> float | None:
    """An ISO 8601 time (``Z`` or an offset; UTC when naive) as epoch seconds; None when malformed."""
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        return parsed.timestamp()
    except (ValueError, OverflowError):  # malformed, or an offset pushing it out of datetime's range
        return None


def fingerprint(secret: str) -> str:
    """A one-way, short fingerprint of a credential; equal logins give equal fingerprints."""
    return hashlib.sha256(b"codex-agent-fingerprint:" + secret.encode()).hexdigest()[:16]


def _unreadable(cause: str, modified: float | None) -> AuthFacts:
    return AuthFacts(present=True, auth_mode="unreadable", modified_at=modified, unreadable=cause)


def inspect_auth_file(codex_home: Path) -> AuthFacts:
    """Read the non-secret facts of ``codex_home/auth.json``; never raises, whatever the volume holds.

    A file that exists but cannot be read (permissions, a directory, a FIFO, too large) is
    ``present`` with ``unreadable`` saying why, never mistaken for an absent or a valid login.
    """
    try:
        found = read_small_file(Path(codex_home) / AUTH_FILE, _MAX_AUTH_BYTES)
    except UnreadableFile as e:
        return _unreadable(e.cause, e.modified)
    if found is None:
        return AuthFacts(present=False)
    return facts_from_text(*found)


def require_readable(auth: AuthFacts, facts: dict[str, Any]) -> None:
    """Refuse a login nobody can read, whatever ``codex login status`` says of it.

    The CLI calls ``{"a": 1}`` "Logged in using ChatGPT": the agent's own reading of auth.json is
    what keeps the gate shut on credentials that are garbage, empty or missing.

    Raises:
        NotLoggedInError: CODEX-E030 naming why auth.json is unreadable.
    """
    if auth.unreadable is not None:
        raise NotLoggedInError(**facts, cause=f"{AUTH_FILE} is unreadable: {auth.unreadable}")


def _credential(value: Any) -> str | None:
    """``value`` when it can be a credential: a non-empty string of valid Unicode."""
    if not isinstance(value, str) or not value:
        return None
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate from a JSON escape: no CLI accepts it
        return None
    return value


def facts_from_text(content: str | bytes, modified: float | None) -> AuthFacts:
    """The non-secret facts of an ``auth.json``'s content (read here or through a container).

    Never raises: content that holds no usable login gives facts with ``unreadable`` set.

    Args:
        content: the file's bytes (judged as UTF-8, strictly) or text; never logged or returned.
        modified: its mtime (epoch seconds), when known.
    """
    try:
        text = content.decode("utf-8") if isinstance(content, bytes) else content
        text.encode("utf-8")
    except UnicodeError:
        return _unreadable("not UTF-8", modified)
    if not text.strip():
        return _unreadable("empty", modified)
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        return _unreadable("not JSON", modified)
    if not isinstance(data, dict):
        return _unreadable(f"not a JSON object (a {type(data).__name__})", modified)
    raw_tokens = data.get("tokens")
    tokens: dict[str, Any] = raw_tokens if isinstance(raw_tokens, dict) else {}
    api_key = _credential(data.get("OPENAI_API_KEY"))
    refresh = _credential(tokens.get("refresh_token"))
    if not (api_key or refresh or _credential(tokens.get("access_token")) or _credential(tokens.get("id_token"))):
        return _unreadable("holds no credential (no API key, no tokens)", modified)
    declared = data.get("auth_mode")
    if declared:  # echoed in reports: only a short name, never a value of another shape
        mode = declared if isinstance(declared, str) and _AUTH_MODE.fullmatch(declared) else "unknown"
    else:
        mode = "chatgpt" if tokens else "apikey"
    secret = refresh or api_key
    return AuthFacts(
        present=True,
        auth_mode=mode,
        access_token_expires_at=_jwt_exp(tokens.get("access_token")),
        last_refresh=_timestamp(data.get("last_refresh")),
        fingerprint=fingerprint(secret) if secret else None,
        modified_at=modified,
    )


def status_argv(codex_bin: str) -> list[str]:
    """The command line of the login check."""
    return [codex_bin, "login", "status"]


def judge_status_output(returncode: int, stdout: str, stderr: str, *, facts: dict[str, Any]) -> str:
    """Turn ``codex login status``'s result into the login method, or raise.

    Raises:
        NotLoggedInError: the CLI says there is no login.
        LoginCheckError: the CLI failed in some other way.
    """
    output = f"{stdout}\n{stderr}"
    lowered = output.lower()
    if "not logged in" in lowered:
        raise NotLoggedInError(**facts, cause="codex login status: Not logged in")
    if returncode == 0:
        if "chatgpt" in lowered:
            return "chatgpt"
        if "api key" in lowered:
            return "apikey"
        return "unknown"
    if returncode == 1 and not output.strip():
        raise NotLoggedInError(**facts, cause="codex login status exited 1")
    tail = scrub(output.strip())[-_TAIL_CHARS:] or "no output"
    if returncode != 0 and any(words in lowered for words in _UNREADABLE_AUTH_OUTPUT):
        raise NotLoggedInError(**facts, cause=f"{AUTH_FILE} is unreadable; codex login status: {tail}")
    raise LoginCheckError(**facts, cause=f"codex login status exited {returncode}: {tail}")


def _kill_group(process: subprocess.Popen[str]) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.communicate()


def run_status_command(
    argv: Sequence[str], *, env: dict[str, str], timeout: float, facts: dict[str, Any]
) -> tuple[int, str, str]:
    """Run a login-status command under ``timeout``; return code, stdout, stderr.

    Raises:
        CodexMissingError: the executable is absent or not executable.
        LoginTimeoutError: no answer in time (the process group is killed).
    """
    try:
        process = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            text=True,
            start_new_session=True,
        )
    except OSError as e:
        raise CodexMissingError(**facts, binary=argv[0], cause=e.strerror or str(e)) from e
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired as e:
        _kill_group(process)
        raise LoginTimeoutError(**facts, timeout=timeout) from e
    return process.returncode, stdout, stderr


def run_login_status(
    codex_home: Path,
    *,
    codex_bin: str,
    timeout: float,
    facts: dict[str, Any],
    path_env: str | None = None,
) -> LoginStatus:
    """Run ``codex login status`` against ``codex_home`` in this container.

    Args:
        codex_home: the directory holding ``auth.json``.
        codex_bin: the CLI's name or path.
        timeout: seconds before the check counts as failed.
        facts: shard, volume and paths for error messages.
        path_env: ``PATH`` for the child; this process's when omitted.

    Raises:
        NotLoggedInError, CodexMissingError, LoginTimeoutError, LoginCheckError: by cause.
    """
    env = {
        "PATH": path_env if path_env is not None else os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/"),
        "CODEX_HOME": str(codex_home),
        "LANG": "C.UTF-8",
        "NO_COLOR": "1",
    }
    started = time.monotonic()
    returncode, stdout, stderr = run_status_command(status_argv(codex_bin), env=env, timeout=timeout, facts=facts)
    method = judge_status_output(returncode, stdout, stderr, facts=facts)
    return LoginStatus(method=method, duration_s=time.monotonic() - started)
