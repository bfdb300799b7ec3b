"""agent.jobs.reconcile: engine timestamps, what a job container still tells, and who counts as an orphan."""

from __future__ import annotations

from typing import Any

import pytest

from agent.jobs.container import JobContainer, docker_time
from agent.jobs.reconcile import is_orphan

LABELS = {
    "codex.queue": "codex-1",
    "codex.shard": "1",
    "codex.volume": "codex_auth_1",
    "codex.worker": "w1",
    "codex.run_id": "run-7",
    "codex.task_id": "task-7",
    "other": "x",
}


def _inspect(status: str, started: str, finished: str, exit_code: int = 0) -> dict[str, Any]:
    return {
        "Id": "c" * 64,
        "Created": "2026-11-23T10:00:00.000000001Z",
        "Config": {"Image": "codex-worker-agent/job:dev", "Labels": LABELS},
        "State": {"Status": status, "ExitCode": exit_code, "StartedAt": started, "FinishedAt": finished},
    }


ZERO = "0001-01-01T00:00:00Z"


class TestDockerTime:
    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("2026-11-23T10:00:00Z", 1795428000.0),
            ("2026-11-23T10:00:01.5Z", 1795428001.5),
            ("2026-11-23T10:00:01.123456789Z", 1795428001.123456789),
            ("2026-11-23T11:00:00+01:00", 1795428000.0),
        ],
        ids=["whole", "fraction", "nanoseconds", "offset"],
    )
    def test_parses_engine_timestamps(self, text: str, expected: float) -> None:
        """RFC 3339 with up to nine fraction digits and any zone gives epoch seconds."""
        assert docker_time(text) == pytest.approx(expected, abs=1e-6)

    @pytest.mark.parametrize("text", [ZERO, "", None, "yesterday", "2026-11-23 10:00:00"])
    def test_zero_time_and_garbage_are_none(self, text: str | None) -> None:
        """The engine's zero time (never started) and anything unparsable mean unknown."""
        assert docker_time(text) is None


class TestJobContainer:
    def test_exited_container_gives_exit_code_duration_and_audit_fields(self) -> None:
        """An exited job: its exit code, StartedAt..FinishedAt, and the six audit fields from its labels."""
        job = JobContainer.from_inspect(_inspect("exited", "2026-11-23T10:00:01Z", "2026-11-23T10:00:03.25Z", 3))
        assert (job.status, job.exit_code, job.duration_s) == ("exited", 3, 2.25)
        assert job.image == "codex-worker-agent/job:dev" and job.container_id == "c" * 64
        assert job.audit == {
            "queue": "codex-1",
            "shard": 1,
            "volume": "codex_auth_1",
            "worker": "w1",
            "run_id": "run-7",
            "task_id": "task-7",
        }

    def test_never_started_container_has_no_exit_code_or_duration(self) -> None:
        """Created but never started: exit code and duration are unknown, not 0."""
        job = JobContainer.from_inspect(_inspect("created", ZERO, ZERO))
        assert (job.exit_code, job.duration_s) == (None, None)

    def test_running_container_has_no_exit_code_yet(self) -> None:
        """Still running: no exit code until it is killed."""
        job = JobContainer.from_inspect(_inspect("running", "2026-11-23T10:00:01Z", ZERO))
        assert (job.exit_code, job.duration_s) == (None, None)

    def test_missing_labels_and_state_do_not_raise(self) -> None:
        """A container with hardly any inspect data still gives a record (fields None)."""
        job = JobContainer.from_inspect({"Id": "x"})
        assert job.status == "unknown" and job.audit["task_id"] is None and job.exit_code is None


class TestIsOrphan:
    START = 1795428000.0

    def _job(self, created: str, task_id: str | None = "task-7") -> JobContainer:
        data = _inspect("running", "2026-11-23T10:00:01Z", ZERO)
        data["Created"] = created
        data["Config"]["Labels"] = {**LABELS, "codex.task_id": task_id or ""}
        return JobContainer.from_inspect(data)

    @pytest.mark.parametrize(
        ("created", "task_id", "active", "orphan"),
        [
            ("2026-11-23T09:59:59Z", "task-7", True, True),
            ("2026-11-23T10:00:05Z", "task-7", True, False),
            ("2026-11-23T10:00:05Z", "task-7", False, True),
            ("2026-11-23T10:00:05Z", None, True, True),
            (ZERO, "task-7", True, True),
        ],
        ids=["previous-life", "live-task", "task-gone", "no-task-label", "unknown-creation"],
    )
    def test_orphan_table(self, created: str, task_id: str | None, active: bool, orphan: bool) -> None:
        """Older than this process, or its task is not held here: an orphan; a live task's container is not."""
        job = self._job(created, task_id)
        assert is_orphan(job, process_start=self.START, active=lambda _: active) is orphan
