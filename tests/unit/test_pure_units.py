"""Pure units that real workers cover only end to end: health, forked logins, the holder view,
the ``codex login status`` verdict, and the pre-flight's login cache (with the real CLI)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from agent.errors import LoginCheckError, NotLoggedInError
from agent.fleet.state import AgentState, judge_health
from agent.login.auth import AuthFacts, judge_status_output
from agent.settings.config import load
from agent.util.host import start_ticks
from agent.volume.inventory import VolumeStatus, forked_logins, holder_view
from agent.worker.checks import local_login_check
from agent.worker.preflight import Preflight
from testkit import make_api_key_login

FACTS = {"shard": 1, "volume": "codex_auth_1"}


def state(**overrides: Any) -> AgentState:
    me = psutil.Process()
    fields: dict[str, Any] = dict(
        worker="w",
        pid=me.pid,
        process_start=me.create_time(),
        process_ticks=start_ticks(me.pid),
        codex_worker=True,
        gate="open",
        gate_since=0.0,
        shard=1,
        queue="codex-1",
        volume="codex_auth_1",
        codex_home="/h",
    )
    return AgentState(**{**fields, **overrides})


class TestJudgeHealth:
    @pytest.mark.parametrize(
        ("overrides", "healthy", "says"),
        [
            ({}, True, "gate open"),
            ({"gate": "closed", "reason": [{"code": "CODEX-E034"}]}, False, "CODEX-E034"),
            ({"gate": "stopped"}, False, "not running"),
            ({"pid": 2**22 + 7}, False, "not running"),
            ({"codex_worker": False, "gate": "closed"}, True, "not a Codex worker"),
            # The wall clock stepped or slewed since the writer started (a freshly booted machine):
            # its start by the clock moved, its start in ticks did not. Judged by the clock, as
            # before, this live worker was "not running" and its HEALTHCHECK failed.
            ({"process_start": psutil.Process().create_time() - 3.0}, True, "gate open"),
            # The pid now belongs to a process that started later: not the writer.
            ({"process_ticks": (start_ticks(os.getpid()) or 0) - 1}, False, "not running"),
            ({"process_ticks": None}, False, "not running"),
        ],
        ids=[
            "open",
            "closed-names-code",
            "stopped",
            "dead-writer",
            "non-codex",
            "clock-stepped",
            "pid-reused",
            "no-ticks",
        ],
    )
    def test_verdicts(self, overrides: dict[str, Any], healthy: bool, says: str) -> None:
        health = judge_health(state(**overrides))
        assert health.healthy is healthy and says in health.summary

    def test_no_state_is_unhealthy(self) -> None:
        assert judge_health(None).healthy is False


def volume(name: str, fingerprint: str | None, mode: str | None = "chatgpt") -> VolumeStatus:
    return VolumeStatus(name, {}, {"ok": True}, AuthFacts(present=True, auth_mode=mode, fingerprint=fingerprint), None)


class TestForkedLogins:
    def test_one_warning_per_shared_refresh_token(self) -> None:
        warnings = forked_logins([volume("a", "fp1"), volume("b", "fp1"), volume("c", "fp2"), volume("d", None)])
        assert [w.code for w in warnings] == ["CODEX-W031"] and "a, b" in warnings[0].message

    def test_api_key_copies_are_left_out(self) -> None:
        assert forked_logins([volume("a", "k", "apikey"), volume("b", "k", "apikey")]) == []


class TestHolderView:
    def test_fresh_and_stale_by_heartbeat(self, tmp_path: Path) -> None:
        marker = {
            "claim_id": "c",
            "worker": "w1",
            "container_id": None,
            "hostname": "h",
            "boot_id": "b",
            "pid": 1,
            "process_start": 1.0,
            "shard": 1,
            "volume": "codex_auth_1",
            "claimed_at": 100.0,
            "heartbeat": 100.0,
        }
        raw = json.dumps(marker).encode()
        assert holder_view(raw, stale_after=60, now=130.0)["fresh"] is True  # type: ignore[index]
        view = holder_view(raw, stale_after=60, now=200.0)
        assert view is not None and view["fresh"] is False and view["heartbeat_age_s"] == 100.0

    def test_no_marker_and_garbage(self) -> None:
        assert holder_view(None, 60) is None
        assert holder_view(b"\xff", 60) == {"holder": "unreadable marker", "fresh": False}


class TestLoginStatusVerdict:
    @pytest.mark.parametrize(
        ("rc", "out", "err", "method"),
        [
            (0, "Logged in using ChatGPT", "", "chatgpt"),
            (0, "Logged in using an API key - sk-***", "", "apikey"),
            (0, "Logged in", "", "unknown"),
        ],
        ids=["chatgpt", "apikey", "unknown"],
    )
    def test_logged_in(self, rc: int, out: str, err: str, method: str) -> None:
        assert judge_status_output(rc, out, err, facts=FACTS) == method

    @pytest.mark.parametrize(("rc", "out", "err"), [(1, "", "Not logged in"), (1, "", "")], ids=["says-so", "silent-1"])
    def test_not_logged_in(self, rc: int, out: str, err: str) -> None:
        with pytest.raises(NotLoggedInError):
            judge_status_output(rc, out, err, facts=FACTS)

    def test_any_other_failure_is_e033_with_a_scrubbed_tail(self) -> None:
        with pytest.raises(LoginCheckError) as failed:
            judge_status_output(7, "", "boom sk-proj-abcdefghijklmnopqrstuvwxyz123456", facts=FACTS)
        assert "exited 7" in failed.value.message and "abcdefghijklmnop" not in failed.value.message


class TestPreflightLoginCache:
    def make(self, tmp_path: Path, codex_bin: str, ttl: float) -> tuple[Preflight, list[float]]:
        home = tmp_path / ".codex"
        make_api_key_login(codex_bin, home)
        config = load({"CODEX_SHARD_INDEX": "1", "CODEX_HOME": str(home), "CODEX_BIN": codex_bin})
        calls: list[float] = []

        def counted(config: Any, facts: dict[str, Any]) -> Any:  # the real CLI, counted
            calls.append(time.monotonic())
            return local_login_check(config, facts)

        return Preflight(config, counted, ttl=ttl), calls

    def test_a_passed_check_vouches_until_auth_json_changes(self, tmp_path: Path, codex_bin: str) -> None:
        preflight, calls = self.make(tmp_path, codex_bin, ttl=600)
        preflight.check_login()
        preflight.check_login()
        assert len(calls) == 1
        auth = tmp_path / ".codex" / "auth.json"
        os.utime(auth, ns=(time.time_ns(), time.time_ns() + 10**9))  # a new mtime: a new login
        preflight.check_login()
        assert len(calls) == 2

    def test_an_expired_verdict_runs_the_cli_again(self, tmp_path: Path, codex_bin: str) -> None:
        preflight, calls = self.make(tmp_path, codex_bin, ttl=0.0)
        preflight.check_login()
        preflight.check_login()
        assert len(calls) == 2

    def test_forget_drops_the_verdict(self, tmp_path: Path, codex_bin: str) -> None:
        preflight, calls = self.make(tmp_path, codex_bin, ttl=600)
        preflight.check_login()
        preflight.forget()
        preflight.check_login()
        assert len(calls) == 2
