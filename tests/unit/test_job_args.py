"""agent.jobs.job_create_args: the pure translation of a job request into create arguments."""

from __future__ import annotations

from typing import Any

import pytest
from docker.types import Mount

from agent.errors import JobRejectedError
from agent.jobs import JobPolicy, job_create_args, job_labels

HOME = "/home/app/.codex"
POLICY = JobPolicy(
    volume="codex_auth_1",
    job_home=HOME,
    job_user="1000:1000",
    labels=job_labels(
        {"shard": 1, "queue": "codex-1", "volume": "codex_auth_1", "run_id": "r1", "task_id": "t1", "worker": "w1"}
    ),
    auth_volumes=frozenset({"team_login"}),
    facts={"shard": 1, "volume": "codex_auth_1", "worker": "w1"},
)


def build(**request: Any) -> dict[str, Any]:
    environment = request.pop("environment", None)
    workspace = request.pop("workspace", None)
    return job_create_args(POLICY, "job:dev", ["codex", "login", "status"], environment=environment, workspace=workspace, options=request)


class TestImposed:
    def test_plain_request_gets_volume_home_user_labels(self) -> None:
        """With nothing passed, the agent adds the volume, CODEX_HOME, the user and every label."""
        args = build()
        assert args["volumes"] == [f"codex_auth_1:{HOME}:rw"]
        assert args["environment"] == {"CODEX_HOME": HOME}
        assert args["user"] == "1000:1000"
        assert args["labels"] == {
            "codex.shard": "1", "codex.queue": "codex-1", "codex.volume": "codex_auth_1",
            "codex.run_id": "r1", "codex.task_id": "t1", "codex.worker": "w1",
        }
        assert (args["image"], args["command"]) == ("job:dev", ["codex", "login", "status"])

    def test_task_labels_cannot_forge_audit_labels(self) -> None:
        """Task labels are kept, but the codex.* audit labels are the agent's."""
        args = build(labels={"team": "a", "codex.shard": "2"})
        assert args["labels"]["team"] == "a" and args["labels"]["codex.shard"] == "1"

    def test_workspace_is_mounted_and_becomes_working_dir(self) -> None:
        """A workspace volume is mounted read-write at /workspace, the default working dir."""
        args = build(workspace="run_42_ws", environment=["A=1"])
        assert "run_42_ws:/workspace:rw" in args["volumes"]
        assert args["working_dir"] == "/workspace"
        assert args["environment"] == {"A": "1", "CODEX_HOME": HOME}

    def test_other_mounts_and_options_pass_through(self) -> None:
        """Unrelated mounts and options reach containers.create unchanged."""
        args = build(volumes={"/srv/data": {"bind": "/data", "mode": "ro"}}, network_mode="none", user="1000")
        assert args["volumes"] == [f"codex_auth_1:{HOME}:rw", "/srv/data:/data:ro"]
        assert args["network_mode"] == "none" and args["user"] == "1000:1000"


REFUSED = [
    ("other_auth_volume_by_name", {"volumes": {"codex_auth_0": {"bind": "/x", "mode": "rw"}}}, "codex_auth_0"),
    ("other_auth_volume_by_label", {"volumes": ["team_login:/x"]}, "team_login"),
    ("own_volume_elsewhere", {"volumes": ["codex_auth_1:/other:ro"]}, "already mounts"),
    ("auth_volume_host_path", {"volumes": ["/var/lib/docker/volumes/codex_auth_2/_data:/y"]}, "codex_auth_2"),
    ("anything_at_job_home", {"volumes": {"scratch": {"bind": HOME, "mode": "rw"}}}, HOME),
    ("under_job_home", {"volumes": ["scratch:/home/app/.codex/sub"]}, HOME),
    ("job_home_unnormalised", {"volumes": ["scratch:/home/app//.codex/"]}, HOME),
    ("mount_at_job_home", {"mounts": [Mount(HOME, "scratch")]}, "mounts="),
    ("mount_of_auth_volume", {"mounts": [Mount("/m", "codex_auth_7")]}, "codex_auth_7"),
    ("tmpfs_at_job_home", {"tmpfs": {HOME: ""}}, "tmpfs="),
    ("workspace_is_auth_volume", {"workspace": "codex_auth_0"}, "codex_auth_0"),
    ("root_by_name", {"user": "root"}, "root"),
    ("root_by_uid", {"user": "0"}, "root"),
    ("root_group", {"user": "1000:0"}, "root"),
    ("other_user", {"user": "1001:1001"}, "CODEX_JOB_USER"),
    ("codex_home_elsewhere", {"environment": {"CODEX_HOME": "/tmp/x"}}, "CODEX_HOME"),
    ("volumes_from", {"volumes_from": ["w1"]}, "volumes_from"),
    ("auto_remove", {"auto_remove": True}, "auto_remove"),
]


class TestRefused:
    @pytest.mark.parametrize(("request_", "needle"), [r[1:] for r in REFUSED], ids=[r[0] for r in REFUSED])
    def test_forbidden_request_is_codex_e041(self, request_: dict[str, Any], needle: str) -> None:
        """Each forbidden request raises CODEX-E041 naming what is wrong."""
        with pytest.raises(JobRejectedError) as info:
            build(**dict(request_))
        assert info.value.code == "CODEX-E041"
        assert needle in info.value.message and "shard 1" in info.value.message

    def test_codex_home_equal_to_job_home_is_accepted(self) -> None:
        """Passing CODEX_HOME that already matches CODEX_JOB_HOME is harmless."""
        assert build(environment={"CODEX_HOME": HOME + "/"})["environment"]["CODEX_HOME"] == HOME
