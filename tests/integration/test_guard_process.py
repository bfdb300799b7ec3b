"""The guard as operators run it: one per socket directory, a health check that sees its endpoints,
entry points that start nothing by accident, and one hostile shard that cannot slow another."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import docker
import pytest

from testkit import TEST_LABEL, Images, unique_name
from testkit.guard import GuardProcess

pytestmark = [pytest.mark.docker]


def _guard(env: dict[str, str], *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    environ = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env}
    return subprocess.run(
        [sys.executable, "-m", "agent.guard", *args],
        env=environ,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture
def guard(docker_client: docker.DockerClient) -> GuardProcess:
    volume = docker_client.volumes.create(unique_name("gp"), labels=dict(TEST_LABEL)).name
    running = GuardProcess({0: volume})
    yield running
    running.close()
    docker_client.volumes.get(volume).remove(force=True)


class TestOneGuardPerDirectory:
    def test_a_second_guard_refuses_and_the_first_keeps_serving(self, guard: GuardProcess) -> None:
        """CODEX-E046 naming the holder, exit 1, nothing removed: the first guard's endpoint still answers."""
        env = {"CODEX_GUARD_SOCKET_DIR": str(guard.dir), "CODEX_GUARD_SHARDS": f"0={guard.shards[0]}"}
        inode = guard.socket(0).stat().st_ino
        second = _guard(env)
        assert second.returncode == 1, second.stdout + second.stderr
        line = json.loads(second.stdout.strip().splitlines()[-1])
        assert line["code"] == "CODEX-E046" and f"pid {guard.proc.pid}" in line["message"]
        assert guard.socket(0).stat().st_ino == inode and guard.client(0).ping() is True

    def test_a_deleted_endpoint_makes_the_probe_unhealthy(self, guard: GuardProcess) -> None:
        """--probe is healthy while every endpoint answers, and names the one whose socket is gone."""
        env = {"CODEX_GUARD_SOCKET_DIR": str(guard.dir), "CODEX_GUARD_SHARDS": f"0={guard.shards[0]}"}
        healthy = _guard(env, "--probe")
        assert (healthy.returncode, healthy.stdout.strip()) == (0, "healthy")
        guard.socket(0).unlink()
        unhealthy = _guard(env, "--probe")
        assert unhealthy.returncode == 1 and "shard 0" in unhealthy.stdout

    def test_a_stopped_guard_removes_only_the_sockets_it_bound(self, guard: GuardProcess) -> None:
        """A socket put in place of its own (another process's) survives its stop."""
        path = guard.socket(0)
        path.unlink()
        import socket

        foreign = socket.socket(socket.AF_UNIX)
        foreign.bind(str(path))
        try:
            guard.stop()
            assert path.exists()
        finally:
            foreign.close()


class TestEntryPoints:
    @pytest.mark.parametrize("args", [["--help"], ["--version"]])
    def test_help_and_version_print_and_start_nothing(self, args: list[str]) -> None:
        """Exit 0, output, and no socket directory made."""
        directory = Path(tempfile.mkdtemp(prefix="cwa-guard-help-")) / "sockets"
        done = _guard({"CODEX_GUARD_SOCKET_DIR": str(directory), "CODEX_GUARD_SHARDS": "0=v"}, *args)
        assert done.returncode == 0 and done.stdout.strip() and not directory.exists()

    def test_an_unknown_argument_is_a_usage_error(self) -> None:
        """Exit 2 with usage; the guard does not start on the real socket."""
        directory = Path(tempfile.mkdtemp(prefix="cwa-guard-bad-")) / "sockets"
        done = _guard({"CODEX_GUARD_SOCKET_DIR": str(directory), "CODEX_GUARD_SHARDS": "0=v"}, "--serve-please")
        assert done.returncode == 2 and "usage" in done.stderr and not directory.exists()


class TestOneShardCannotStallAnother:
    def test_a_launch_completes_while_another_shard_floods(
        self, docker_client: docker.DockerClient, images: Images
    ) -> None:
        """Shard 1 holds connections, sends slow heads and deep bodies; shard 0's create-start-wait-remove
        completes and the flood's connections beyond the cap are turned away (the timing is bench row 13b)."""
        import socket

        volumes = [docker_client.volumes.create(unique_name(f"gf{i}"), labels=dict(TEST_LABEL)).name for i in (0, 1)]
        guard = GuardProcess({0: volumes[0], 1: volumes[1]})
        held: list[socket.socket] = []
        try:
            for _ in range(80):
                sock = socket.socket(socket.AF_UNIX)
                sock.connect(str(guard.socket(1)))
                sock.sendall(b"POST /v1.41/containers/create HTTP/1.1\r\nHost: d\r\n")  # a head that never ends
                held.append(sock)
            deep = b"[" * 20000 + b"]" * 20000
            for _ in range(5):
                with socket.socket(socket.AF_UNIX) as sock:
                    sock.connect(str(guard.socket(1)))
                    sock.sendall(
                        b"POST /v1.41/containers/create HTTP/1.1\r\nHost: d\r\nContent-Type: application/json\r\n"
                        b"Content-Length: %d\r\n\r\n" % len(deep) + deep
                    )
            container = guard.client(0).containers.run(images.job, ["true"], detach=True, labels=dict(TEST_LABEL))
            assert container.wait(timeout=60)["StatusCode"] == 0
            container.remove()
            turned_away = [e for e in guard.events("codex.guard.refused") if e.get("rule") == "connections"]
            assert turned_away and all(e["shard"] == 1 for e in turned_away)
        finally:
            for sock in held:
                sock.close()
            guard.close()
            for name in volumes:
                docker_client.volumes.get(name).remove(force=True)
