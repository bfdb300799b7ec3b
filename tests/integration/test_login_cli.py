"""agent.login.auth with the real Codex CLI on real folders."""

from __future__ import annotations

import base64
import json
import os
import stat
import time
from pathlib import Path

import psutil
import pytest

from agent.errors import (
    CodexMissingError,
    LoginCheckError,
    LoginTimeoutError,
    NotLoggedInError,
)
from agent.login.auth import inspect_auth_file, run_login_status
from testkit import make_api_key_login

FACTS = {"shard": 0, "volume": "codex_auth_0", "codex_home": "/x", "uid": 1000}


def _b64(data: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def _jwt(claims: dict[str, object]) -> str:
    return f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(claims)}.signature"


def write_chatgpt_auth(
    codex_home: Path, *, refresh_token: str, expired_hours: float, refreshed_days_ago: float
) -> None:
    """Plant a ChatGPT-style auth.json (what `codex login` writes after the browser flow)."""
    exp = int(time.time() - expired_hours * 3600)
    auth = {"https://api.openai.com/auth": {"chatgpt_account_id": "acct-test", "chatgpt_plan_type": "plus"}}
    last_refresh = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - refreshed_days_ago * 86400))
    (codex_home / "auth.json").write_text(
        json.dumps(
            {
                "auth_mode": "chatgpt",
                "OPENAI_API_KEY": None,
                "tokens": {
                    "id_token": _jwt({"email": "ops@example.com", "exp": exp, **auth}),
                    "access_token": _jwt({"exp": exp, **auth}),
                    "refresh_token": refresh_token,
                    "account_id": "acct-test",
                },
                "last_refresh": last_refresh,
            }
        )
    )
    os.chmod(codex_home / "auth.json", 0o600)


class TestRealCli:
    def test_empty_home_is_not_logged_in(self, codex_bin: str, tmp_path: Path) -> None:
        """An empty CODEX_HOME is CODEX-E030."""
        with pytest.raises(NotLoggedInError) as info:
            run_login_status(tmp_path, codex_bin=codex_bin, timeout=20, facts=FACTS)
        assert info.value.code == "CODEX-E030"

    def test_api_key_login_passes(self, codex_bin: str, tmp_path: Path) -> None:
        """After `codex login --with-api-key` the check passes and reports the method."""
        make_api_key_login(codex_bin, tmp_path)
        status = run_login_status(tmp_path, codex_bin=codex_bin, timeout=20, facts=FACTS)
        assert status.method == "apikey"
        facts = inspect_auth_file(tmp_path)
        assert facts.auth_mode == "apikey" and facts.fingerprint is not None

    def test_chatgpt_login_with_expired_token_passes(self, codex_bin: str, tmp_path: Path) -> None:
        """A ChatGPT login whose access token expired is still a login; the facts show the age."""
        write_chatgpt_auth(tmp_path, refresh_token="rt-test-refresh-0001", expired_hours=2, refreshed_days_ago=20)
        status = run_login_status(tmp_path, codex_bin=codex_bin, timeout=20, facts=FACTS)
        assert status.method == "chatgpt"
        facts = inspect_auth_file(tmp_path)
        assert facts.auth_mode == "chatgpt"
        assert facts.access_token_expired()
        age = facts.refresh_age_days()
        assert age is not None and 19.9 < age < 20.1

    def test_same_login_in_two_homes_has_one_fingerprint(self, tmp_path: Path) -> None:
        """Copies of one refresh token fingerprint alike; different tokens differ."""
        homes = [tmp_path / name for name in ("a", "b", "c")]
        for home, token in zip(homes, ("rt-same-token-1", "rt-same-token-1", "rt-other-token-2"), strict=False):
            home.mkdir()
            write_chatgpt_auth(home, refresh_token=token, expired_hours=1, refreshed_days_ago=1)
        prints = [inspect_auth_file(home).fingerprint for home in homes]
        assert prints[0] == prints[1] != prints[2]
        assert all(p and "same-token" not in p for p in prints)


def _dead_or_zombie(pid: int) -> bool:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


def _shim(directory: Path, body: str) -> str:
    path = directory / "codex"
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return str(path)


class TestFailures:
    def test_hanging_cli_times_out_and_is_killed(self, tmp_path: Path) -> None:
        """A CLI that hangs is CODEX-E032 within the timeout plus a small margin, its child killed."""
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir()
        pid_file = tmp_path / "child.pid"
        shim = _shim(bin_dir, f"sleep 300 & echo $! > {pid_file}; wait")
        started = time.monotonic()
        with pytest.raises(LoginTimeoutError) as info:
            run_login_status(tmp_path, codex_bin=shim, timeout=1.0, facts=FACTS)
        elapsed = time.monotonic() - started
        assert info.value.code == "CODEX-E032"
        assert elapsed < 1.0 + 2.0
        child = int(pid_file.read_text())
        assert _dead_or_zombie(child), "the CLI's child survived: only the shell was killed"

    def test_missing_cli_has_its_own_code(self, tmp_path: Path) -> None:
        """No CLI at all is CODEX-E031, naming the binary."""
        with pytest.raises(CodexMissingError) as info:
            run_login_status(tmp_path, codex_bin="codex-does-not-exist", timeout=5, facts=FACTS, path_env=str(tmp_path))
        assert info.value.code == "CODEX-E031"
        assert "codex-does-not-exist" in info.value.message

    def test_other_failure_is_reported_without_secrets(self, tmp_path: Path) -> None:
        """A crashing CLI is CODEX-E033 with a scrubbed tail of its output."""
        shim = _shim(tmp_path, "echo 'boom: key sk-test-leaky123456 rejected' >&2; exit 3")
        with pytest.raises(LoginCheckError) as info:
            run_login_status(tmp_path, codex_bin=shim, timeout=5, facts=FACTS)
        assert info.value.code == "CODEX-E033"
        assert "exited 3" in info.value.message and "boom" in info.value.message
        assert "leaky" not in info.value.message


class TestFreshnessWarning:
    def test_old_refresh_with_expired_token_warns_but_passes(self, codex_bin: str, tmp_path: Path) -> None:
        """The login check passes and carries CODEX-W030 when the last refresh is weeks old."""
        from agent.settings.config import load
        from agent.worker.checks import Checker

        write_chatgpt_auth(tmp_path, refresh_token="rt-test-refresh-0002", expired_hours=2, refreshed_days_ago=30)
        config = load({"CODEX_SHARD_INDEX": "0", "CODEX_HOME": str(tmp_path), "CODEX_BIN": codex_bin})
        result = Checker(config).check_login()
        assert result.ok
        assert [w.code for w in result.warnings] == ["CODEX-W030"]
        assert "30 days" in result.warnings[0].message and result.warnings[0].severity == "warning"

    def test_recent_refresh_does_not_warn(self, codex_bin: str, tmp_path: Path) -> None:
        """An expired access token alone (refreshed yesterday) is normal and earns no warning."""
        from agent.settings.config import load
        from agent.worker.checks import Checker

        write_chatgpt_auth(tmp_path, refresh_token="rt-test-refresh-0003", expired_hours=2, refreshed_days_ago=1)
        config = load({"CODEX_SHARD_INDEX": "0", "CODEX_HOME": str(tmp_path), "CODEX_BIN": codex_bin})
        result = Checker(config).check_login()
        assert result.ok and result.warnings == ()
