"""The stack on a real single-node Docker Swarm, deployed by ``scripts/swarm-up`` from docker-compose.yaml.

``docker swarm init --advertise-addr 127.0.0.1`` for this test only, and ``docker swarm leave
--force`` in the fixture's teardown whatever happens. The project's images are used by their local
tags (no registry exists). The broker is the host's RabbitMQ (``--broker host``), on a private vhost.
At first only shard 0's node label is set: shard 0 runs a task with its login (audit line,
HEALTHCHECK, ``codex-agent fleet``), is logged out and back without a restart, and has its login moved
out and back by the runbook's procedure (label off, ``login-export``, ``login-import``, label on);
shards 1 and 2 stay Pending (the placement constraint is hard) with no volume created. Then shard 1's
label brings it up closed on an empty volume until it is logged in, shard 2's comes up on its login,
and each of the three shards runs the run its affinity key routes to it, on its own login.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from agent.settings import config as config_mod
from testkit.codex import make_api_key_login_in_volume
from testkit.workers import keys_for_shard, wait_until
from worker_entry.app import create_app

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "deploy" / "swarm"))
from stack import SHARD_LABEL  # noqa: E402


def docker_cli(*args: str, env: dict[str, str] | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=120, env=env)
    if check and done.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)}: {done.stderr.strip()}")
    return done


@pytest.fixture
def swarm(docker_client: docker.DockerClient) -> Iterator[str]:
    """A single-node swarm for this test; always left again. Yields the node id."""
    state = docker_client.info().get("Swarm", {}).get("LocalNodeState")
    if state != "inactive":
        pytest.fail(f"the engine is already in a swarm ({state}): another test's? not touching it", pytrace=False)
    had_bridge = bool(docker_client.networks.list(names=["docker_gwbridge"]))
    docker_cli("swarm", "init", "--advertise-addr", "127.0.0.1")
    try:
        yield docker_client.info()["Swarm"]["NodeID"]
    finally:
        docker_cli("swarm", "leave", "--force", check=False)
        if not had_bridge:  # swarm init made it; leave the engine's networks as they were
            docker_cli("network", "rm", "docker_gwbridge", check=False)


def health_story(container: Any) -> str:
    """The container's state and its last HEALTHCHECK probes (exit code, output), for a failure message."""
    state = container.attrs["State"]
    probes = [
        f"  {p.get('Start', '')[:23]} exit {p.get('ExitCode')}: {p.get('Output', '').strip()[:300]}"
        for p in state.get("Health", {}).get("Log", [])
    ]
    logs = container.logs(tail=30).decode(errors="replace")
    return (
        f"state {state.get('Status')} (exit {state.get('ExitCode')}, started {state.get('StartedAt')}), "
        f"health {state.get('Health', {}).get('Status')}, probes:\n" + "\n".join(probes) + f"\nworker log:\n{logs}"
    )


def test_the_stack_on_a_single_node_swarm(
    swarm: str, images: Any, docker_client: docker.DockerClient, rabbitmq_vhost: str, tmp_path: Path
) -> None:
    """Deployed from the compose file: the three-shard scenario on one labelled node (see the module docstring)."""
    name = f"cwa{secrets.token_hex(3)}"
    prefix = f"{name}_auth_"
    docker_cli("node", "update", "--label-add", f"{SHARD_LABEL.format(shard=0)}=true", swarm)
    volume = f"{prefix}0"
    docker_client.volumes.create(volume, labels={"cwa.test": "1"})
    make_api_key_login_in_volume(images.job, volume)
    env = {
        **os.environ,
        "CELERY_BROKER_URL": rabbitmq_vhost,
        "CODEX_VOLUME_PREFIX": prefix,
        "CODEX_WORKER_IMAGE": images.worker,
        "CODEX_JOB_IMAGE": images.job,
        "DOCKER_GID": str(os.stat("/var/run/docker.sock").st_gid),
        "CODEX_STOP_GRACE_PERIOD": "20s",
        "CELERY_RESULT_BACKEND": "rpc://",
    }
    try:
        deployed = subprocess.run(
            [str(ROOT / "scripts" / "swarm-up"), "--broker", "host", name],
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert deployed.returncode == 0, deployed.stderr
        # The shards whose node is not labelled are named, with the command that labels one.
        assert "no node is labelled codex.shard.1=true" in deployed.stderr
        assert "no node is labelled codex.shard.0=true" not in deployed.stderr
        service = docker_client.services.get(f"{name}_codex-worker-0")
        spec = service.attrs["Spec"]
        assert spec["Mode"] == {"Replicated": {"Replicas": 1}}
        assert spec["UpdateConfig"]["Order"] == spec["RollbackConfig"]["Order"] == "stop-first"
        assert spec["TaskTemplate"]["Placement"]["Constraints"] == ["node.labels.codex.shard.0 == true"]

        def shard_container(shard: int) -> Any:
            found = docker_client.containers.list(
                filters={"label": f"com.docker.swarm.service.name={name}_codex-worker-{shard}"}
            )
            return found[0] if found else None

        def worker_container() -> Any:
            return shard_container(0)

        def audit_lines(task: Any) -> list[dict[str, Any]]:
            return [
                json.loads(line) for line in task.logs().decode(errors="replace").splitlines() if line.startswith("{")
            ]

        def fleet_rows() -> dict[int, dict[str, Any]]:
            done = subprocess.run(
                [str(Path(sys.executable).parent / "codex-agent"), "fleet", "--json"],
                env={"PATH": "/usr/bin:/bin", "CELERY_BROKER_URL": rabbitmq_vhost},
                capture_output=True,
                text=True,
                timeout=30,
            )
            return {row["shard"]: {**row, "exit_code": done.returncode} for row in json.loads(done.stdout)["shards"]}

        container = wait_until(worker_container, 90, interval=1, what="shard 0's task running")

        def gate(want: str = "open", of: Any = None) -> dict[str, Any] | None:
            done = (of or container).exec_run(["codex-agent", "status", "--json"], user="app")
            try:
                state = json.loads(done.output.decode()).get("state") or {}
            except ValueError:
                return None
            return state if state.get("gate") == want and state.get("checks") else None

        state = wait_until(gate, 90, interval=1, what="shard 0's gate open")
        assert (state["shard"], state["volume"], state["queue"]) == (0, volume, "codex-0")

        # A task runs: codex.phase without a prompt launches a job container on the login volume.
        import worker_entry.tasks  # noqa: F401  (registers the shared tasks, so the router knows codex.phase)

        publisher = create_app(config_mod.load({"CELERY_BROKER_URL": rabbitmq_vhost}), result_backend="rpc://")
        result = publisher.send_task(
            "codex.phase", kwargs={"affinity_key": "k", "run_id": f"run-{name}", "phase": "plan", "codex_shard": 0}
        )
        try:
            value = result.get(timeout=120)
        except Exception as e:
            raise AssertionError(f"{e!r}; worker log:\n{container.logs(tail=40).decode(errors='replace')}") from e
        assert value["shard"] == 0 and value["volume"] == volume and value["job"]["exit_code"] == 0
        finished = [
            e
            for e in audit_lines(container)
            if e.get("event") == "codex.job.finished" and e.get("run_id") == f"run-{name}"
        ]
        assert len(finished) == 1 and finished[0]["exit_code"] == 0 and finished[0]["volume"] == volume

        # The image's HEALTHCHECK (codex-agent status --probe) under Swarm, and the fleet view from the host.
        def healthy() -> bool:
            container.reload()
            return bool(container.attrs["State"].get("Health", {}).get("Status") == "healthy")

        try:
            wait_until(healthy, 60, interval=1, what="shard 0's task healthy")
        except AssertionError as e:
            raise AssertionError(f"{e}\n{health_story(container)}") from None
        rows = fleet_rows()
        assert rows[0]["status"] == "open", rows
        (entry,) = rows[0]["workers"]  # named by the stack's template, not the host's name all tasks share
        assert entry["volume"] == volume and entry["worker"] == f"{name}_codex-worker-0@{socket.gethostname()}"
        assert rows[1]["status"] == rows[2]["status"] == "missing" and rows[0]["exit_code"] == 1

        # The hard constraint: with no labelled node, shards 1 and 2 wait; no empty volume appears.
        for shard in (1, 2):
            tasks = docker_client.services.get(f"{name}_codex-worker-{shard}").tasks()
            assert tasks and all(t["Status"]["State"] == "pending" for t in tasks), tasks
            assert "no suitable node" in tasks[0]["Status"].get("Err", ""), tasks[0]["Status"]
            assert not docker_client.volumes.list(filters={"name": f"{prefix}{shard}"})

        # Logged out and back, under Swarm: the gate closes (CODEX-E030) and reopens with no restart.
        docker_cli(
            "run",
            "--rm",
            "--label",
            "cwa.test=1",
            "-v",
            f"{volume}:/home/app/.codex",
            "--entrypoint",
            "codex",
            images.job,
            "logout",
        )
        closed = wait_until(lambda: gate("closed"), 60, interval=1, what="shard 0's gate closed after logout")
        assert [r["code"] for r in closed["reason"]] == ["CODEX-E030"]
        make_api_key_login_in_volume(images.job, volume)
        wait_until(gate, 60, interval=1, what="shard 0's gate open again")
        assert worker_container().id == container.id  # the same task: no restart

        # The runbook's login move, under Swarm: the label comes off and the task stops; the login
        # leaves the volume in a bundle (the volume is unusable meanwhile) and comes back by import.
        docker_cli("node", "update", "--label-rm", SHARD_LABEL.format(shard=0), swarm)
        wait_until(lambda: worker_container() is None, 90, interval=1, what="shard 0's task stopped once unlabelled")
        move = tmp_path / "move"
        move.mkdir(mode=0o700)
        os.chown(move, 1000, 1000)
        one_off = ["run", "--rm", "--label", "cwa.test=1", "-v", f"{volume}:/home/app/.codex", "-v", f"{move}:/move"]
        docker_cli(*one_off, "--entrypoint", "codex-agent", images.worker, "login-export", "/move/shard-0.login.json")
        assert (move / "shard-0.login.json").exists()
        assert docker_cli(*one_off, "--entrypoint", "codex", images.job, "login", "status", check=False).returncode != 0
        docker_cli(*one_off, "--entrypoint", "codex-agent", images.worker, "login-import", "/move/shard-0.login.json")
        assert not (move / "shard-0.login.json").exists()
        docker_cli("node", "update", "--label-add", f"{SHARD_LABEL.format(shard=0)}=true", swarm)
        container = wait_until(worker_container, 90, interval=1, what="shard 0's new task once labelled again")
        wait_until(gate, 90, interval=1, what="shard 0's gate open with the moved login")

        # A label placed later brings shard 1 up on this node, on its own (empty) volume: closed, E030.
        docker_cli("node", "update", "--label-add", f"{SHARD_LABEL.format(shard=1)}=true", swarm)
        try:
            second = wait_until(lambda: shard_container(1), 90, interval=1, what="shard 1's task running once labelled")
        except AssertionError as e:
            tasks = docker_cli("service", "ps", "--no-trunc", f"{name}_codex-worker-1", check=False).stdout
            labels = docker_cli("node", "inspect", "--format", "{{json .Spec.Labels}}", swarm, check=False).stdout
            raise AssertionError(f"{e}\n{tasks}\nnode labels {labels}") from None
        state = wait_until(lambda: gate("closed", second), 90, interval=1, what="shard 1 checked")
        assert state["volume"] == f"{prefix}1" and [r["code"] for r in state["reason"]] == ["CODEX-E030"]

        # The three-shard scenario: shard 1 logged in where it stands, shard 2's node labelled with
        # its login ready; one run per shard, routed by its affinity key alone, on that shard's login.
        make_api_key_login_in_volume(images.job, f"{prefix}1")
        wait_until(lambda: gate("open", second), 60, interval=1, what="shard 1's gate open after its login")
        docker_client.volumes.create(f"{prefix}2", labels={"cwa.test": "1"})
        make_api_key_login_in_volume(images.job, f"{prefix}2")
        docker_cli("node", "update", "--label-add", f"{SHARD_LABEL.format(shard=2)}=true", swarm)
        third = wait_until(lambda: shard_container(2), 90, interval=1, what="shard 2's task running once labelled")
        wait_until(lambda: gate("open", third), 90, interval=1, what="shard 2's gate open")
        shard_tasks = {0: container, 1: second, 2: third}
        runs = {
            shard: publisher.send_task(
                "codex.phase",
                kwargs={
                    "affinity_key": keys_for_shard(shard, 1, prefix=name)[0],
                    "run_id": f"run-{name}-{shard}",
                    "phase": "plan",
                },
            )
            for shard in shard_tasks
        }
        for shard, run in runs.items():
            value = run.get(timeout=120)
            assert (value["shard"], value["queue"], value["volume"]) == (shard, f"codex-{shard}", f"{prefix}{shard}")
            assert value["job"]["exit_code"] == 0
        for shard, task in shard_tasks.items():
            lines = audit_lines(task)
            ran = {e["run_id"] for e in lines if e.get("event") == "codex.job.finished" and e.get("exit_code") == 0}
            assert f"run-{name}-{shard}" in ran and not ran & {
                f"run-{name}-{other}" for other in shard_tasks if other != shard
            }
        rows = fleet_rows()
        assert [rows[shard]["status"] for shard in range(3)] == ["open"] * 3, rows
    finally:
        docker_cli("stack", "rm", name, check=False)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and docker_client.containers.list(
            all=True, sparse=True, filters={"label": f"com.docker.stack.namespace={name}"}
        ):  # sparse: no inspect of each, so a container the stack removes meanwhile is no NotFound
            time.sleep(1)
        for endpoint in Path("/run/codex-guard").glob(f"{prefix}*"):  # the guard's per-shard directories
            shutil.rmtree(endpoint, ignore_errors=True)
        for leftover in docker_client.volumes.list(filters={"name": prefix}):
            try:
                leftover.remove(force=True)
            except docker.errors.APIError:
                pass
