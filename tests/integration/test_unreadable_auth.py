"""An auth.json nobody can read closes the gate with a code: the real CLI, a real worker, a real mount.

Issue 10: binary garbage in auth.json raised UnicodeDecodeError; `codex-agent check` died with a
traceback, and the running worker kept consuming while its watcher logged tracebacks.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.errors import NotLoggedInError
from agent.settings.config import load
from agent.worker.checks import local_login_check
from agent.worker.preflight import Preflight
from testkit import make_api_key_login
from testkit.workers import ShardHome, WorkerFactory, agent_status, wait_until

GARBAGE = b"\x89PNG\r\n\x1a\n\xff\xfe\x00\x01" + bytes(range(256)) * 4
"""Binary bytes that are not UTF-8, as a disk error or a stray copy leaves them."""


def _check_json(codex_bin: str, codex_home: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CODEX_SHARD_INDEX": "0", "CODEX_HOME": str(codex_home), "CODEX_BIN": codex_bin}
    return subprocess.run(
        [sys.executable, "-m", "agent", "check", "--json"], env=env, capture_output=True, text=True, timeout=60
    )


class TestCheckCommand:
    @pytest.mark.parametrize(
        "content, cause",
        [(GARBAGE, "not UTF-8"), (b"[" * 100_000, "not JSON"), (b'{"a": 1}', "holds no credential")],
        ids=["binary-garbage", "nesting-bomb", "no-credential"],
    )
    def test_unreadable_auth_json_exits_1_with_e030_and_no_traceback(
        self, codex_bin: str, tmp_path: Path, content: bytes, cause: str
    ) -> None:
        """`codex-agent check --json` on an unreadable auth.json: exit 1, CODEX-E030 naming the cause, JSON out."""
        home = tmp_path / ".codex"
        home.mkdir(mode=0o700)
        (home / "auth.json").write_bytes(content)
        done = _check_json(codex_bin, home)
        assert "Traceback" not in done.stderr + done.stdout, done.stderr[-2000:]
        assert done.returncode == 1
        login = {c["name"]: c for c in json.loads(done.stdout)["checks"]}["login"]
        assert login["ok"] is False and login["code"] == "CODEX-E030"
        assert f"auth.json is unreadable: {cause}" in login["message"]
        assert login["details"]["unreadable"].startswith(cause)

    def test_the_cli_alone_would_pass_a_file_without_credential(self, codex_bin: str, tmp_path: Path) -> None:
        """Why the agent reads auth.json itself: `codex login status` says "Logged in" for ``{"a": 1}``."""
        (tmp_path / "auth.json").write_text('{"a": 1}')
        env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "CODEX_HOME": str(tmp_path), "NO_COLOR": "1"}
        done = subprocess.run([codex_bin, "login", "status"], env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0 and "logged in" in (done.stdout + done.stderr).lower()
        login = {c["name"]: c for c in json.loads(_check_json(codex_bin, tmp_path).stdout)["checks"]}["login"]
        assert login["code"] == "CODEX-E030"


class TestPreflight:
    @pytest.mark.parametrize("content", [GARBAGE, b'{"a": 1}'], ids=["binary-garbage", "no-credential"])
    def test_a_task_never_starts_on_an_unreadable_login(self, codex_bin: str, tmp_path: Path, content: bytes) -> None:
        """The pre-flight before each phase refuses it with E030, even where the real CLI says "Logged in"."""
        (tmp_path / "auth.json").write_bytes(content)
        config = load({"CODEX_SHARD_INDEX": "0", "CODEX_HOME": str(tmp_path), "CODEX_BIN": codex_bin})
        with pytest.raises(NotLoggedInError, match="auth.json is unreadable"):
            Preflight(config, local_login_check).check_login()


@pytest.mark.parametrize("broker_url", ["rabbitmq"], indirect=True)
class TestRunningWorker:
    def test_auth_json_turning_to_garbage_closes_the_gate_and_a_login_reopens_it(
        self, workers: WorkerFactory, shard_homes: Callable[..., ShardHome], codex_bin: str
    ) -> None:
        """A consuming worker whose auth.json becomes binary garbage stops consuming with E030, no traceback."""
        home = shard_homes()
        make_api_key_login(codex_bin, home.codex_home)
        # Slow periodic re-checks: the watcher's reaction to the changed file is what is tested.
        worker = workers(shard=0, home=home, AGENT_RECHECK_INTERVAL="60")
        worker.wait_for("codex.gate.consuming", timeout=30)

        (home.codex_home / "auth.json").write_bytes(GARBAGE)
        worker.wait_for("codex.gate.cancelled", timeout=15)
        failed = worker.wait_for("codex.check.failed", timeout=5, check="login")[0]
        assert failed["code"] == "CODEX-E030" and "not UTF-8" in failed["error"]
        status = agent_status(worker)
        assert status["exit_code"] == 1 and status["state"]["gate"] == "closed"
        assert [r["code"] for r in status["state"]["reason"]] == ["CODEX-E030"]
        assert not worker.events("codex.watch.error"), worker.tail()
        assert "Traceback" not in worker.log_path.read_text()

        make_api_key_login(codex_bin, home.codex_home)  # the operator logs in again
        worker.wait_for("codex.gate.consuming", timeout=15, count=2)
        wait_until(lambda: agent_status(worker)["exit_code"] == 0, 10, what="a healthy status after the login")
