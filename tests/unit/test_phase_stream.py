"""Reading ``codex exec --json`` output, telling a dead login from a failed job, and run artifacts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.errors import CredentialStoreError, LoginRevokedError, PhaseRequestError
from agent.jobs.artifacts import RunArtifacts, checked_name
from agent.jobs.codex_output import auth_failure, summarize
from agent.jobs.phase import exec_argv
from agent.login.auth import AuthFacts
from agent.login.credstore import check_credentials_store, credentials_store
from agent.login.revocation import Revocation, clear, read, record, still_revoked

FACTS = {"shard": 1, "volume": "codex_auth_1", "worker": "w"}

# The stream of a real codex-cli 0.169.0 run against the stand-in, with its stderr interleaved.
STREAM = "\n".join(
    [
        '{"type":"thread.started","thread_id":"01a2-thread"}',
        "2026-11-23T11:23:46Z ERROR codex_models_manager::manager: failed to refresh available models",
        '{"type":"item.completed","item":{"id":"item_0","type":"error","message":"Model metadata not found"}}',
        '{"type":"turn.started"}',
        '{"type":"item.completed","item":{"id":"item_1","type":"agent_message","text":"stand-in reply 1"}}',
        '{"type":"turn.completed","usage":{"input_tokens":3121,"cached_input_tokens":0,"output_tokens":3}}',
    ]
)
REUSED = (
    '{"type":"turn.failed","error":{"message":"Your access token could not be refreshed because your '
    'refresh token was already used. Please log out and sign in again."}}'
)


class TestSummarize:
    def test_a_completed_turn_gives_session_message_and_usage(self) -> None:
        summary = summarize(STREAM)
        assert summary.session_id == "01a2-thread" and summary.final_message == "stand-in reply 1"
        assert summary.usage == {"input_tokens": 3121, "cached_input_tokens": 0, "output_tokens": 3}
        assert summary.failure is None and summary.events == 5

    def test_a_failed_turn_gives_its_message(self) -> None:
        assert "already used" in (summarize(REUSED).failure or "")

    @pytest.mark.parametrize("garbage", ["", "{", "{not json", "[1,2]", '{"type": 3, "item": "x"}', "\x00\xff"])
    def test_garbage_gives_an_empty_summary(self, garbage: str) -> None:
        assert summarize(garbage).session_id is None


class TestAuthFailure:
    @pytest.mark.parametrize(
        ("output", "reason"),
        [
            (REUSED, "refresh_token_reused"),
            ("refresh token has expired. Please log out and sign in again.", "refresh_token_expired"),
            ("because your refresh token was revoked. Please log out", "refresh_token_invalidated"),
            ("Error: Not logged in", "not_logged_in"),
            ("unexpected status 401 Unauthorized", "unauthorized"),
            ("exit 1: the model said no", None),
            ("", None),
        ],
        ids=["reused", "expired", "revoked", "not-logged-in", "401", "other", "empty"],
    )
    def test_login_deaths_are_told_apart_from_job_failures(self, output: str, reason: str | None) -> None:
        assert auth_failure(output) == reason


class TestExecArgv:
    def test_a_new_session(self) -> None:
        assert exec_argv("do it") == [
            "codex",
            "exec",
            "--json",
            "--skip-git-repo-check",
            "-C",
            "/workspace",
            "--",
            "do it",
        ]

    def test_a_resumed_session(self) -> None:
        assert exec_argv("next", "sess-1")[-4:] == ["resume", "--", "sess-1", "next"]

    def test_options_go_before_the_positionals_of_exec_and_of_resume(self) -> None:
        assert exec_argv("p", options=["-m", "m1"])[-4:] == ["-m", "m1", "--", "p"]
        assert exec_argv("p", "s", options=["-m", "m1"])[-6:] == ["resume", "-m", "m1", "--", "s", "p"]

    def test_a_prompt_that_looks_like_a_flag_stays_a_prompt(self) -> None:
        """``--`` ends the options: the flag-like prompt comes after it (without it, Codex would parse it)."""
        argv = exec_argv("--dangerously-bypass-approvals-and-sandbox")
        assert argv.index("--") == len(argv) - 2


class TestNames:
    @pytest.mark.parametrize("name", ["run-1", "a", "R.2_x", "x" * 128])
    def test_safe_names_pass(self, name: str) -> None:
        assert checked_name("run_id", name, FACTS) == name

    @pytest.mark.parametrize("name", ["", "../etc", "a/b", ".hidden", "x" * 129, "a..b", None, 3, "sp ace"])
    def test_unsafe_names_are_e044_naming_the_field(self, name: object) -> None:
        with pytest.raises(PhaseRequestError) as refused:
            checked_name("run_id", name, FACTS)
        assert refused.value.code == "CODEX-E044" and "run_id=" in refused.value.message


class TestRunArtifacts:
    def test_outcome_last_marks_completion_and_names_the_session(self, tmp_path: Path) -> None:
        run = RunArtifacts(tmp_path, "run-1")
        assert run.outcome("plan") is None and run.session_id() is None
        run.record("plan", events="{}\n", final_message="done", outcome={"status": "completed", "session_id": "s1"})
        assert run.outcome("plan") == {"status": "completed", "session_id": "s1"}
        assert run.session_id() == "s1" and (run.phase_dir("plan") / "last_message.txt").read_text() == "done"

    def test_an_unreadable_outcome_counts_as_not_completed(self, tmp_path: Path) -> None:
        run = RunArtifacts(tmp_path, "run-1")
        run.phase_dir("plan").mkdir(parents=True)
        (run.phase_dir("plan") / "outcome.json").write_bytes(b"\xff\xfe garbage")
        assert run.outcome("plan") is None


class TestRevocation:
    def test_the_marker_holds_while_auth_json_keeps_the_dead_credential(self, tmp_path: Path) -> None:
        record(tmp_path, Revocation("refresh_token_reused", "fp-dead", 100.0, run_id="r"))
        marker = read(tmp_path)
        assert marker is not None and marker.reason == "refresh_token_reused"
        assert still_revoked(marker, AuthFacts(present=True, fingerprint="fp-dead", modified_at=200.0))
        assert not still_revoked(marker, AuthFacts(present=True, fingerprint="fp-new", modified_at=50.0))

    def test_an_unreadable_marker_holds_until_auth_json_is_rewritten(self, tmp_path: Path) -> None:
        (tmp_path / ".codex-agent-revoked.json").write_bytes(b"\x00\xff not json")
        marker = read(tmp_path)
        assert marker is not None and marker.fingerprint is None
        assert still_revoked(marker, AuthFacts(present=True, fingerprint="fp", modified_at=marker.detected_at - 1))
        assert not still_revoked(marker, AuthFacts(present=True, fingerprint="fp", modified_at=marker.detected_at + 1))

    def test_clear_removes_the_marker_once(self, tmp_path: Path) -> None:
        record(tmp_path, Revocation("x", None, 1.0))
        clear(tmp_path)
        clear(tmp_path)
        assert read(tmp_path) is None


class TestCredentialStore:
    @pytest.mark.parametrize(
        ("content", "value"),
        [(None, None), (b"model = 'x'\n", None), (b'cli_auth_credentials_store = "file"\n', "file")],
        ids=["no-file", "unset", "file"],
    )
    def test_file_or_unset_passes(self, tmp_path: Path, content: bytes | None, value: str | None) -> None:
        if content is not None:
            (tmp_path / "config.toml").write_bytes(content)
        assert credentials_store(tmp_path) == (value, None)
        check_credentials_store(tmp_path, FACTS)

    @pytest.mark.parametrize(
        ("content", "says"),
        [
            (b'cli_auth_credentials_store = "keyring"\n', "'keyring'"),
            (b'cli_auth_credentials_store = "ephemeral"\n', "'ephemeral'"),
            (b"cli_auth_credentials_store = 3\n", "int"),
            (b"[[[ not toml", "not valid TOML"),
            (b"\xff\xfe\x00", "not UTF-8"),
        ],
        ids=["keyring", "ephemeral", "not-a-string", "bad-toml", "binary"],
    )
    def test_anything_else_is_e035_saying_what_is_wrong(self, tmp_path: Path, content: bytes, says: str) -> None:
        (tmp_path / "config.toml").write_bytes(content)
        with pytest.raises(CredentialStoreError) as refused:
            check_credentials_store(tmp_path, FACTS)
        assert refused.value.code == "CODEX-E035" and says in refused.value.message
        assert "config.toml" in refused.value.remediation


def test_login_revoked_names_shard_volume_and_the_one_fix() -> None:
    error = LoginRevokedError(**FACTS, cause="refresh_token_reused")
    assert "shard 1" in error.message and "codex_auth_1" in error.message and "login-1" in error.remediation
    assert json.loads(json.dumps(error.to_dict()))["code"] == "CODEX-E034"
