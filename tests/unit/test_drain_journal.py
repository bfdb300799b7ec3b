"""The drain journal: durable across runs, tolerant of a torn line, one drain per queue at a time."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.errors import DrainError
from agent.routing.drain_journal import MoveJournal, journal_path, message_key

HEADERS = {"id": "t-1", "task": "codex.phase", "retries": 0}


class TestMessageKey:
    def test_a_transport_redelivery_mark_is_the_same_message(self) -> None:
        """kombu's Redis restore adds ``redelivered``: the original is still recognised."""
        assert message_key("t-1", b"body", HEADERS) == message_key("t-1", b"body", {**HEADERS, "redelivered": True})

    def test_a_retry_of_the_same_task_is_another_message(self) -> None:
        """A Celery retry keeps the id and body but counts up ``retries``: never taken for a copy."""
        assert message_key("t-1", b"body", HEADERS) != message_key("t-1", b"body", {**HEADERS, "retries": 1})

    def test_two_tasks_with_the_same_arguments_differ(self) -> None:
        assert message_key("t-1", b"body", HEADERS) != message_key("t-2", b"body", {**HEADERS, "id": "t-2"})


class TestMoveJournal:
    def test_records_survive_into_the_next_run(self, tmp_path: Path) -> None:
        path = journal_path(tmp_path, "amqp://u:secret@rabbit:5672/codex", "codex-3")
        with MoveJournal(path, "codex-3") as journal:
            journal.record("k1", "t-1", "codex-0")
        with MoveJournal(path, "codex-3") as journal:
            assert "k1" in journal and "k2" not in journal and len(journal) == 1
        assert "secret" not in str(path)

    def test_a_line_torn_by_a_crash_is_skipped(self, tmp_path: Path) -> None:
        path = tmp_path / "codex-3.jsonl"
        path.write_text('{"key": "k1", "task_id": "t-1", "to": "codex-0"}\n{"key": "k2", "ta')
        with MoveJournal(path, "codex-3") as journal:
            assert "k1" in journal and len(journal) == 1

    def test_clear_forgets_everything(self, tmp_path: Path) -> None:
        path = tmp_path / "codex-3.jsonl"
        with MoveJournal(path, "codex-3") as journal:
            journal.record("k1", "t-1", "codex-0")
            journal.clear()
            assert "k1" not in journal and not path.exists()

    def test_a_second_holder_is_refused(self, tmp_path: Path) -> None:
        path = tmp_path / "codex-3.jsonl"
        with MoveJournal(path, "codex-3"):
            with pytest.raises(DrainError, match="another drain of codex-3"):
                MoveJournal(path, "codex-3").__enter__()

    def test_brokers_and_queues_get_their_own_journal(self, tmp_path: Path) -> None:
        one = journal_path(tmp_path, "amqp://guest:guest@localhost:5672/a", "codex-3")
        assert one != journal_path(tmp_path, "amqp://guest:guest@localhost:5672/b", "codex-3")
        assert one != journal_path(tmp_path, "amqp://guest:guest@localhost:5672/a", "codex-4")
        assert one == journal_path(tmp_path, "amqp://guest:other@localhost:5672/a", "codex-3")

    def test_an_unusable_state_dir_is_a_clear_error(self, tmp_path: Path) -> None:
        """A state dir that cannot hold the journal stops the drain before anything moves, naming the fix."""
        blocker = tmp_path / "not-a-dir"
        blocker.write_text("")
        with pytest.raises(DrainError, match="set AGENT_STATE_DIR to a writable directory") as refused:
            MoveJournal(journal_path(blocker, "redis://localhost:6379/0", "codex-3"), "codex-3").__enter__()
        assert refused.value.code == "CODEX-E060" and str(blocker) in refused.value.message
