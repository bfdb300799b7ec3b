"""Check outcomes are logged when they change, and an unchanged failure again after a while.

The checks run for real against a plain temporary folder (not a mount: CODEX-E020) with a Codex
binary that does not exist (CODEX-E031).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from structlog.testing import capture_logs

import agent.worker.checks
from agent.settings.config import load
from agent.worker.checks import Checker


def _checker(home: Path, codex_bin: Path) -> Checker:
    home.mkdir(mode=0o700, exist_ok=True)
    config = load(
        {"CODEX_SHARD_INDEX": "0", "CODEX_HOME": str(home), "CODEX_BIN": str(codex_bin), "HOME": str(home.parent)}
    )
    return Checker(config)


@pytest.fixture
def logs(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[dict[str, Any]]]:
    """What agent.worker.checks logs during the test.

    Once the JSON logging is set up (by any earlier test), loggers cache their processors on first
    use, so the module gets a fresh logger made while the capture is in place.
    """
    with capture_logs() as captured:
        monkeypatch.setattr(agent.worker.checks, "log", structlog.get_logger(agent.worker.checks.__name__))
        yield captured


def _failed(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [line for line in logs if line["event"] == "codex.check.failed"]


class TestOutcomeLog:
    def test_an_unchanged_failure_is_logged_once(self, tmp_path: Path, logs: list[dict[str, Any]]) -> None:
        checker = _checker(tmp_path / ".codex", tmp_path / "no-codex")
        for _ in range(4):
            assert not checker.run().ok
        assert sorted(line["code"] for line in _failed(logs)) == ["CODEX-E020", "CODEX-E031"]

    def test_a_changed_failure_is_logged_again(self, tmp_path: Path, logs: list[dict[str, Any]]) -> None:
        checker = _checker(tmp_path / ".codex", tmp_path / "no-codex")
        checker.run()
        checker.config = load({**_env(checker), "CODEX_BIN": str(tmp_path / "still-no-codex")})
        checker.run()
        assert [line["code"] for line in _failed(logs)].count("CODEX-E031") == 2

    def test_an_unchanged_failure_is_repeated_after_the_reminder_interval(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, logs: list[dict[str, Any]]
    ) -> None:
        checker = _checker(tmp_path / ".codex", tmp_path / "no-codex")
        monkeypatch.setattr(agent.worker.checks, "FAILURE_REMINDER_INTERVAL", 0.0)
        checker.run()
        checker.run()
        failed = _failed(logs)
        assert len(failed) == 4
        assert "repeated" not in failed[0] and "repeated" not in failed[1]
        assert all(line["repeated"] is True and line["unchanged_for_s"] >= 0 for line in failed[2:])


def _env(checker: Checker) -> dict[str, str]:
    config = checker.config
    return {"CODEX_SHARD_INDEX": "0", "CODEX_HOME": str(config.codex_home), "HOME": str(config.codex_home.parent)}
