"""A non-root worker runs as CODEX_JOB_USER: its 0700 volume must be readable to its own jobs."""

from __future__ import annotations

import pytest

from agent.errors import ConfigError
from agent.settings.config import load
from agent.worker.runtime import _check_worker_user


class TestWorkerUser:
    def test_a_worker_of_another_uid_is_refused_naming_the_variable(self) -> None:
        """uid 1001 with CODEX_JOB_USER=1000:1000: CODEX-E001 naming CODEX_JOB_USER and the worker's uid."""
        with pytest.raises(ConfigError) as info:
            _check_worker_user(load({"CODEX_SHARD_INDEX": "0"}), uid=1001)
        assert info.value.facts["variable"] == "CODEX_JOB_USER" and "uid 1001" in info.value.message

    @pytest.mark.parametrize(
        ("uid", "env"),
        [(1000, {}), (0, {}), (1001, {"CODEX_JOB_USER": "1001:1001"}), (1001, {"CODEX_JOB_IMAGE": "none"})],
        ids=["job-user", "root-warned-only", "set-to-the-worker", "no-jobs"],
    )
    def test_what_passes(self, uid: int, env: dict[str, str]) -> None:
        """The job user itself, root (warned by the mount check, CODEX-W002), or a worker that runs no jobs."""
        _check_worker_user(load({"CODEX_SHARD_INDEX": "0", **env}), uid=uid)
