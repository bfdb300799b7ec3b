"""Fuzz: any bytes in the claim marker, config.toml, the published state and the drain journal.

These files live where other processes (or people) can write: the marker in the shared volume, the
state and journal under ``AGENT_STATE_DIR``. Their readers must answer (a holder, a state, a set of
keys, or "none / unreadable") and never raise, and what they answer must be usable downstream.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.errors import CredentialStoreError
from agent.fleet.state import STATE_FILE, AgentState, judge_health, read_state
from agent.login.auth import AUTH_FILE, inspect_auth_file
from agent.login.credstore import CONFIG_FILE, SETTING, check_credentials_store, credentials_store
from agent.routing.drain_journal import MoveJournal, journal_path, message_key
from agent.util.smallfile import UnreadableFile, read_small_file
from agent.volume.claim import MARKER_FILE, Holder, marker_problem, read_marker
from agent.volume.inventory import holder_view
from testkit.fuzz import any_bytes, any_text, budget, is_strict_json, json_fields, json_values

_HOLDER_FIELDS = tuple(Holder.__dataclass_fields__)

marker_documents = st.fixed_dictionaries({name: json_fields for name in _HOLDER_FIELDS})
"""Markers with every field present, each of any JSON type."""

state_documents = st.fixed_dictionaries(
    {
        name: json_fields
        for name in (
            "worker",
            "pid",
            "process_start",
            "codex_worker",
            "gate",
            "gate_since",
            "shard",
            "queue",
            "volume",
            "codex_home",
        )
    },
    optional={"reason": json_values, "checks": json_fields, "claim": json_fields, "updated_at": json_fields},
)
"""Published states with every field present, each of any JSON type."""


def _bytes_of(document: dict[str, Any]) -> bytes:
    return json.dumps(document).encode("utf-8", "surrogatepass")


class TestClaimMarker:
    @budget(150)
    @given(content=st.one_of(any_bytes, marker_documents.map(_bytes_of)))
    def test_any_marker_gives_a_usable_holder_or_none(self, tmp_path: Path, content: bytes) -> None:
        """Garbage or fields of any type: a holder whose methods work, or None and a stated problem."""
        directory = tmp_path
        (directory / MARKER_FILE).write_bytes(content)
        holder = read_marker(directory)
        if holder is None:
            assert marker_problem(directory).startswith("the claim marker is unreadable")
            return
        assert holder.describe().startswith("worker ")
        assert holder.is_fresh(60.0) in (True, False) and holder.same_kernel() in (True, False)

    @budget(200)
    @given(content=st.one_of(any_bytes, marker_documents.map(_bytes_of)))
    def test_any_marker_gives_a_strict_json_holder_view(self, content: bytes) -> None:
        """``codex-agent volumes`` shows any marker as a holder or "unreadable marker", in strict JSON."""
        view = holder_view(content, stale_after=60.0, now=1_000.0)
        assert view is not None and is_strict_json(view)
        assert view["fresh"] in (True, False)

    def test_an_infinite_heartbeat_is_not_forever_fresh(self, tmp_path: Path) -> None:
        """``1e999`` parses as infinity: such a marker would never go stale, so it is unreadable."""
        good = {name: "x" for name in _HOLDER_FIELDS} | {
            "container_id": None,
            "pid": 1,
            "process_start": 1.0,
            "shard": 0,
            "volume": None,
            "claimed_at": 1.0,
            "heartbeat": time.time(),
        }
        (tmp_path / MARKER_FILE).write_text(json.dumps(good))
        assert read_marker(tmp_path) is not None
        (tmp_path / MARKER_FILE).write_text(json.dumps(good).replace(str(good["heartbeat"]), "1e999"))
        assert read_marker(tmp_path) is None

    def test_missing_and_unreadable_markers_are_told_apart(self, tmp_path: Path) -> None:
        assert marker_problem(tmp_path) == "the claim marker is missing"
        (tmp_path / MARKER_FILE).write_bytes(b"\xff\xfe")
        assert marker_problem(tmp_path).startswith("the claim marker is unreadable")


class TestPublishedState:
    @budget(150)
    @given(content=st.one_of(any_bytes, state_documents.map(_bytes_of)))
    def test_any_state_file_gives_a_health_verdict(self, tmp_path: Path, content: bytes) -> None:
        """``status --probe`` on any state file: healthy or not, with a summary; never a traceback."""
        directory = tmp_path
        (directory / STATE_FILE).write_bytes(content)
        state = read_state(directory)
        health = judge_health(state)
        assert isinstance(health.summary, str) and health.healthy in (True, False)
        if state is not None:
            assert is_strict_json(state.to_dict()) or not is_strict_json(json.loads(content))

    def test_a_state_of_the_wrong_shape_is_unreadable_not_healthy(self, tmp_path: Path) -> None:
        """A gate field that is not text never passes as an open gate."""
        (tmp_path / STATE_FILE).write_text(json.dumps({"gate": ["open"], "pid": "1"}))
        assert read_state(tmp_path) is None and judge_health(None).healthy is False

    def test_a_real_state_round_trips(self, tmp_path: Path) -> None:
        from agent.fleet.state import write_state

        state = AgentState(
            worker="w",
            pid=1,
            process_start=1.0,
            codex_worker=True,
            gate="closed",
            gate_since=1.0,
            shard=0,
            queue="codex-0",
            volume="codex_auth_0",
            codex_home="/h",
            reason=[{"code": "CODEX-E030", "message": "m"}],
        )
        write_state(tmp_path, state)
        assert read_state(tmp_path) == state


class TestDrainJournal:
    @budget(100)
    @given(content=any_bytes)
    def test_any_journal_content_opens_with_the_keys_it_can_read(
        self, tmp_path_factory: pytest.TempPathFactory, content: bytes
    ) -> None:
        """A journal of any bytes (torn, binary, a bomb): the drain opens it and keeps every readable key."""
        path = tmp_path_factory.mktemp("state") / "drain" / "codex-3.x.jsonl"
        path.parent.mkdir()
        path.write_bytes(content + b'\n{"key": "kept", "task_id": "t", "to": "codex-0"}\n')
        with MoveJournal(path, "codex-3") as journal:
            assert "kept" in journal
            journal.record("new", "t-2", "codex-1")
        with MoveJournal(path, "codex-3") as journal:
            assert "kept" in journal and "new" in journal

    @budget(200)
    @given(url=any_text, queue=any_text)
    def test_any_broker_url_names_a_journal(self, url: str, queue: str) -> None:
        """Any CELERY_BROKER_URL the config accepted (a bad port included) still names one journal file."""
        state_dir = Path("/state")
        path = journal_path(state_dir, f"amqp://{url}", queue or "q")
        assert path.parent == state_dir / "drain"

    @budget(100)
    @given(
        task_id=st.one_of(st.none(), any_text),
        body=st.one_of(st.binary(), any_text),
        headers=st.dictionaries(any_text, json_fields, max_size=4),
    )
    def test_any_message_has_a_key(self, task_id: str | None, body: bytes | str, headers: dict[str, Any]) -> None:
        """Any task id, body (bytes or text, lone surrogates included) and headers give a stable key."""
        key = message_key(task_id, body, headers)
        assert len(key) == 32 and key == message_key(task_id, body, dict(headers))


toml_documents = st.one_of(
    st.sampled_from(["file", "keyring", "auto", "ephemeral", ""]).map(lambda v: f'{SETTING} = "{v}"\n'),
    json_fields.map(lambda v: f"{SETTING} = {json.dumps(v)}\n"),
    st.text(max_size=80).map(lambda t: f"[section]\n{SETTING} = {t}\n"),
    st.sampled_from([f"{SETTING} = " + "[" * 50_000, "a = " + "{b = " * 20_000, "[" * 3000 + "a" + "]" * 3000]),
).map(lambda text: text.encode("utf-8", "surrogatepass"))
"""config.toml of any content: the setting of any type, garbage after it, nesting bombs."""


class TestConfigToml:
    @budget(200)
    @given(content=st.one_of(any_bytes, toml_documents))
    def test_any_config_toml_gives_a_store_or_a_cause(self, tmp_path: Path, content: bytes) -> None:
        """Any bytes in config.toml: the configured store or why it cannot be read; a coded error, never a traceback."""
        (tmp_path / CONFIG_FILE).write_bytes(content)
        value, cause = credentials_store(tmp_path)
        assert value is None or cause is None
        assert cause is None or (isinstance(cause, str) and cause)
        if value not in (None, "file") or cause is not None:
            with pytest.raises(CredentialStoreError):
                check_credentials_store(tmp_path, {"shard": 0, "volume": "codex_auth_0"})
        else:
            check_credentials_store(tmp_path, {"shard": 0, "volume": "codex_auth_0"})

    def test_a_nesting_bomb_is_invalid_toml(self, tmp_path: Path) -> None:
        """tomllib recurses into nested arrays: a deep one raised RecursionError through the login check."""
        (tmp_path / CONFIG_FILE).write_text(f"{SETTING} = " + "[" * 50_000)
        assert credentials_store(tmp_path) == (None, "is not valid TOML (nested too deeply)")


class TestPlantedFiles:
    """What can sit at auth.json's or config.toml's path instead of a file: a cause, never a hang."""

    def test_a_fifo_does_not_hang_the_reader(self, tmp_path: Path) -> None:
        os.mkfifo(tmp_path / AUTH_FILE)
        os.mkfifo(tmp_path / CONFIG_FILE)
        assert inspect_auth_file(tmp_path).unreadable == "not a regular file"
        assert credentials_store(tmp_path) == (None, "is unreadable: not a regular file")

    def test_a_directory_and_a_huge_file_are_causes(self, tmp_path: Path) -> None:
        (tmp_path / AUTH_FILE).mkdir()
        with open(tmp_path / CONFIG_FILE, "wb") as big:
            big.truncate(2 << 20)  # sparse: 2 MiB without writing them
        assert inspect_auth_file(tmp_path).unreadable == "not a regular file"
        assert credentials_store(tmp_path)[1] == f"is unreadable: larger than {1 << 20} bytes"

    def test_an_absent_file_is_absent(self, tmp_path: Path) -> None:
        assert read_small_file(tmp_path / "nothing", 10) is None
        assert read_small_file(tmp_path / "not-a-dir" / "x", 10) is None

    def test_a_file_the_worker_may_not_read_is_a_cause(self, tmp_path: Path) -> None:
        """Read by an unprivileged process (a forked child drops to nobody when the test runs as root)."""
        (tmp_path / AUTH_FILE).write_text("{}")
        os.chmod(tmp_path / AUTH_FILE, 0)
        assert _as_nobody(lambda: _cause_of(tmp_path / AUTH_FILE)) == "cannot be opened: Permission denied"


def _cause_of(path: Path) -> str:
    try:
        read_small_file(path, 10)
    except UnreadableFile as e:
        return e.cause
    return "read"


def _as_nobody(task: Callable[[], str]) -> str:
    """``task()`` run in a forked child without root (as uid 65534 when we are root)."""
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop root, answer through the pipe, never return into pytest
        try:
            if os.geteuid() == 0:
                os.setgroups([])
                os.setgid(65534)
                os.setuid(65534)
            os.write(writer, task().encode())
        finally:
            os._exit(0)
    os.close(writer)
    with os.fdopen(reader) as answer:
        text = answer.read()
    os.waitpid(pid, 0)
    return text


class TestRecordsDeclaredOnce:
    def test_field_types_come_from_the_dataclass(self) -> None:
        """A record's accepted JSON types are read off its annotations: floats take ints, optionals null."""
        from agent.fleet.roster import ENTRY_FIELDS
        from agent.volume.claim import MARKER_FIELDS

        assert MARKER_FIELDS["pid"] == (int,) and MARKER_FIELDS["heartbeat"] == (int, float)
        assert MARKER_FIELDS["container_id"] == (str, type(None)) and MARKER_FIELDS["shard"] == (int, type(None))
        assert ENTRY_FIELDS["codes"] == (list,) and ENTRY_FIELDS["used_5h"] == (int, float, type(None))
