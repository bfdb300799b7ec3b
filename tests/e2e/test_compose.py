"""The whole product through compose: three shards, real logins, real jobs, real broker.

The three-shard run goes twice: with ``docker compose`` (v2, what users have) and with Debian's
``docker-compose`` (v1), so the compose file is proven with both. The runbook's add-a-shard and
decommission procedures run as written, with v2. The stack is docker-compose.yaml plus docker-compose.offline.yaml (the host's RabbitMQ instead of
a broker container, since no registry is reachable), under a unique project name, vhost and
volume prefix, so parallel sessions and an operator's own ``codex_auth_*`` volumes are untouched.
"""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest
from kombu import Connection

from agent import config as config_mod
from agent.routing import shard_for
from support import REPO_ROOT, Images, fake_api_key, make_api_key_login_in_volume
from support.workers import keys_for_shard, wait_until
import worker_entry.tasks  # noqa: F401  (registers the shared tasks with the publisher app)
from worker_entry.app import create_app

pytestmark = [pytest.mark.e2e, pytest.mark.docker, pytest.mark.codex, pytest.mark.broker, pytest.mark.timeout(420)]

COMPOSE_FILES = ["-f", str(REPO_ROOT / "docker-compose.yaml"), "-f", str(REPO_ROOT / "docker-compose.offline.yaml")]
SHARDS = (0, 1, 2)
COMPOSE_CLIS = {"v2": ["docker", "compose"], "v1": ["docker-compose"]}


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)


@dataclass
class Stack:
    """One compose project: its environment, containers and broker."""

    client: docker.DockerClient
    cli: list[str]
    project: str
    env: dict[str, str]
    host_broker: str
    prefix: str
    extra_containers: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=lambda: list(COMPOSE_FILES))

    def compose(self, *args: str, timeout: float = 180, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [*self.cli, *self.files, "-p", self.project, *args],
            env=self.env, input=stdin, capture_output=True, text=True, timeout=timeout, check=False,
        )
        assert proc.returncode == 0, f"{' '.join(self.cli)} {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
        return proc

    def volume(self, shard: int) -> str:
        return f"{self.prefix}{shard}"

    def container(self, service: str) -> Any:
        found = self.client.containers.list(
            all=True, filters={"label": [f"com.docker.compose.project={self.project}", f"com.docker.compose.service={service}"]}
        )
        found = [c for c in found if c.labels.get("com.docker.compose.oneoff", "False") == "False"]
        assert len(found) == 1, f"{service}: {found}"
        return found[0]

    def exec_json(self, container: Any, *argv: str) -> Any:
        result = container.exec_run(list(argv), demux=True)
        stdout = (result.output[0] or b"").decode()
        try:
            return json.loads(stdout)
        except ValueError:
            raise AssertionError(f"{argv} exited {result.exit_code}: {stdout} {(result.output[1] or b'').decode()}") from None

    def status(self, container: Any) -> dict[str, Any]:
        result: dict[str, Any] = self.exec_json(container, "codex-agent", "status", "--json")
        return result

    def log_events(self, container: Any, event: str) -> list[dict[str, Any]]:
        lines = []
        for raw in container.logs(stdout=True, stderr=True).decode("utf-8", "replace").splitlines():
            try:
                line = json.loads(raw)
            except ValueError:
                continue
            if isinstance(line, dict) and line.get("event") == event:
                lines.append(line)
        return lines

    def waiting(self, queue: str) -> int:
        with Connection(self.host_broker, connect_timeout=5) as connection:
            _name, count, _consumers = connection.default_channel.queue_declare(queue=queue, passive=True)
            return int(count)


@pytest.fixture(params=sorted(COMPOSE_CLIS), ids=lambda version: f"compose-{version}")
def compose_cli(request: pytest.FixtureRequest) -> list[str]:
    """The compose command line of one version, skipped when that version is absent."""
    cli = COMPOSE_CLIS[request.param]
    probe = subprocess.run([*cli, "version"], capture_output=True, text=True, timeout=60, check=False)
    if probe.returncode != 0:
        pytest.skip(f"compose {request.param} absent: `{' '.join(cli)} version` failed (scripts/provision.sh installs it)")
    return cli


@pytest.fixture
def stack(docker_client: docker.DockerClient, images: Images, rabbitmq_url: str, compose_cli: list[str]) -> Iterator[Stack]:
    """A compose project on a fresh vhost; torn down without -v, volumes removed at the end."""
    if shutil.which("rabbitmqctl") is None:
        pytest.skip("RabbitMQ absent: rabbitmqctl not found (needed to add a non-loopback user)")
    tag = secrets.token_hex(4)
    project, vhost, user, password = f"cwae2e{tag}", f"cwa_e2e_{tag}", f"cwa_e2e_{tag}", secrets.token_hex(12)
    rabbitmqctl("add_vhost", vhost)
    rabbitmqctl("add_user", user, password)
    rabbitmqctl("set_permissions", "-p", vhost, user, ".*", ".*", ".*")
    ipam = docker_client.networks.get("bridge").attrs["IPAM"]["Config"][0]
    gateway = ipam.get("Gateway") or str(next(ipaddress.ip_network(ipam["Subnet"]).hosts()))
    env = {
        "PATH": os.environ["PATH"],
        "HOME": os.environ.get("HOME", "/root"),
        "CELERY_BROKER_URL": f"amqp://{user}:{password}@{gateway}:5672/{vhost}",
        "CELERY_RESULT_BACKEND": "rpc://",
        "CODEX_VOLUME_PREFIX": f"cwa_test_e2e_{tag}_codex_auth_",
        "DOCKER_GID": str(os.stat("/var/run/docker.sock").st_gid),
        "CODEX_WORKER_IMAGE": images.worker,
        "CODEX_JOB_IMAGE": images.job,
    }
    stack = Stack(docker_client, compose_cli, project, env, f"amqp://{user}:{password}@localhost:5672/{vhost}", env["CODEX_VOLUME_PREFIX"])
    try:
        yield stack
    finally:
        for container in docker_client.containers.list(all=True, filters={"label": f"com.docker.compose.project={project}"}):
            tail = container.logs(tail=25).decode("utf-8", "replace")
            print(f"--- {container.name} ---\n{tail}")  # shown by pytest when the test failed
        for name in stack.extra_containers:
            try:
                docker_client.containers.get(name).remove(force=True)
            except docker.errors.NotFound:
                pass
        subprocess.run([*compose_cli, *stack.files, "-p", project, "down", "--timeout", "10"],
                       env=env, capture_output=True, timeout=120, check=False)
        ours = [v.name for v in docker_client.volumes.list() if v.name.startswith(stack.prefix)]
        for name in ours + [f"{project}_rabbitmq_data"]:
            for user_container in docker_client.containers.list(all=True, filters={"volume": name}):
                user_container.remove(force=True)
            try:
                docker_client.volumes.get(name).remove(force=True)
            except docker.errors.NotFound:
                pass
        rabbitmqctl("delete_vhost", vhost)
        rabbitmqctl("delete_user", user)


def test_three_shards_end_to_end(stack: Stack, images: Images, docker_client: docker.DockerClient) -> None:
    """Logged-in shards run jobs that see the login; the logged-out one waits, then drains by itself."""
    started_at = int(time.time()) - 1
    stack.compose("up", "-d", "--no-color", "rabbitmq", "codex-worker-0", "codex-worker-1", "codex-worker-2", "codex-worker-default")
    workers = {s: stack.container(f"codex-worker-{s}") for s in SHARDS}
    keys = {s: make_api_key_login_in_volume(images.job, stack.volume(s)) for s in (0, 1)}

    def gate(shard: int) -> dict[str, Any] | None:
        state = stack.status(workers[shard]).get("state")
        return state if state and state.get("gate") in ("open", "closed") and state.get("checks") else None

    for shard in (0, 1):
        wait_until(lambda: (gate(shard) or {}).get("gate") == "open", 90, interval=0.5, what=f"gate of shard {shard} open")
    closed = wait_until(lambda: gate(2), 60, interval=0.5, what="shard 2 checked")
    assert closed["gate"] == "closed" and [r["code"] for r in closed["reason"]] == ["CODEX-E030"]

    # Publish two runs per shard from this process, on the same broker.
    publisher = create_app(config_mod.load({"CELERY_BROKER_URL": stack.host_broker}), result_backend="rpc://")
    runs: dict[int, list[tuple[str, Any]]] = {}
    for shard in SHARDS:
        runs[shard] = []
        for key in keys_for_shard(shard, 2, prefix=f"repo-{stack.project}"):
            run_id = f"run-{key}"
            result = publisher.send_task("codex.phase", kwargs={"affinity_key": key, "run_id": run_id, "phase": "plan"})
            runs[shard].append((run_id, result))

    for shard in (0, 1):
        for run_id, result in runs[shard]:
            value = result.get(timeout=90)
            assert value["shard"] == shard and value["volume"] == stack.volume(shard) and value["run_id"] == run_id
            assert value["queue"] == f"codex-{shard}" and value["job"]["exit_code"] == 0
    wait_until(lambda: stack.waiting("codex-2") == 2, 20, interval=0.5, what="both shard-2 tasks waiting in codex-2")

    def check_audit(shard: int) -> None:
        worker = workers[shard]
        for run_id, _ in runs[shard]:
            for event in ("codex.run.audit", "codex.job.started", "codex.job.finished"):
                lines = [e for e in stack.log_events(worker, event) if e.get("run_id") == run_id]
                assert len(lines) == 1, f"shard {shard} {run_id}: {event} x{len(lines)}"
                line = lines[0]
                assert (line["shard"], line["volume"], line["queue"]) == (shard, stack.volume(shard), f"codex-{shard}")
                assert line["task_id"] and line["worker"]
                if event != "codex.run.audit":
                    assert line["image"] == images.job and len(line["container_id"]) == 64
            finished = [e for e in stack.log_events(worker, "codex.job.finished") if e.get("run_id") == run_id][0]
            assert finished["exit_code"] == 0 and finished["duration_s"] >= 0
        created = docker_client.events(
            since=started_at, until=int(time.time()) + 1, decode=True,
            filters={"type": "container", "event": "create", "label": f"codex.volume={stack.volume(shard)}"},
        )
        labelled = {e["Actor"]["Attributes"].get("codex.run_id"): e["Actor"]["Attributes"] for e in created}
        for run_id, _ in runs[shard]:
            labels = labelled[run_id]
            assert (labels["codex.shard"], labels["codex.queue"]) == (str(shard), f"codex-{shard}")
            assert labels["codex.task_id"] and labels["codex.worker"]

    for shard in (0, 1):
        check_audit(shard)

    # Log the third volume in through its compose login service (the runbook's headless way): its
    # queue drains with no restart.
    before = workers[2].attrs["State"]["StartedAt"]
    keys[2] = fake_api_key()
    login = stack.compose("run", "--rm", "-T", "--entrypoint", "codex", "login-2", "login", "--with-api-key", stdin=keys[2])
    assert keys[2] not in login.stdout + login.stderr
    for run_id, result in runs[2]:
        value = result.get(timeout=90)
        assert value["shard"] == 2 and value["job"]["exit_code"] == 0 and value["run_id"] == run_id
    workers[2].reload()
    assert workers[2].attrs["State"]["StartedAt"] == before and workers[2].attrs["RestartCount"] == 0
    assert stack.waiting("codex-2") == 0
    check_audit(2)

    # A fourth worker on codex_auth_1 refuses and names the holder.
    intruder_name = f"{stack.project}_intruder"
    stack.extra_containers.append(intruder_name)
    stack.compose("run", "-d", "--name", intruder_name, "codex-worker-1")
    intruder = docker_client.containers.get(intruder_name)
    refused = wait_until(lambda: (stack.status(intruder).get("state") or {}).get("reason"), 60, interval=0.5, what="intruder refused")
    assert refused[0]["code"] == "CODEX-E010"
    holder_id = workers[1].id[:12]
    assert holder_id in refused[0]["message"] and stack.volume(1) in refused[0]["message"]
    assert stack.status(workers[1])["state"]["gate"] == "open"

    # No worker holds the Docker socket: each reaches Docker through its own docker-guard endpoint,
    # where the fleet-wide view is refused; the operator's `codex-agent volumes` runs in the guard.
    for worker in [*workers.values(), stack.container("codex-worker-default")]:
        assert all(m["Source"] != "/var/run/docker.sock" for m in worker.attrs["Mounts"]), worker.name
    own = stack.exec_json(workers[0], "codex-agent", "volumes", "--json")
    assert [v["name"] for v in own["volumes"]] == [stack.volume(0)]
    report = stack.exec_json(stack.container("docker-guard"), "codex-agent", "volumes", "--json", *[stack.volume(s) for s in SHARDS])
    by_name = {v["name"]: v for v in report["volumes"]}
    assert set(by_name) == {stack.volume(s) for s in SHARDS}
    for shard in SHARDS:
        volume = by_name[stack.volume(shard)]
        assert volume["logged_in"] is True and volume["auth"]["auth_mode"] == "apikey"
        assert volume["holder"]["fresh"] is True and volume["holder"]["container_id"] == workers[shard].id
        assert volume["auth"]["credential_age_days"] < 1
    assert report["warnings"] == []
    text = json.dumps(report)
    assert not any(key in text or key[-5:] in text for key in keys.values())

    # Down without -v: the volumes and their logins survive.
    docker_client.containers.get(intruder_name).remove(force=True)
    stack.compose("down", "--timeout", "20")
    for shard in SHARDS:
        docker_client.volumes.get(stack.volume(shard))
    after = subprocess.run(
        [str(REPO_ROOT / ".venv/bin/codex-agent"), "volumes", "--json", *[stack.volume(s) for s in SHARDS]],
        env={**stack.env, "CODEX_LOGIN_CHECK_IMAGE": images.job}, capture_output=True, text=True, timeout=120, check=True,
    )
    survived = {v["name"]: v for v in json.loads(after.stdout)["volumes"]}
    for shard in SHARDS:
        assert survived[stack.volume(shard)]["logged_in"] is True
        assert survived[stack.volume(shard)]["holder"] is None  # released at shutdown


def _grown_by_shard_3(compose_text: str) -> str:
    """docker-compose.yaml after the runbook's "Provisioning a new shard" steps 1-2 for shard 3."""
    blocks = subprocess.run([str(REPO_ROOT / "scripts/compose-shards"), "3"], capture_output=True, text=True,
                            check=True, timeout=30).stdout
    services, volumes = blocks.split("# --- paste under volumes: ---")
    services = services.split("# --- paste under services: ---")[1].strip("\n")
    volumes = volumes.strip("\n")
    head, tail = compose_text.split("\nvolumes:\n", 1)
    grown = f"{head.rstrip()}\n\n{services}\n\nvolumes:\n{tail.rstrip()}\n\n{volumes}\n"
    return grown.replace('CODEX_SHARDS: "3"', 'CODEX_SHARDS: "4"')


def _shrunk_to_3_shards(grown: str) -> str:
    """The runbook's "Decommissioning" step 5: shard 3's services deleted, its volume entry kept."""
    start = grown.index("  # shard 3: service codex-worker-3")
    end = grown.index("\nvolumes:\n")
    return (grown[:start].rstrip() + "\n" + grown[end:]).replace('CODEX_SHARDS: "4"', 'CODEX_SHARDS: "3"')


@pytest.mark.parametrize("compose_cli", ["v2"], indirect=True, ids=["compose-v2"])
def test_add_then_decommission_a_shard(stack: Stack, images: Images, docker_client: docker.DockerClient,
                                       tmp_path: Path) -> None:
    """The runbook's procedures as written: add shard 3 and log it in; then remove it: its waiting tasks
    move and run elsewhere, none lost or doubled, and its volume keeps its login."""
    compose_file = tmp_path / "docker-compose.yaml"
    shutil.copy(REPO_ROOT / "docker-compose.offline.yaml", tmp_path / "docker-compose.offline.yaml")
    grown = _grown_by_shard_3((REPO_ROOT / "docker-compose.yaml").read_text())
    compose_file.write_text(grown)
    stack.files = ["-f", str(compose_file), "-f", str(tmp_path / "docker-compose.offline.yaml")]
    services = ["rabbitmq", "codex-worker-0", "codex-worker-3", "codex-worker-default"]

    # Provisioning: the new worker comes up, its volume is logged in once through login-3, its gate opens.
    stack.compose("up", "-d", "--no-color", *services)
    stack.compose("run", "--rm", "-T", "--entrypoint", "codex", "login-3", "login", "--with-api-key", stdin=fake_api_key())
    worker_3 = stack.container("codex-worker-3")
    wait_until(lambda: (stack.status(worker_3).get("state") or {}).get("gate") == "open", 60, interval=0.5,
               what="shard 3's gate open")

    # Decommissioning: the publishers already route over 3 shards, but pinned runs and late publishers
    # left tasks in codex-3 (published here with 4 shards) after its worker stopped.
    stack.compose("stop", "codex-worker-3")
    publisher = create_app(config_mod.load({"CELERY_BROKER_URL": stack.host_broker, "CODEX_SHARDS": "4"}),
                           result_backend="rpc://")
    keys = [k for k in keys_for_shard(3, 40, shards=4, prefix=f"decom-{stack.project}") if shard_for(k, 3) == 0][:4]
    results = [publisher.send_task("codex.phase", kwargs={"affinity_key": k, "run_id": f"run-{k}", "phase": "plan"})
               for k in keys]
    wait_until(lambda: stack.waiting("codex-3") == len(keys), 20, interval=0.5, what="tasks waiting in codex-3")

    drained = stack.compose("exec", "-T", "codex-worker-default", "codex-agent", "drain", "codex-3", "--shards", "3")
    assert f"moved {len(keys)} task(s), 0 left in codex-3" in drained.stdout, drained.stdout
    compose_file.write_text(_shrunk_to_3_shards(grown))
    stack.compose("up", "-d", "--no-color", "--remove-orphans", *[s for s in services if s != "codex-worker-3"])
    assert not docker_client.containers.list(all=True, filters={"id": worker_3.id})

    # The moved tasks run on shard 0 once its volume is logged in, each exactly once.
    stack.compose("run", "--rm", "-T", "--entrypoint", "codex", "login-0", "login", "--with-api-key", stdin=fake_api_key())
    for result in results:
        value = result.get(timeout=90)
        assert (value["shard"], value["queue"], value["job"]["exit_code"]) == (0, "codex-0", 0)
    audits = stack.log_events(stack.container("codex-worker-0"), "codex.run.audit")
    assert sorted(a["task_id"] for a in audits) == sorted(r.id for r in results)
    again = stack.compose("exec", "-T", "codex-worker-default", "codex-agent", "drain", "codex-3", "--shards", "3", "--dry-run")
    assert "would move 0 task(s), 0 left in codex-3" in again.stdout

    # The removed shard's volume keeps its login, with no holder.
    kept = subprocess.run(
        [str(REPO_ROOT / ".venv/bin/codex-agent"), "volumes", "--json", stack.volume(3)],
        env={**stack.env, "CODEX_LOGIN_CHECK_IMAGE": images.job}, capture_output=True, text=True, timeout=120, check=True,
    )
    volume = json.loads(kept.stdout)["volumes"][0]
    assert volume["logged_in"] is True and volume["holder"] is None
