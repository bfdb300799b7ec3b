"""worker_entry.main.worker_argv: the celery command line a worker gets."""

from __future__ import annotations

import pytest

from agent.settings.config import load
from worker_entry.main import worker_argv

CODEX = load({"CODEX_SHARD_INDEX": "1", "AGENT_WORKER_NAME": "node"})
PLAIN = load({"AGENT_WORKER_NAME": "node"})


def _opt(argv: list[str], name: str) -> str | None:
    return argv[argv.index(name) + 1] if name in argv else None


class TestWorkerArgv:
    def test_codex_shard_defaults(self) -> None:
        """A shard consumes only its queue, one task at a time, prefetch 1, quietly (no banner)."""
        argv = worker_argv(CODEX, "default")
        assert argv[:2] == ["--quiet", "worker"]
        assert _opt(argv, "-Q") == "codex-1"
        assert (_opt(argv, "--concurrency"), _opt(argv, "--prefetch-multiplier")) == ("1", "1")
        assert _opt(argv, "--hostname") == "codex-1@node"

    def test_non_codex_worker_gets_explicit_default_queue(self) -> None:
        """Queues are always explicit, so deselect works on every Celery version."""
        argv = worker_argv(PLAIN, "default")
        assert _opt(argv, "-Q") == "default"
        assert "--concurrency" not in argv

    @pytest.mark.parametrize(
        ("extra", "queues"),
        [(["-Q", "default"], "codex-1,default"), (["--queues=a,b"], "codex-1,a,b"), (["-Qcodex-1,x"], "codex-1,x")],
        ids=["-Q", "--queues=", "-Qjoined"],
    )
    def test_user_queues_are_added_to_the_shard_queue(self, extra: list[str], queues: str) -> None:
        """Extra queues join the shard queue; it is never dropped or repeated."""
        assert _opt(worker_argv(CODEX, "default", extra), "-Q") == queues

    def test_user_options_win(self) -> None:
        """Concurrency, hostname and other args passed after -- are kept."""
        argv = worker_argv(CODEX, "default", ["-c", "2", "-n", "me@%h", "--without-mingle"])
        assert "--concurrency" not in argv and "--hostname" not in argv
        assert argv[-5:] == ["-c", "2", "-n", "me@%h", "--without-mingle"]
