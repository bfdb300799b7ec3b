"""agent.jobs.launcher.JobLauncher on the real Docker engine with the real Codex CLI in the job image."""

from __future__ import annotations

import time

import docker
import pytest
from celery import Celery
from structlog.testing import capture_logs

from agent.errors import DockerUnavailableError, JobFailedError, JobRejectedError, JobTimeoutError
from agent.jobs.launcher import JobLauncher
from agent.settings import config as config_mod
from agent.telemetry.audit import JOB_FINISHED, JOB_STARTED
from agent.worker.runtime import install
from testkit import DockerCleanup, Images, VolumeFactory, make_api_key_login_in_volume

pytestmark = [pytest.mark.docker, pytest.mark.codex]

HOME = "/home/app/.codex"


def context(volume: str) -> dict[str, object]:
    return {
        "queue": "codex-1",
        "shard": 1,
        "volume": volume,
        "worker": "w-test",
        "run_id": f"run-{time.time_ns()}",
        "task_id": "task-1",
    }


def launcher(client: docker.DockerClient, volume: str) -> JobLauncher:
    config = config_mod.load({"CODEX_SHARD_INDEX": "1", "AGENT_WORKER_NAME": "w-test"})
    return JobLauncher(client, config, volume, context(volume))


def job_containers(client: docker.DockerClient, run_id: str) -> list[object]:
    return client.containers.list(all=True, filters={"label": f"codex.run_id={run_id}"})


class TestJobLauncher:
    def test_job_sees_the_login_and_leaves_audit_and_no_container(
        self,
        docker_client: docker.DockerClient,
        images: Images,
        volume_factory: VolumeFactory,
        docker_cleanup: DockerCleanup,
    ) -> None:
        """`codex login status` passes in the job; started/finished lines; output scrubbed; removed."""
        volume = volume_factory("job")
        key = make_api_key_login_in_volume(images.job, volume.name)
        jobs = launcher(docker_client, volume.name)
        since = int(time.time()) - 1
        with capture_logs() as logs:
            result = jobs.run(images.job, ["codex", "login", "status"])
        assert result.exit_code == 0 and "API key configured" in result.output
        assert key not in result.output and key[-6:] not in result.output
        events = [e for e in logs if e["event"] in (JOB_STARTED, JOB_FINISHED)]
        assert [e["event"] for e in events] == [JOB_STARTED, JOB_FINISHED]
        for event in events:
            assert event["volume"] == volume.name and event["shard"] == 1 and event["queue"] == "codex-1"
            assert event["container_id"] == result.container_id and event["image"] == images.job
        assert events[1]["exit_code"] == 0 and events[1]["duration_s"] >= 0
        assert job_containers(docker_client, jobs.context["run_id"]) == []
        created = docker_client.events(
            since=since,
            until=int(time.time()) + 1,
            decode=True,
            filters={"type": "container", "event": "create", "label": f"codex.run_id={jobs.context['run_id']}"},
        )
        attributes = [e["Actor"]["Attributes"] for e in created]
        assert len(attributes) == 1
        assert attributes[0]["codex.volume"] == volume.name and attributes[0]["codex.shard"] == "1"
        assert attributes[0]["codex.task_id"] == "task-1" and attributes[0]["codex.worker"] == "w-test"

    def test_job_runs_as_job_user_with_codex_home_and_workspace(
        self,
        docker_client: docker.DockerClient,
        images: Images,
        volume_factory: VolumeFactory,
    ) -> None:
        """The job runs as 1000:1000, CODEX_HOME is the volume, the workspace is mounted."""
        volume, workspace = volume_factory("job"), volume_factory("ws")
        result = launcher(docker_client, volume.name).run(
            images.job,
            ["sh", "-c", 'id -u; echo "$CODEX_HOME"; pwd; touch "$CODEX_HOME/x" && echo rw'],
            workspace=workspace.name,
            user="1000",
        )
        assert result.output.split() == ["1000", HOME, "/workspace", "rw"]

    def test_logged_out_volume_is_job_failed_with_exit_code(
        self,
        docker_client: docker.DockerClient,
        images: Images,
        volume_factory: VolumeFactory,
    ) -> None:
        """A non-zero exit raises CODEX-E042 with the exit code; check=False returns it."""
        jobs = launcher(docker_client, volume_factory("job").name)
        with pytest.raises(JobFailedError) as info:
            jobs.run(images.job, ["codex", "login", "status"])
        assert info.value.code == "CODEX-E042" and info.value.facts["exit_code"] == 1
        assert "Not logged in" in info.value.facts["output_tail"]
        assert jobs.run(images.job, ["codex", "login", "status"], check=False).exit_code == 1
        assert job_containers(docker_client, jobs.context["run_id"]) == []

    def test_forbidden_request_creates_nothing(
        self,
        docker_client: docker.DockerClient,
        images: Images,
        volume_factory: VolumeFactory,
    ) -> None:
        """Mounting another shard's login is CODEX-E041 and no container is created."""
        other = volume_factory("other", labels={"codex.auth": "1"})
        jobs = launcher(docker_client, volume_factory("job").name)
        with pytest.raises(JobRejectedError) as info:
            jobs.run(images.job, ["true"], volumes={other.name: {"bind": "/x", "mode": "ro"}})
        assert other.name in info.value.message
        assert job_containers(docker_client, jobs.context["run_id"]) == []

    def test_timeout_kills_and_removes_the_job(
        self,
        docker_client: docker.DockerClient,
        images: Images,
        volume_factory: VolumeFactory,
    ) -> None:
        """A job past its wall-clock limit is killed, removed, and reported as CODEX-E043 (not a failed job)."""
        jobs = launcher(docker_client, volume_factory("job").name)
        with capture_logs() as logs, pytest.raises(JobTimeoutError) as info:
            jobs.run(images.job, ["sleep", "30"], timeout=1.5)
        assert info.value.code == "CODEX-E043" and info.value.facts["timeout"] == 1.5
        assert [e.get("timed_out") for e in logs if e["event"] == JOB_FINISHED] == [True]
        assert job_containers(docker_client, jobs.context["run_id"]) == []

    def test_unreachable_engine_is_codex_e040(self, images: Images) -> None:
        """With no engine behind the socket the job fails with CODEX-E040, never a login error."""
        client = docker.DockerClient(base_url="unix:///nonexistent/docker.sock", version="1.41")
        with pytest.raises(DockerUnavailableError) as info:
            launcher(client, "codex_auth_1").run(images.job, ["true"])
        assert info.value.code == "CODEX-E040"

    def test_task_launcher_without_engine_is_codex_e040(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """The task's path (the agent's launcher, CodexTask.jobs) with no engine: CODEX-E040 before any job."""
        monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
        config = config_mod.load({"CODEX_SHARD_INDEX": "1", "CELERY_BROKER_URL": "memory://"})
        agent = install(Celery("t", broker="memory://", set_as_current=False), config, docker_client=None)
        with pytest.raises(DockerUnavailableError) as info:
            agent.launcher(context("codex_auth_1"))
        assert info.value.code == "CODEX-E040" and "connect" in info.value.message
