"""`codex-agent check --json` inside real containers of the worker image, on real volumes."""

from __future__ import annotations

import json
import os
import time
from typing import Any

import docker
import pytest

from testkit import DockerCleanup, Images, VolumeFactory, make_api_key_login_in_volume, run_once
from testkit.workers import wait_until

HOME = "/home/app"
CODEX_HOME = f"{HOME}/.codex"
SOCKET = "/var/run/docker.sock"


def _check(
    client: docker.DockerClient,
    cleanup: DockerCleanup,
    image: str,
    *,
    expected_volume: str,
    mounts: dict[str, dict[str, str]],
    with_socket: bool = False,
) -> dict[str, Any]:
    """Run `codex-agent check --json` as the image's user (app, uid 1000) and parse its report."""
    volumes = dict(mounts)
    group_add: list[int] = []
    if with_socket:
        volumes[SOCKET] = {"bind": SOCKET, "mode": "rw"}
        group_add = [os.stat(SOCKET).st_gid]
    container = client.containers.create(
        image,
        ["check", "--json"],
        entrypoint=["codex-agent"],
        environment={"CODEX_SHARD_INDEX": "0", "CODEX_VOLUME_NAME": expected_volume, "HOME": HOME},
        volumes=volumes,
        group_add=group_add,
        labels={"cwa.test": "1"},
    )
    cleanup.container(container)
    container.start()
    status = container.wait(timeout=60)
    stdout = container.logs(stdout=True, stderr=False).decode()
    report: dict[str, Any] = json.loads(stdout)
    report["exit_code"] = status["StatusCode"]
    report["container_id"] = container.id
    report["by_name"] = {c["name"]: c for c in report["checks"]}
    return report


def _rw(volume: str) -> dict[str, dict[str, str]]:
    return {volume: {"bind": CODEX_HOME, "mode": "rw"}}


@pytest.fixture
def logged_in_volume(volume_factory: VolumeFactory, images: Images) -> str:
    volume = volume_factory("healthy").name
    make_api_key_login_in_volume(images.worker, volume)
    return volume


class TestHealthyVolume:
    @pytest.mark.parametrize("with_socket", [False, True], ids=["mountinfo", "docker-socket"])
    def test_every_check_passes_and_names_the_volume(
        self,
        docker_client: docker.DockerClient,
        docker_cleanup: DockerCleanup,
        images: Images,
        logged_in_volume: str,
        with_socket: bool,
    ) -> None:
        """A logged-in, private volume at CODEX_HOME: all ok, the mount check reports its name."""
        report = _check(
            docker_client,
            docker_cleanup,
            images.worker,
            expected_volume=logged_in_volume,
            mounts=_rw(logged_in_volume),
            with_socket=with_socket,
        )
        assert report["exit_code"] == 0 and report["ok"] is True
        assert [(c["name"], c["ok"]) for c in report["checks"]] == [
            ("claim", True),
            ("mount", True),
            ("lease", True),
            ("login", True),
        ]
        mount = report["by_name"]["mount"]["details"]
        assert mount["volume"] == logged_in_volume
        assert mount["source"] == ("docker" if with_socket else "mountinfo")
        assert report["by_name"]["login"]["message"] == "logged in (apikey)"


class TestBrokenSetups:
    def test_plain_directory_is_not_mounted(
        self, docker_client: docker.DockerClient, docker_cleanup: DockerCleanup, images: Images
    ) -> None:
        """CODEX_HOME in the container's own layer: CODEX-E020 with the mount command as the fix."""
        report = _check(docker_client, docker_cleanup, images.worker, expected_volume="codex_auth_0", mounts={})
        mount = report["by_name"]["mount"]
        assert report["exit_code"] == 1
        assert mount["code"] == "CODEX-E020"
        assert f"docker run -v codex_auth_0:{CODEX_HOME}" in mount["remediation"]

    def test_another_volume_is_the_wrong_volume(
        self,
        docker_client: docker.DockerClient,
        docker_cleanup: DockerCleanup,
        images: Images,
        volume_factory: VolumeFactory,
    ) -> None:
        """The volume of another shard at CODEX_HOME: CODEX-E021 naming both."""
        other = volume_factory("other").name
        report = _check(docker_client, docker_cleanup, images.worker, expected_volume="codex_auth_0", mounts=_rw(other))
        mount = report["by_name"]["mount"]
        assert mount["code"] == "CODEX-E021"
        assert other in mount["message"] and "codex_auth_0" in mount["message"]

    @pytest.mark.parametrize(
        ("uid", "mode", "shown"),
        [(1000, 0o755, "mode 0755 owned by uid 1000"), (0, 0o700, "mode 0700 owned by uid 0")],
        ids=["mode-0755", "owned-by-root"],
    )
    def test_loose_permissions_are_refused(
        self,
        docker_client: docker.DockerClient,
        docker_cleanup: DockerCleanup,
        images: Images,
        volume_factory: VolumeFactory,
        uid: int,
        mode: int,
        shown: str,
    ) -> None:
        """Mode other than 0700, or another owner: CODEX-E023 with the chown/chmod fix."""
        volume = volume_factory("perm").name
        make_api_key_login_in_volume(images.worker, volume)  # not empty: Docker copies nothing into it
        code, output = run_once(
            docker_client,
            docker_cleanup,
            images.busybox,
            ["sh", "-c", f"chown {uid}:{uid} /v && chmod {mode:o} /v"],
            volumes={volume: "/v"},
            user="0",
        )
        assert code == 0, output
        report = _check(docker_client, docker_cleanup, images.worker, expected_volume=volume, mounts=_rw(volume))
        mount = report["by_name"]["mount"]
        assert mount["code"] == "CODEX-E023" and shown in mount["message"]
        assert "chmod 0700" in mount["remediation"] and volume in mount["remediation"]

    def test_read_only_mount_is_refused(
        self,
        docker_client: docker.DockerClient,
        docker_cleanup: DockerCleanup,
        images: Images,
        logged_in_volume: str,
    ) -> None:
        """`:ro` at CODEX_HOME: CODEX-E022 (Codex must rewrite auth.json on refresh)."""
        report = _check(
            docker_client,
            docker_cleanup,
            images.worker,
            expected_volume=logged_in_volume,
            mounts={logged_in_volume: {"bind": CODEX_HOME, "mode": "ro"}},
        )
        assert report["by_name"]["mount"]["code"] == "CODEX-E022"

    def test_logged_out_volume_names_the_login_fix(
        self,
        docker_client: docker.DockerClient,
        docker_cleanup: DockerCleanup,
        images: Images,
        volume_factory: VolumeFactory,
    ) -> None:
        """An empty volume: CODEX-E030 with the login command for this shard."""
        volume = volume_factory("empty").name
        report = _check(docker_client, docker_cleanup, images.worker, expected_volume=volume, mounts=_rw(volume))
        login = report["by_name"]["login"]
        assert report["by_name"]["mount"]["ok"] and login["code"] == "CODEX-E030"
        assert "login-0" in login["remediation"] and volume in login["message"]


HOLD = (
    "import time; from pathlib import Path; from agent.volume.claim import VolumeClaim; "
    f"claim = VolumeClaim(Path('{CODEX_HOME}'), worker='holder-worker', shard=0, volume='v'); claim.acquire(); "
    "print('held', flush=True); time.sleep(120)"
)


class TestTwoContainers:
    def test_second_container_on_a_claimed_volume_is_refused_with_the_holder(
        self,
        docker_client: docker.DockerClient,
        docker_cleanup: DockerCleanup,
        images: Images,
        logged_in_volume: str,
    ) -> None:
        """Two containers, one named volume: the second's claim check is CODEX-E010 naming the first container."""
        holder = docker_client.containers.run(
            images.worker,
            ["-c", HOLD],
            entrypoint=["python3"],
            volumes=_rw(logged_in_volume),
            detach=True,
            labels={"cwa.test": "1"},
        )
        docker_cleanup.container(holder)
        wait_until(lambda: b"held" in holder.logs(), 30, what="the first container to hold the claim")
        started = time.monotonic()
        report = _check(
            docker_client,
            docker_cleanup,
            images.worker,
            expected_volume=logged_in_volume,
            mounts=_rw(logged_in_volume),
        )
        claim = report["by_name"]["claim"]
        assert claim["code"] == "CODEX-E010"
        assert f"container {holder.id[:12]}" in claim["message"] and "holder-worker" in claim["message"]
        # The fix is read by the refused container: it stops itself, never the holder.
        assert f"docker stop {report['container_id'][:12]}" in claim["remediation"]
        assert holder.id[:12] not in claim["remediation"]
        assert time.monotonic() - started < 30

        holder.kill()  # the holder dies without releasing: the next claimant takes over
        holder.wait(timeout=30)
        report = _check(
            docker_client,
            docker_cleanup,
            images.worker,
            expected_volume=logged_in_volume,
            mounts=_rw(logged_in_volume),
        )
        assert report["by_name"]["claim"]["ok"] is True
