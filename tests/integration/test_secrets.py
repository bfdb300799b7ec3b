"""No secret from auth.json or the CLI's output reaches a log line, an error or a report."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

from agent.settings.config import load
from agent.telemetry.audit import configure_logging
from agent.worker.checks import Checker
from testkit import make_api_key_login

from .test_login_cli import write_chatgpt_auth

REFRESH = "rt-PLANTED-refresh-7f3a9c"
API_KEY = "sk-test-PLANTEDkey9z8y7x"


def _needles(secret: str) -> list[str]:
    """The secret and the tails a masking CLI would still print."""
    return [secret, secret[-5:], secret[-8:]]


class TestNoLeaks:
    def test_check_json_and_logs_hold_no_refresh_token(self, codex_bin: str, tmp_path: Path) -> None:
        """`codex-agent check --json` and its log lines never carry the planted refresh token or JWTs."""
        write_chatgpt_auth(tmp_path, refresh_token=REFRESH, expired_hours=2, refreshed_days_ago=30)
        tokens = json.loads((tmp_path / "auth.json").read_text())["tokens"]
        env = {**os.environ, "CODEX_SHARD_INDEX": "0", "CODEX_HOME": str(tmp_path), "CODEX_BIN": codex_bin}
        done = subprocess.run(
            [sys.executable, "-m", "agent", "check", "--json"], env=env, capture_output=True, text=True, timeout=60
        )
        output = done.stdout + done.stderr
        report = json.loads(done.stdout)
        assert report["checks"][2]["ok"] is True  # the login really was read
        for needle in _needles(REFRESH) + [tokens["access_token"], tokens["id_token"]]:
            assert needle not in output

    def test_api_key_never_appears_even_masked(self, codex_bin: str, tmp_path: Path) -> None:
        """The CLI prints a masked key (sk-test-***…); nothing of it reaches our logs or report."""
        make_api_key_login(codex_bin, tmp_path, API_KEY)
        stream = io.StringIO()
        configure_logging("DEBUG", stream=stream)
        try:
            config = load({"CODEX_SHARD_INDEX": "0", "CODEX_HOME": str(tmp_path), "CODEX_BIN": codex_bin})
            checker = Checker(config)
            report = checker.run()
            checker.claim.release()
        finally:
            configure_logging("CRITICAL", stream=io.StringIO())
        text = json.dumps(report.to_dict()) + stream.getvalue()
        assert next(r for r in report.results if r.name == "login").ok
        assert stream.getvalue(), "the checker logged nothing to inspect"
        for needle in _needles(API_KEY):
            assert needle not in text

    def test_failing_cli_output_is_scrubbed_in_errors(self, tmp_path: Path) -> None:
        """A CLI that fails while printing the key: the error and the logs stay clean."""
        shim = tmp_path / "codex"
        shim.write_text(f"#!/bin/sh\necho 'fatal: bad key {API_KEY}' >&2\nexit 7\n")
        shim.chmod(0o755)
        stream = io.StringIO()
        configure_logging("DEBUG", stream=stream)
        try:
            config = load({"CODEX_SHARD_INDEX": "0", "CODEX_HOME": str(tmp_path), "CODEX_BIN": str(shim)})
            checker = Checker(config)
            report = checker.run()
            checker.claim.release()
        finally:
            configure_logging("CRITICAL", stream=io.StringIO())
        login = next(r for r in report.results if r.name == "login")
        assert login.code == "CODEX-E033"
        text = json.dumps(report.to_dict()) + stream.getvalue()
        for needle in _needles(API_KEY):
            assert needle not in text
