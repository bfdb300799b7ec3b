"""agent.jobs.launcher.job_create_args: the pure translation of a job request into the Engine body the job policy approved."""

from __future__ import annotations

from typing import Any

import pytest
from docker.types import Mount

from agent.errors import JobRejectedError
from agent.jobs.launcher import JobPolicy, job_create_args, job_labels
from agent.settings.sandbox import Sandbox

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
    network="codex_jobs",
    sandbox=Sandbox(memory=2 * 1024**3, nano_cpus=1_000_000_000, pids_limit=256, read_only=True, tmp_size=64 * 1024**2),
)


def build(**request: Any) -> dict[str, Any]:
    environment = request.pop("environment", None)
    workspace = request.pop("workspace", None)
    return job_create_args(
        POLICY, "job:dev", ["codex", "login", "status"], environment=environment, workspace=workspace, options=request
    ).body


class TestImposed:
    def test_plain_request_gets_volume_home_user_labels(self) -> None:
        """With nothing passed, the agent adds the volume, CODEX_HOME, the user and every label."""
        body = build()
        assert body["HostConfig"]["Binds"] == [f"codex_auth_1:{HOME}:rw"]
        assert body["Env"] == [f"CODEX_HOME={HOME}"]
        assert body["User"] == "1000:1000"
        assert body["Labels"] == {
            "codex.shard": "1",
            "codex.queue": "codex-1",
            "codex.volume": "codex_auth_1",
            "codex.run_id": "r1",
            "codex.task_id": "t1",
            "codex.worker": "w1",
            "codex.guard": "codex_auth_1",
        }
        assert (body["Image"], body["Cmd"]) == ("job:dev", ["codex", "login", "status"])

    def test_workspace_is_mounted_and_becomes_working_dir(self) -> None:
        """A workspace volume is mounted read-write at /workspace, the default working dir."""
        body = build(workspace="run_42_ws", environment=["A=1"])
        assert "run_42_ws:/workspace:rw" in body["HostConfig"]["Binds"]
        assert body["WorkingDir"] == "/workspace"
        assert body["Env"] == ["A=1", f"CODEX_HOME={HOME}"]

    def test_every_job_gets_the_sandbox(self) -> None:
        """No capabilities, no new privileges, init, the limits, a read-only root with a private /tmp."""
        host = build()["HostConfig"]
        assert host["CapDrop"] == ["ALL"] and host["SecurityOpt"] == ["no-new-privileges"] and host["Init"] is True
        assert (host["Memory"], host["NanoCpus"], host["PidsLimit"]) == (2 * 1024**3, 1_000_000_000, 256)
        assert host["ReadonlyRootfs"] is True and host["Tmpfs"] == {"/tmp": "rw,nosuid,nodev,size=67108864"}
        assert host["NetworkMode"] == "codex_jobs" and (host["CgroupnsMode"], host["IpcMode"]) == ("private", "private")

    def test_allowed_options_pass_and_limits_may_tighten(self) -> None:
        """Named volumes, tmpfs, lower limits, no network and a restated sandbox are kept."""
        body = build(
            volumes={"scratch": {"bind": "/data", "mode": "ro"}},
            tmpfs=["/cache:size=1m"],
            mem_limit="512m",
            pids_limit=64,
            network_mode="none",
            user="1000",
            cap_drop=["NET_RAW"],
            security_opt=["no-new-privileges:true"],
            working_dir="/data",
            entrypoint=["sh"],
            read_only=True,
            init=True,
        )
        host = body["HostConfig"]
        assert host["Binds"] == [f"codex_auth_1:{HOME}:rw", "scratch:/data:ro"]
        assert host["Tmpfs"]["/cache"] == "size=1m" and host["Memory"] == 512 * 1024**2 and host["PidsLimit"] == 64
        assert host["NetworkMode"] == "none" and body["User"] == "1000:1000"
        assert host["CapDrop"] == ["ALL"] and host["SecurityOpt"] == ["no-new-privileges"]

    def test_no_network_policy_leaves_dockers_default(self) -> None:
        """Without CODEX_JOB_NETWORK the job gets Docker's default network."""
        policy = JobPolicy(**{**POLICY.__dict__, "network": None})
        assert job_create_args(policy, "job:dev", ["true"]).body["HostConfig"]["NetworkMode"] == "default"

    def test_the_launcher_and_the_guard_judge_with_one_function(self) -> None:
        """What the launcher sends passes the guard's own policy unchanged: one policy, one body."""
        from agent.jobs.policy import create_request

        body = build(workspace="run_42_ws", labels={"team": "a"})
        assert create_request(POLICY.shard_policy(), body).body == body


REFUSED = [
    ("privileged", {"privileged": True}, "privileged="),
    ("cap_add", {"cap_add": ["SYS_ADMIN"]}, "cap_add="),
    ("pid_host", {"pid_mode": "host"}, "pid_mode="),
    ("ipc_host", {"ipc_mode": "host"}, "ipc_mode="),
    ("uts_host", {"uts_mode": "host"}, "uts_mode="),
    ("userns_host", {"userns_mode": "host"}, "userns_mode="),
    ("devices", {"devices": ["/dev/sda:/dev/sda:rwm"]}, "devices="),
    ("network_host", {"network_mode": "host"}, "CODEX_JOB_NETWORK"),
    ("network_other", {"network_mode": "bridge"}, "NetworkMode"),
    ("sysctls", {"sysctls": {"net.ipv4.ip_forward": "1"}}, "sysctls="),
    ("seccomp_unconfined", {"security_opt": ["seccomp=unconfined"]}, "seccomp=unconfined"),
    ("read_write_root", {"read_only": False}, "read_only="),
    ("no_init", {"init": False}, "init="),
    ("memory_above_limit", {"mem_limit": "8g"}, "Memory"),
    ("pids_unlimited", {"pids_limit": -1}, "PidsLimit"),
    ("cpus_above_limit", {"nano_cpus": 4_000_000_000}, "NanoCpus"),
    ("bind_root", {"volumes": ["/:/host"]}, "host path /"),
    (
        "bind_docker_socket",
        {"volumes": {"/var/run/docker.sock": {"bind": "/var/run/docker.sock", "mode": "rw"}}},
        "docker.sock",
    ),
    ("bind_docker_volumes", {"volumes": ["/var/lib/docker/volumes:/v:ro"]}, "/var/lib/docker/volumes"),
    ("bind_mount_type", {"mounts": [Mount("/h", "/", type="bind")]}, "type bind"),
    ("forged_shard_label", {"labels": {"codex.shard": "2"}}, "codex.shard"),
    ("forged_label_list", {"labels": ["codex.volume"]}, "codex.volume"),
    ("compose_label", {"labels": {"com.docker.compose.project": "x"}}, "com.docker.compose.project"),
    ("cpu_weight_above_default", {"cpu_shares": 262144}, "CpuShares"),
    ("shm_above_tmp_size", {"shm_size": "64g"}, "ShmSize"),
    ("other_auth_volume_by_name", {"volumes": {"codex_auth_0": {"bind": "/x", "mode": "rw"}}}, "codex_auth_0"),
    ("other_auth_volume_by_label", {"volumes": ["team_login:/x"]}, "team_login"),
    ("own_volume_elsewhere", {"volumes": ["codex_auth_1:/other:ro"]}, "at /home/app/.codex only"),
    ("auth_volume_host_path", {"volumes": ["/var/lib/docker/volumes/codex_auth_2/_data:/y"]}, "codex_auth_2"),
    ("anything_at_job_home", {"volumes": {"scratch": {"bind": HOME, "mode": "rw"}}}, HOME),
    ("under_job_home", {"volumes": ["scratch:/home/app/.codex/sub"]}, HOME),
    ("job_home_unnormalised", {"volumes": ["scratch:/home/app//.codex/"]}, HOME),
    ("mount_at_job_home", {"mounts": [Mount(HOME, "scratch")]}, "Mounts"),
    ("mount_of_auth_volume", {"mounts": [Mount("/m", "codex_auth_7")]}, "codex_auth_7"),
    ("tmpfs_at_job_home", {"tmpfs": {HOME: ""}}, "Tmpfs"),
    ("workspace_is_auth_volume", {"workspace": "codex_auth_0"}, "codex_auth_0"),
    ("root_by_name", {"user": "root"}, "root"),
    ("root_by_uid", {"user": "0"}, "root"),
    ("root_group", {"user": "1000:0"}, "root"),
    ("other_user", {"user": "1001:1001"}, "CODEX_JOB_USER"),
    ("codex_home_elsewhere", {"environment": {"CODEX_HOME": "/tmp/x"}}, "CODEX_HOME"),
    ("volumes_from", {"volumes_from": ["w1"]}, "volumes_from"),
    ("unknown_option", {"restart_policy": {"Name": "always"}}, "allow-list"),
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
        assert build(environment={"CODEX_HOME": HOME + "/"})["Env"] == [f"CODEX_HOME={HOME}"]


class TestStdin:
    def test_a_job_fed_on_stdin_keeps_it_open_once_and_nothing_else_changes(self) -> None:
        """A seed job's body asks for stdin once (it ends when the launcher closes its attach)."""
        fed = job_create_args(POLICY, "job:dev", ["tar", "-x"], workspace="codex_ws_x_r1", stdin=True).body
        plain = job_create_args(POLICY, "job:dev", ["tar", "-x"], workspace="codex_ws_x_r1").body
        assert (fed["AttachStdin"], fed["OpenStdin"], fed["StdinOnce"]) == (True, True, True)
        assert not plain.get("OpenStdin") and not plain.get("StdinOnce")
        assert {k: v for k, v in fed.items() if k not in ("AttachStdin", "OpenStdin", "StdinOnce")} == {
            k: v for k, v in plain.items() if k not in ("AttachStdin", "OpenStdin", "StdinOnce")
        }
