"""Messages point the right way: each fix is written for the process that reads it, and reports agree.

Issue 10 item 5: the refused worker was told to stop the healthy holder; a corrupt marker was
"removed" in the worker's log but E010 in `codex-agent check`; E030 called --device-auth headless;
W031's treatment of API-key copies lived only in a docstring.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from agent import errors
from agent.fleet.state import STATE_FIELDS, AgentState
from agent.login.auth import AuthFacts
from agent.volume.claim import MARKER_FIELDS, MARKER_FILE, Holder, VolumeClaim, marker_problem
from agent.volume.inventory import VolumeStatus, forked_logins
from testkit import REPO_ROOT

HOLDER_ID = "f" * 64


def _claim(directory: Path, worker: str) -> VolumeClaim:
    return VolumeClaim(directory, worker=worker, shard=1, volume="codex_auth_1")


def _holder() -> Holder:
    return Holder(
        claim_id="c1",
        worker="codex-worker-1",
        container_id=HOLDER_ID,
        hostname="h",
        boot_id="b",
        pid=7,
        process_start=1.0,
        shard=1,
        volume="codex_auth_1",
        claimed_at=1.0,
        heartbeat=1.0,
    )


class TestRefusedWorker:
    def test_the_fix_stops_this_worker_never_the_holder(self, tmp_path: Path) -> None:
        """E010 is read by the refused worker: its command stops itself, and names no holder id to stop."""
        error = _claim(tmp_path, "extra").refused(_holder())
        assert error.code == "CODEX-E010"
        assert HOLDER_ID[:12] in error.message  # who holds it is said...
        assert HOLDER_ID[:12] not in error.remediation  # ...but never offered as the one to stop
        assert "this worker is the extra one: stop it" in error.remediation
        assert f"stop process {os.getpid()}" in error.remediation  # outside a container: this process
        assert "leave the holder running" in error.remediation

    def test_runbook_e010_says_to_stop_the_extra_worker(self) -> None:
        section = _section(REPO_ROOT / "runbook.md", "## CODEX-E010")
        assert "Stop the extra one" in section and "never the holder" in section


class TestCorruptMarker:
    def test_the_holder_and_the_refused_check_say_the_same_thing(self, tmp_path: Path) -> None:
        """A corrupt marker: the holder's E011 and a second claimant's E010 both say it is unreadable."""
        holder = _claim(tmp_path, "holder")
        holder.acquire()
        try:
            (tmp_path / MARKER_FILE).write_bytes(b"\x00\xff garbage")
            with pytest.raises(errors.ClaimLostError) as lost:
                holder.verify()
            second = _claim(tmp_path, "check")
            won, seen = second.try_acquire()
            assert not won and seen is None
            refused = second.refused(seen)
        finally:
            holder.release()
        words = "the claim marker is unreadable"
        assert words in lost.value.message and words in refused.message
        assert "removed" not in lost.value.message + refused.message

    def test_a_missing_marker_is_called_missing(self, tmp_path: Path) -> None:
        holder = _claim(tmp_path, "holder")
        holder.acquire()
        try:
            (tmp_path / MARKER_FILE).unlink()
            with pytest.raises(errors.ClaimLostError, match="the claim marker is missing"):
                holder.verify()
        finally:
            holder.release()
        assert marker_problem(tmp_path) == "the claim marker is missing"


class TestNotLoggedIn:
    def test_e030_never_calls_device_auth_headless(self) -> None:
        """Headless means an API key through the login service or a copied auth.json, as the runbook says."""
        fix = errors.NotLoggedInError(shard=1, volume="codex_auth_1", cause="x").remediation
        assert "docker compose run --rm login-1" in fix
        assert "docker compose run --rm -T --entrypoint codex login-1 login --with-api-key < key-file" in fix
        assert "auth.json made elsewhere" in fix
        headless = fix[fix.index("headless") :]
        assert "--device-auth" not in headless and "device-auth" in fix[: fix.index("headless")]

    def test_runbook_headless_procedures_are_the_ones_e030_names(self) -> None:
        section = _section(REPO_ROOT / "runbook.md", "## Authenticating each volume once")
        assert "login --with-api-key" in section and "auth.json" in section
        assert "--device-auth" not in section


def _volume(name: str, mode: str | None, fingerprint: str | None) -> VolumeStatus:
    auth = AuthFacts(present=True, auth_mode=mode, fingerprint=fingerprint)
    return VolumeStatus(name=name, labels={}, login={"ok": True}, auth=auth, holder=None)


class TestForkedLogins:
    def test_a_copied_chatgpt_login_is_reported_once_naming_every_copy(self) -> None:
        found = forked_logins(
            [
                _volume("codex_auth_0", "chatgpt", "fp1"),
                _volume("codex_auth_2", "chatgpt", "fp1"),
                _volume("codex_auth_1", "chatgpt", "fp2"),
            ]
        )
        assert [w.code for w in found] == ["CODEX-W031"]
        assert "codex_auth_0, codex_auth_2" in found[0].message and "ChatGPT login" in found[0].message

    def test_copied_api_keys_are_not_reported(self) -> None:
        """A key is not rotated: one key in every shard keeps working, so W031 never names it."""
        assert forked_logins([_volume("codex_auth_0", "apikey", "fp1"), _volume("codex_auth_1", "apikey", "fp1")]) == []

    def test_unreadable_files_are_not_reported(self) -> None:
        assert forked_logins([_volume("a", "unreadable", None), _volume("b", "unreadable", None)]) == []

    @pytest.mark.parametrize("document", ["runbook.md", "README.md"])
    def test_both_documents_say_api_key_copies_are_not_warned(self, document: str) -> None:
        """The decision is written where operators read it, not only in a docstring."""
        text = " ".join((REPO_ROOT / document).read_text().split())
        assert re.search(r"API-key (logins are never reported|copies are not warned about)", text), document


class TestRecordFields:
    def test_marker_fields_are_the_holder_fields(self) -> None:
        assert set(MARKER_FIELDS) == set(Holder.__dataclass_fields__)

    def test_state_fields_are_the_state_fields(self) -> None:
        assert set(STATE_FIELDS) == set(AgentState.__dataclass_fields__)


def _section(path: Path, heading: str) -> str:
    text = path.read_text()
    start = text.index(heading)
    end = text.find("\n## ", start + len(heading))
    return text[start : end if end != -1 else None]
