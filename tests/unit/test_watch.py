"""agent.volume.watch on real directories: which changes run the checks, in events mode and in poll mode."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.settings.config import load
from agent.volume.claim import VolumeClaim
from agent.volume.watch import Snapshot, VolumeWatcher
from testkit.workers import wait_until

QUIET_S = 1.5
"""How long a change that must not run the checks is given (3x the poll interval)."""


class Recorder:
    """A recheck callable that counts its calls."""

    def __init__(self) -> None:
        self.calls = 0
        self.lock = threading.Lock()

    def __call__(self) -> None:
        with self.lock:
            self.calls += 1


def _home(tmp_path: Path) -> Path:
    home = tmp_path / ".codex"
    home.mkdir(mode=0o700)
    os.chmod(home, 0o700)
    return home


def _watcher(home: Path, mode: str, recorder: Recorder) -> VolumeWatcher:
    config = load(
        {
            "HOME": str(home.parent),
            "CODEX_SHARD_INDEX": "0",
            "AGENT_RECHECK_INTERVAL": "300",
            "AGENT_WATCH": mode,
        }
    )
    return VolumeWatcher(config, recorder, lambda: True)


@pytest.fixture
def watched(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[tuple[Path, Recorder, VolumeWatcher]]:
    home, recorder = _home(tmp_path), Recorder()
    watcher = _watcher(home, request.param, recorder)
    watcher.start()
    assert watcher.mode == request.param  # no silent fallback
    yield home, recorder, watcher
    watcher.stop()


def _rename_in(home: Path, name: str, content: str) -> None:
    staged = home / f".{name}.new"
    staged.write_text(content)
    os.rename(staged, home / name)


@pytest.mark.parametrize("watched", ["events", "poll"], indirect=True)
class TestBothModes:
    def test_login_landing_runs_the_checks(self, watched: tuple[Path, Recorder, VolumeWatcher]) -> None:
        """auth.json renamed into place (how a login lands) is a change in either mode."""
        home, recorder, _ = watched
        _rename_in(home, "auth.json", "{}")
        wait_until(lambda: recorder.calls >= 1, 10, what="a re-check after the login landed")

    def test_chmod_runs_the_checks_only_with_events(self, watched: tuple[Path, Recorder, VolumeWatcher]) -> None:
        """IN_ATTRIB on the directory itself re-checks; the stat loop misses a chmod (what events fix)."""
        home, recorder, watcher = watched
        os.chmod(home, 0o755)
        if watcher.mode == "events":
            wait_until(lambda: recorder.calls >= 1, 10, what="a re-check after the chmod")
        else:
            time.sleep(QUIET_S)
            assert recorder.calls == 0


@pytest.mark.parametrize("watched", ["events"], indirect=True)
class TestEventsMode:
    def test_heartbeats_and_other_files_do_not(self, watched: tuple[Path, Recorder, VolumeWatcher]) -> None:
        """The claim heartbeat (same claim id) and files the CLI keeps there wake the thread but change nothing."""
        home, recorder, _ = watched
        claim = VolumeClaim(home, worker="w", shard=0, volume="v")
        claim.acquire()
        wait_until(lambda: recorder.calls >= 1, 10, what="a re-check for the new claim")
        settled = recorder.calls
        try:
            for _ in range(3):
                claim.heartbeat()
                (home / "history.jsonl").write_text("{}\n")
                (home / "log").mkdir(exist_ok=True)
            time.sleep(QUIET_S)
        finally:
            claim.release()
        assert recorder.calls == settled

    def test_a_mount_over_codex_home_runs_the_checks_and_the_watch_follows(
        self, watched: tuple[Path, Recorder, VolumeWatcher], tmp_path: Path
    ) -> None:
        """The mount table changes: re-check, then events inside the new directory are seen too."""
        if os.geteuid() != 0:
            pytest.skip("mount privileges absent: this test bind-mounts a directory")
        home, recorder, _ = watched
        other = tmp_path / "other"
        other.mkdir(mode=0o700)
        subprocess.run(["mount", "--bind", str(other), str(home)], check=True)
        try:
            wait_until(lambda: recorder.calls >= 1, 10, what="a re-check after the mount")
            seen = recorder.calls
            _rename_in(home, "auth.json", "{}")
            wait_until(lambda: recorder.calls > seen, 10, what="a re-check after a login landed on the new mount")
        finally:
            subprocess.run(["umount", str(home)], check=False)


FALLBACK = """
import os, resource, sys
from agent.telemetry.audit import configure_logging
from agent.settings.config import load
from agent.volume.watch import VolumeWatcher
configure_logging("INFO")
config = load({"HOME": sys.argv[1], "CODEX_SHARD_INDEX": "0", "AGENT_WATCH": "events"})
watcher = VolumeWatcher(config, lambda: None, lambda: True)
limit = len(os.listdir("/proc/self/fd"))  # every descriptor in use: inotify_init1 gets EMFILE
resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
watcher.start()
print("MODE", watcher.mode)
"""


class TestFallback:
    def test_no_inotify_falls_back_to_polling_and_says_so(self, tmp_path: Path) -> None:
        """inotify_init1 failing for real (no descriptor left) gives poll mode and a codex.watch.polling line."""
        _home(tmp_path)
        done = subprocess.run(
            [sys.executable, "-c", FALLBACK, str(tmp_path)], capture_output=True, text=True, timeout=60, check=False
        )
        assert "MODE poll" in done.stdout, done.stdout + done.stderr
        assert '"event": "codex.watch.polling"' in done.stdout and "max_user_instances" in done.stdout


class TestSnapshot:
    def test_changes_names_the_fields_that_differ(self) -> None:
        """What changed is named, for the codex.watch.changed line."""
        before = Snapshot(auth=(1, 2, 3), claim_id="a")
        after = Snapshot(auth=(1, 2, 4), claim_id="a", mount=("/", "ext4", ("rw",), ("rw",)))
        assert before.changes(after) == ["auth", "mount"]
        assert before.changes(before) == []
