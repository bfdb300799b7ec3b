"""Smoke test of the images built by images/build.sh, on the real Docker engine."""

from __future__ import annotations

import subprocess

import docker
import pytest

from testkit import DockerCleanup, Images, VolumeFactory, make_api_key_login_in_volume, run_once

pytestmark = [pytest.mark.docker, pytest.mark.codex]

CODEX_HOME = "/home/app/.codex"


class TestWorkerImage:
    """codex-worker-agent/worker:dev."""

    def test_runs_the_same_codex_cli_as_the_host(
        self,
        docker_client: docker.DockerClient,
        images: Images,
        docker_cleanup: DockerCleanup,
        codex_bin: str,
    ) -> None:
        """`codex --version` in the image matches the pinned CLI scripts/provision.sh installed."""
        host = subprocess.run([codex_bin, "--version"], capture_output=True, text=True, check=True)
        code, output = run_once(docker_client, docker_cleanup, images.worker, ["--version"], entrypoint=["codex"])
        assert (code, output.strip()) == (0, host.stdout.strip())

    def test_declares_user_codex_home_and_healthcheck(self, docker_client: docker.DockerClient, images: Images) -> None:
        """The image runs as app with CODEX_HOME set and the agent's status probe as HEALTHCHECK."""
        config = docker_client.images.get(images.worker).attrs["Config"]
        assert config["User"] == "app"
        assert f"CODEX_HOME={CODEX_HOME}" in config["Env"]
        assert config["Healthcheck"]["Test"] == ["CMD", "codex-agent", "status", "--probe"]
        assert config["Entrypoint"] == ["worker-entry"]

    def test_fresh_volume_inherits_owner_and_mode(
        self,
        docker_client: docker.DockerClient,
        images: Images,
        docker_cleanup: DockerCleanup,
        volume_factory: VolumeFactory,
    ) -> None:
        """A new named volume mounted at CODEX_HOME is owned by 1000:1000 with mode 0700."""
        volume = volume_factory(uid=None, gid=None, mode=None)
        code, output = run_once(
            docker_client,
            docker_cleanup,
            images.worker,
            ["-c", f"id -u; stat -c '%u %g %a' {CODEX_HOME}"],
            entrypoint=["sh"],
            volumes={volume.name: CODEX_HOME},
        )
        assert (code, output.split("\n", 1)) == (0, ["1000", "1000 1000 700\n"])

    def test_a_worker_of_another_uid_than_the_job_user_is_refused_at_start(
        self,
        docker_client: docker.DockerClient,
        images: Images,
        docker_cleanup: DockerCleanup,
    ) -> None:
        """uid 1001 with CODEX_JOB_USER=1000:1000 stops at start with CODEX-E001; with the matching
        CODEX_JOB_USER the same worker gets past that check (it stops later: no broker)."""
        argv = [
            "sh",
            "-c",
            "CODEX_SHARD_INDEX=0 CELERY_BROKER_URL=amqp://guest:guest@127.0.0.1:1// "
            "AGENT_STATE_DIR=/tmp/s AGENT_FAIL_FAST=1 HOME=/tmp worker-entry 2>&1; echo exit=$?",
        ]
        code, output = run_once(
            docker_client, docker_cleanup, images.worker, argv[1:], entrypoint=argv[:1], user="1001:1001"
        )
        assert "error CODEX-E001: CODEX_JOB_USER='1000:1000' is invalid" in output and "uid 1001" in output, output
        assert output.strip().endswith("exit=2")
        argv[2] = "CODEX_JOB_USER=1001:1001 " + argv[2]
        code, output = run_once(
            docker_client, docker_cleanup, images.worker, argv[1:], entrypoint=argv[:1], user="1001:1001"
        )
        assert "CODEX_JOB_USER" not in output, output


class TestJobImage:
    """codex-worker-agent/job:dev."""

    def test_empty_volume_is_not_logged_in(
        self,
        docker_client: docker.DockerClient,
        images: Images,
        docker_cleanup: DockerCleanup,
        volume_factory: VolumeFactory,
    ) -> None:
        """`codex login status` on an empty volume exits 1 with "Not logged in"."""
        volume = volume_factory()
        code, output = run_once(
            docker_client,
            docker_cleanup,
            images.job,
            ["codex", "login", "status"],
            volumes={volume.name: CODEX_HOME},
        )
        assert code == 1
        assert "Not logged in" in output

    def test_api_key_login_in_volume_is_seen_by_job(
        self,
        docker_client: docker.DockerClient,
        images: Images,
        docker_cleanup: DockerCleanup,
        volume_factory: VolumeFactory,
    ) -> None:
        """A login made in the volume through the worker image is valid in a job, key masked."""
        volume = volume_factory()
        key = make_api_key_login_in_volume(images.worker, volume.name)
        code, output = run_once(
            docker_client,
            docker_cleanup,
            images.job,
            ["codex", "login", "status"],
            volumes={volume.name: CODEX_HOME},
        )
        assert code == 0, output
        assert key not in output
