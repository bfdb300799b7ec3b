"""agent.volume.claim between real processes on a real folder."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from agent.errors import VolumeClaimedError
from agent.volume.claim import MARKER_FILE, VolumeClaim, read_marker

CLAIMER = Path(__file__).with_name("claimer.py")


def _start(directory: Path, worker: str, hold: bool = True, at: float | None = None) -> subprocess.Popen[str]:
    argv = [sys.executable, str(CLAIMER), str(directory), worker] + (["--hold"] if hold else [])
    argv += ["--at", str(at)] if at is not None else []
    return subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def _answer(process: subprocess.Popen[str]) -> dict[str, Any]:
    assert process.stdout is not None
    line = process.stdout.readline()
    assert line, "claimant printed nothing"
    answer: dict[str, Any] = json.loads(line)
    return answer


def _stop(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.kill()
    process.wait(timeout=10)


class TestTwoProcesses:
    def test_second_claimant_is_refused_and_told_the_holder(self, tmp_path: Path) -> None:
        """The second process fails at once with CODEX-E010 naming the first one's pid."""
        first = _start(tmp_path, "worker-a")
        try:
            assert _answer(first)["won"] is True
            second = _start(tmp_path, "worker-b", hold=False)
            answer = _answer(second)
            second.wait(timeout=10)
            assert answer["won"] is False
            assert answer["error"] == "CODEX-E010"
            assert "worker-a" in answer["message"] and f"pid {first.pid}" in answer["message"]
        finally:
            _stop(first)

    def test_kill_9_of_holder_frees_the_volume(self, tmp_path: Path) -> None:
        """After kill -9 the marker is stale but the next claimant wins, without a false alarm."""
        first = _start(tmp_path, "worker-a")
        assert _answer(first)["won"] is True
        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=10)
        stale = read_marker(tmp_path)
        assert stale is not None and stale.pid == first.pid
        second = _start(tmp_path, "worker-b")
        try:
            answer = _answer(second)
            assert answer["won"] is True, answer
            current = read_marker(tmp_path)
            assert current is not None and current.pid == second.pid
        finally:
            _stop(second)

    def test_release_removes_our_marker(self, tmp_path: Path) -> None:
        """A clean release leaves no marker naming a gone holder."""
        with VolumeClaim(tmp_path, worker="w", shard=0, volume="v"):
            assert (tmp_path / MARKER_FILE).exists()
        assert not (tmp_path / MARKER_FILE).exists()

    def test_race_of_twenty_has_exactly_one_winner(self, tmp_path: Path) -> None:
        """20 processes start together: one wins, 19 are refused, the marker is always whole JSON."""
        start_at = time.time() + 3  # every interpreter is up by then; they then race for real
        processes = [_start(tmp_path, f"worker-{i}", at=start_at) for i in range(20)]
        seen_markers = 0
        try:
            answers = []
            for process in processes:
                answers.append(_answer(process))
                marker_path = tmp_path / MARKER_FILE
                if marker_path.exists():
                    json.loads(marker_path.read_text())  # never half-written
                    seen_markers += 1
            winners = [a for a in answers if a["won"]]
            assert all(winners[0]["holder"] in a["message"] for a in answers if not a["won"])
            assert len(winners) == 1
            assert all(a["error"] == "CODEX-E010" for a in answers if not a["won"])
            marker = read_marker(tmp_path)
            assert marker is not None and marker.describe() == winners[0]["holder"]
        finally:
            for process in processes:
                _stop(process)
        assert seen_markers >= 19


def _plant_marker(directory: Path, *, boot_id: str, heartbeat_age: float) -> None:
    now = time.time()
    (directory / MARKER_FILE).write_text(
        json.dumps(
            {
                "claim_id": "f" * 32,
                "worker": "worker-on-host-b",
                "container_id": None,
                "hostname": "host-b",
                "boot_id": boot_id,
                "pid": 4242,
                "process_start": now - 3600,
                "shard": 0,
                "volume": "codex_auth_0",
                "claimed_at": now - 3600,
                "heartbeat": now - heartbeat_age,
            }
        )
    )


class TestOtherHost:
    def test_fresh_heartbeat_from_another_host_counts_as_held(self, tmp_path: Path) -> None:
        """Where flock is blind (network filesystem), a fresh foreign marker refuses the claim."""
        _plant_marker(tmp_path, boot_id="another-kernel", heartbeat_age=5)
        claim = VolumeClaim(tmp_path, worker="w", shard=0, volume="codex_auth_0", stale_after=60)
        with pytest.raises(VolumeClaimedError) as info:
            claim.acquire()
        assert "worker-on-host-b" in info.value.message and "host host-b" in info.value.message
        assert not claim.held

    def test_expired_heartbeat_from_another_host_is_taken_over(self, tmp_path: Path) -> None:
        """A foreign marker whose heartbeat is older than stale_after is replaced."""
        _plant_marker(tmp_path, boot_id="another-kernel", heartbeat_age=120)
        claim = VolumeClaim(tmp_path, worker="w", shard=0, volume="codex_auth_0", stale_after=60)
        try:
            holder = claim.acquire()
            current = read_marker(tmp_path)
            assert current is not None and current.claim_id == holder.claim_id
        finally:
            claim.release()

    def test_heartbeat_keeps_the_marker_fresh(self, tmp_path: Path) -> None:
        """The heartbeat thread rewrites the marker's heartbeat while the claim lives."""
        claim = VolumeClaim(tmp_path, worker="w", shard=0, volume="v")
        heartbeat = claim.heartbeat_service(0.05)
        try:
            first = claim.acquire().heartbeat
            heartbeat.start()
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                marker = read_marker(tmp_path)
                if marker is not None and marker.heartbeat > first:
                    break
                time.sleep(0.02)
            marker = read_marker(tmp_path)
            assert marker is not None and marker.heartbeat > first
            claim.verify()
        finally:
            heartbeat.stop()  # the service's stop releases the claim
        assert not claim.held and read_marker(tmp_path) is None
