"""The whole product through compose: three shards, real logins, real jobs, real broker.

The three-shard run goes twice: with ``docker compose`` (v2, what users have) and with Debian's
``docker-compose`` (v1), so the compose file is proven with both. The runbook's add-a-shard and
decommission procedures run as written, with v2. The stack is docker-compose.yaml plus docker-compose.offline.yaml (the host's RabbitMQ instead of
a broker container, since no registry is reachable), under a unique project name, vhost and
volume prefix, so parallel sessions and an operator's own ``codex_auth_*`` volumes are untouched.

The last tests start the stack with ``scripts/up`` itself, in a directory of their own, and then
drive it only as the runbook says: plain ``docker compose ...`` in that directory (no ``-f``, no
environment), which reads the ``.env`` scripts/up wrote. Every such command is checked to be in
runbook.md word for word.

The three-shard run is watched by a real Prometheus (Debian's) with the shipped
monitoring/prometheus.yml (Docker service discovery), narrowed to the test's project: it sees each
gate flip, including a shard logged out and back in, and counts the tasks and job containers the
test made. A real Flower on the stack's broker lists the three Codex workers and the tasks they ran.
"""

from __future__ import annotations

import io
import ipaddress
import json
import os
import secrets
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import docker
import docker.errors
import pytest
import yaml
from kombu import Connection

import worker_entry.tasks  # noqa: F401  (registers the shared tasks with the publisher app)
from agent.settings import config as config_mod
from agent.settings.topology import shard_for
from testkit import REPO_ROOT, Images, fake_api_key, make_api_key_login_in_volume
from testkit.monitoring import Flower, Prometheus, binary_or_skip
from testkit.rabbit import rabbitmqctl
from testkit.workers import keys_for_shard, wait_until
from worker_entry.app import create_app

pytestmark = [pytest.mark.e2e, pytest.mark.docker, pytest.mark.codex, pytest.mark.broker, pytest.mark.timeout(420)]

COMPOSE_FILES = ["-f", str(REPO_ROOT / "docker-compose.yaml"), "-f", str(REPO_ROOT / "docker-compose.offline.yaml")]
SHARDS = (0, 1, 2)
COMPOSE_CLIS = {"v2": ["docker", "compose"], "v1": ["docker-compose"]}
RUNBOOK = (REPO_ROOT / "runbook.md").read_text()
GUARD_ENDPOINTS = Path("/run/codex-guard")
HOLD_S = 12.0
"""How long the in-flight phases last: longer than Docker's default 10 s stop timeout."""
METRICS_PORT = "9808"
"""CODEX_METRICS_PORT of the three-shard stack: each worker serves metrics on its container IP."""


@dataclass(frozen=True)
class BrokerAccount:
    """A vhost and user of its own on the host's RabbitMQ."""

    for_containers: str  # through the Docker bridge's gateway, as the workers reach it
    from_here: str  # through localhost, as this process reaches it


@contextmanager
def broker_account(client: docker.DockerClient, tag: str) -> Iterator[BrokerAccount]:
    """A fresh vhost and non-loopback user, deleted afterwards (RabbitMQ's guest is loopback-only)."""
    if shutil.which("rabbitmqctl") is None:
        pytest.skip("RabbitMQ absent: rabbitmqctl not found (needed to add a non-loopback user)")
    vhost = user = f"cwa_e2e_{tag}"
    password = secrets.token_hex(12)
    rabbitmqctl("add_vhost", vhost)
    rabbitmqctl("add_user", user, password)
    rabbitmqctl("set_permissions", "-p", vhost, user, ".*", ".*", ".*")
    ipam = client.networks.get("bridge").attrs["IPAM"]["Config"][0]
    gateway = ipam.get("Gateway") or str(next(ipaddress.ip_network(ipam["Subnet"]).hosts()))
    try:
        yield BrokerAccount(
            f"amqp://{user}:{password}@{gateway}:5672/{vhost}", f"amqp://{user}:{password}@localhost:5672/{vhost}"
        )
    finally:
        rabbitmqctl("delete_vhost", vhost)
        rabbitmqctl("delete_user", user)


def remove_project(
    client: docker.DockerClient,
    project: str,
    prefix: str,
    down: list[str],
    env: dict[str, str],
    cwd: Path | None = None,
) -> None:
    """Print each container's last lines (pytest shows them when the test failed), bring the project
    down without -v, then remove its volumes and anything still using them."""
    for container in client.containers.list(all=True, filters={"label": f"com.docker.compose.project={project}"}):
        tail = container.logs(tail=25).decode("utf-8", "replace")
        print(f"--- {container.name} ---\n{tail}")
    subprocess.run(down, env=env, cwd=cwd, capture_output=True, timeout=180, check=False)
    ours = [v.name for v in client.volumes.list() if v.name.startswith((prefix, f"{project}_"))]
    for name in ours + [f"{project}_rabbitmq_data"]:
        for user_container in client.containers.list(all=True, filters={"volume": name}):
            user_container.remove(force=True)
        try:
            client.volumes.get(name).remove(force=True)
        except docker.errors.NotFound:
            pass
        shutil.rmtree(GUARD_ENDPOINTS / name, ignore_errors=True)  # the docker-guard's endpoint directory


def json_lines(raw: bytes) -> list[dict[str, Any]]:
    """The JSON objects among the lines of a container's log (Celery's banner and such are skipped)."""
    lines = []
    for text in raw.decode("utf-8", "replace").splitlines():
        try:
            line = json.loads(text)
        except ValueError:
            continue
        if isinstance(line, dict):
            lines.append(line)
    return lines


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
            env=self.env,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        assert proc.returncode == 0, f"{' '.join(self.cli)} {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
        return proc

    def volume(self, shard: int) -> str:
        return f"{self.prefix}{shard}"

    def container(self, service: str) -> Any:
        found = self.client.containers.list(
            all=True,
            filters={"label": [f"com.docker.compose.project={self.project}", f"com.docker.compose.service={service}"]},
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
            raise AssertionError(
                f"{argv} exited {result.exit_code}: {stdout} {(result.output[1] or b'').decode()}"
            ) from None

    def status(self, container: Any) -> dict[str, Any]:
        result: dict[str, Any] = self.exec_json(container, "codex-agent", "status", "--json")
        return result

    def log_events(self, container: Any, event: str) -> list[dict[str, Any]]:
        return [line for line in json_lines(container.logs(stdout=True, stderr=True)) if line.get("event") == event]

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
        pytest.skip(
            f"compose {request.param} absent: `{' '.join(cli)} version` failed (scripts/provision.sh installs it)"
        )
    return cli


@pytest.fixture
def stack(
    docker_client: docker.DockerClient, images: Images, rabbitmq_url: str, compose_cli: list[str]
) -> Iterator[Stack]:
    """A compose project on a fresh vhost; torn down without -v, volumes removed at the end."""
    tag = secrets.token_hex(4)
    project = f"cwae2e{tag}"
    with broker_account(docker_client, tag) as broker:
        env = {
            "PATH": os.environ["PATH"],
            "HOME": os.environ.get("HOME", "/root"),
            "CELERY_BROKER_URL": broker.for_containers,
            "CELERY_RESULT_BACKEND": "rpc://",
            "CODEX_VOLUME_PREFIX": f"cwa_test_e2e_{tag}_codex_auth_",
            "DOCKER_GID": str(os.stat("/var/run/docker.sock").st_gid),
            "CODEX_WORKER_IMAGE": images.worker,
            "CODEX_JOB_IMAGE": images.job,
            "CODEX_METRICS_PORT": METRICS_PORT,
        }
        stack = Stack(docker_client, compose_cli, project, env, broker.from_here, env["CODEX_VOLUME_PREFIX"])
        try:
            yield stack
        finally:
            for name in stack.extra_containers:
                try:
                    docker_client.containers.get(name).remove(force=True)
                except docker.errors.NotFound:
                    pass
            remove_project(
                docker_client,
                project,
                stack.prefix,
                [*compose_cli, *stack.files, "-p", project, "down", "--timeout", "10"],
                env,
            )


@pytest.fixture
def stack_prometheus(stack: Stack, tmp_path: Path) -> Iterator[Prometheus]:
    """Debian's Prometheus with monitoring/prometheus.yml as shipped, plus the README's filter for one
    project (this test's) and a 1 s discovery; the rules beside it loaded from the repository."""
    binary = binary_or_skip("prometheus", "Prometheus")
    settings = yaml.safe_load((REPO_ROOT / "monitoring" / "prometheus.yml").read_text())
    settings["rule_files"] = [str(REPO_ROOT / "monitoring" / name) for name in settings["rule_files"]]
    (job,) = settings["scrape_configs"]
    (discovery,) = job["docker_sd_configs"]
    discovery["refresh_interval"] = "1s"
    discovery["filters"].append({"name": "label", "values": [f"com.docker.compose.project={stack.project}"]})
    server = Prometheus(binary, tmp_path, settings=settings)
    yield server
    server.stop()


@pytest.fixture
def stack_flower(stack: Stack, tmp_path: Path) -> Iterator[Flower]:
    """A real Flower (PyPI) on the stack's broker, started before anything runs."""
    directory = tmp_path / "flower"
    directory.mkdir()
    server = Flower(stack.host_broker, directory)
    yield server
    server.stop()


def test_three_shards_end_to_end(
    stack: Stack, images: Images, docker_client: docker.DockerClient, stack_prometheus: Prometheus, stack_flower: Flower
) -> None:
    """Logged-in shards run jobs that see the login; the logged-out one waits, then drains by itself.
    Prometheus, finding the workers by itself, sees every gate flip and counts what ran; Flower on
    the same broker lists the Codex workers and their tasks (task events are on by default)."""
    started_at = int(time.time()) - 1
    stack.compose(
        "up",
        "-d",
        "--no-color",
        "rabbitmq",
        "codex-worker-0",
        "codex-worker-1",
        "codex-worker-2",
        "codex-worker-default",
    )
    workers = {s: stack.container(f"codex-worker-{s}") for s in SHARDS}
    keys = {s: make_api_key_login_in_volume(images.job, stack.volume(s)) for s in (0, 1)}
    prometheus = stack_prometheus

    def series(name: str, shard: int, **labels: str) -> str:
        """One worker's series, as the shipped relabelling names its target."""
        matchers = {"project": stack.project, "service": f"codex-worker-{shard}", "shard": str(shard), **labels}
        return name + "{" + ", ".join(f'{k}="{v}"' for k, v in matchers.items()) + "}"

    def gate_series(shard: int) -> str:
        return series("codex_gate_open", shard, queue=f"codex-{shard}")

    def gate(shard: int) -> dict[str, Any] | None:
        state = stack.status(workers[shard]).get("state")
        return state if state and state.get("gate") in ("open", "closed") and state.get("checks") else None

    for shard in (0, 1):
        wait_until(
            lambda: (gate(shard) or {}).get("gate") == "open", 90, interval=0.5, what=f"gate of shard {shard} open"
        )
    closed = wait_until(lambda: gate(2), 60, interval=0.5, what="shard 2 checked")
    assert closed["gate"] == "closed" and [r["code"] for r in closed["reason"]] == ["CODEX-E030"]
    for shard in (0, 1):
        prometheus.wait_for(gate_series(shard), 1, f"the gate of shard {shard} open")
    prometheus.wait_for(gate_series(2), 0, "the gate of shard 2 closed while its volume is logged out")

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
            since=started_at,
            until=int(time.time()) + 1,
            decode=True,
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
    login = stack.compose(
        "run", "--rm", "-T", "--entrypoint", "codex", "login-2", "login", "--with-api-key", stdin=keys[2]
    )
    assert keys[2] not in login.stdout + login.stderr
    for run_id, result in runs[2]:
        value = result.get(timeout=90)
        assert value["shard"] == 2 and value["job"]["exit_code"] == 0 and value["run_id"] == run_id
    workers[2].reload()
    assert workers[2].attrs["State"]["StartedAt"] == before and workers[2].attrs["RestartCount"] == 0
    assert stack.waiting("codex-2") == 0
    check_audit(2)
    prometheus.wait_for(gate_series(2), 1, "the gate of shard 2 open after its login")

    # Shard 2 logs out (its gate closes) and in again with a new key (it opens): Prometheus sees both.
    stack.compose("run", "--rm", "-T", "--entrypoint", "codex", "login-2", "logout")
    prometheus.wait_for(gate_series(2), 0, "the gate of shard 2 closed after its logout")
    keys[2] = fake_api_key()
    stack.compose("run", "--rm", "-T", "--entrypoint", "codex", "login-2", "login", "--with-api-key", stdin=keys[2])
    prometheus.wait_for(gate_series(2), 1, "the gate of shard 2 open again after the new login")
    assert prometheus.query(f"changes({gate_series(2)}[10m])") == [3.0]  # closed, open, closed, open
    assert prometheus.query(
        series("codex_check_outcomes_total", 2, outcome="failed", check="login", code="CODEX-E030")
    ) == [2.0]

    # What Prometheus counted is what ran: two tasks per shard, each one job container (codex login
    # status) that exited 0, timed as its audit line says; no codex exec phase, so no run.
    for shard in SHARDS:
        prometheus.wait_for(series("codex_tasks_started_total", shard), 2, f"shard {shard}'s two tasks")
        assert prometheus.query(series("codex_job_containers_total", shard, outcome="ok")) == [2.0]
        assert prometheus.query(f"sum({series('codex_job_containers_total', shard)})") == [2.0]
        assert prometheus.query(series("codex_job_container_duration_seconds_count", shard, outcome="ok")) == [2.0]
        logged = sum(e["duration_s"] for e in stack.log_events(workers[shard], "codex.job.finished"))
        (summed,) = prometheus.query(series("codex_job_container_duration_seconds_sum", shard, outcome="ok")) or [None]
        assert summed == pytest.approx(logged, abs=1e-6)
        assert prometheus.query(f"sum({series('codex_runs_total', shard)})") == [0.0]
    assert prometheus.query(f'count(up{{project="{stack.project}"}} == 1)') == [
        4.0
    ]  # three shards and the default worker

    # Flower on the stack's broker: every Codex worker, and every task it ran, succeeded.
    flower = stack_flower
    wait_until(
        lambda: all(
            any(name.startswith(f"codex-{shard}@") for name in flower.get("/api/workers?refresh=1") or {})
            for shard in SHARDS
        ),
        60,
        interval=1,
        what="Flower lists the three Codex workers",
    )
    task_ids = {result.id for shard in SHARDS for _, result in runs[shard]}
    seen: dict[str, Any] = wait_until(
        lambda: (t := flower.get("/api/tasks?limit=1000")) and task_ids <= set(t) and t,
        60,
        interval=1,
        what="Flower lists the six Codex tasks",
    )
    for task_id in task_ids:
        assert seen[task_id]["name"] == "codex.phase" and seen[task_id]["state"] == "SUCCESS", seen[task_id]
    assert not any(key in json.dumps(seen) for key in keys.values())  # the logins' API keys never show

    # A fourth worker on codex_auth_1 refuses and names the holder.
    intruder_name = f"{stack.project}_intruder"
    stack.extra_containers.append(intruder_name)
    stack.compose("run", "-d", "--name", intruder_name, "codex-worker-1")
    intruder = docker_client.containers.get(intruder_name)
    refused = wait_until(
        lambda: (stack.status(intruder).get("state") or {}).get("reason"), 60, interval=0.5, what="intruder refused"
    )
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
    report = stack.exec_json(
        stack.container("docker-guard"), "codex-agent", "volumes", "--json", *[stack.volume(s) for s in SHARDS]
    )
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
        env={**stack.env, "CODEX_LOGIN_CHECK_IMAGE": images.job},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    survived = {v["name"]: v for v in json.loads(after.stdout)["volumes"]}
    for shard in SHARDS:
        assert survived[stack.volume(shard)]["logged_in"] is True
        assert survived[stack.volume(shard)]["holder"] is None  # released at shutdown


def _grown_by_shard_3(compose_text: str) -> str:
    """docker-compose.yaml after the runbook's "Provisioning a new shard" steps 1-2 for shard 3."""
    blocks = subprocess.run(
        [str(REPO_ROOT / "scripts/compose-shards"), "3"], capture_output=True, text=True, check=True, timeout=30
    ).stdout
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


# --- The stack as `scripts/up` builds it, driven by the runbook's commands ---------------------------


def runbook_says(command: str) -> str:
    """``command`` itself, once checked to be in runbook.md word for word."""
    assert command in RUNBOOK, f"runbook.md no longer says: {command}"
    return command


@dataclass
class UpStack(Stack):
    """A stack `scripts/up` started in ``directory``; operators' commands run there with no settings."""

    directory: Path = Path()
    private_tags: list[str] = field(default_factory=list)
    first_up: tuple[str, str] = ("", "")

    def sh(self, command: str, *, stdin: str | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """Run an operator's shell line in the stack's directory, with only PATH and HOME set."""
        proc = subprocess.run(
            ["bash", "-c", command],
            cwd=self.directory,
            env=self.env,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        assert proc.returncode == 0, f"{command} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
        return proc

    def up(
        self,
        settings: dict[str, str] | None = None,
        *,
        hold_at: str = "",
        meanwhile: Callable[[], None] = lambda: None,
    ) -> tuple[str, str]:
        """``scripts/up`` for this directory, given ``settings`` or only what .env remembers; its stdout and stderr.

        With ``hold_at``, scripts/up is held (SIGSTOP to its process group) from the moment it prints
        that step until ``meanwhile`` has returned: its build takes longer than a test's phase.
        """
        proc = subprocess.Popen(
            [str(REPO_ROOT / "scripts/up")],
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**self.env, **(settings or {}), "UP_DIR": str(self.directory), "UP_TIMEOUT": "150"},
            start_new_session=True,
        )
        out: list[str] = []
        err: list[str] = []
        held = threading.Event()

        def read_stderr() -> None:
            for line in proc.stderr or ():
                err.append(line)
                if hold_at and hold_at in line and not held.is_set():
                    os.killpg(proc.pid, signal.SIGSTOP)
                    held.set()

        readers = [
            threading.Thread(target=lambda: out.append((proc.stdout or io.StringIO()).read()), daemon=True),
            threading.Thread(target=read_stderr, daemon=True),
        ]
        for reader in readers:
            reader.start()
        if hold_at:
            assert held.wait(timeout=300), f"scripts/up never printed {hold_at!r}:\n{''.join(err)[-3000:]}"
            try:
                meanwhile()
            finally:
                os.killpg(proc.pid, signal.SIGCONT)
        try:
            proc.wait(timeout=330)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            ps = self.sh("docker compose ps -a").stdout
            raise AssertionError(f"scripts/up still running after 330 s:\n{''.join(err)[-3000:]}\n{ps}") from None
        for reader in readers:
            reader.join(timeout=30)
        assert proc.returncode == 0, f"scripts/up exited {proc.returncode}:\n{''.join(out)}\n{''.join(err)[-3000:]}"
        return "".join(out), "".join(err)

    def workers(self) -> dict[str, Any]:
        """The running and stopped worker containers by service name."""
        found = self.client.containers.list(all=True, filters={"label": f"com.docker.compose.project={self.project}"})
        return {
            c.labels["com.docker.compose.service"]: c
            for c in found
            if c.labels["com.docker.compose.service"].startswith("codex-worker-")
            and c.labels.get("com.docker.compose.oneoff", "False") == "False"
        }

    def gate_open(self, service: str) -> bool:
        return (self.status(self.container(service)).get("state") or {}).get("gate") == "open"

    def volume_report(self, shard: int) -> dict[str, Any]:
        """``codex-agent volumes --json`` for one shard's volume, from the host."""
        done = subprocess.run(
            [str(REPO_ROOT / ".venv/bin/codex-agent"), "volumes", "--json", self.volume(shard)],
            env={**self.env, "CODEX_LOGIN_CHECK_IMAGE": self.private_tags[1]},
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        report: dict[str, Any] = json.loads(done.stdout)["volumes"][0]
        return report

    def log_in(self, shard: int) -> None:
        """The runbook's headless login: an API key from a file into the shard's login service."""
        key_file = self.directory / f"key-{shard}"
        key_file.write_text(fake_api_key())
        key_file.chmod(0o600)
        line = runbook_says(
            "docker compose run --rm -T --entrypoint codex login-1 login --with-api-key < /path/to/key-file"
        )
        self.sh(line.replace("login-1", f"login-{shard}").replace("/path/to/key-file", str(key_file)))

    def exists(self, queue: str) -> bool:
        with Connection(self.host_broker, connect_timeout=5) as connection:
            try:
                connection.default_channel.queue_declare(queue=queue, passive=True)
            except Exception as e:  # noqa: BLE001  (amqp's NotFound closes the channel; nothing else is expected)
                assert "NOT_FOUND" in str(e), e
                return False
            return True


class LogTap:
    """The logs of the project's worker containers, kept after compose removes a container."""

    def __init__(self, stack: UpStack) -> None:
        self.stack = stack
        self.followed: dict[str, bytes] = {}
        self.threads: dict[str, threading.Thread] = {}

    def follow(self) -> None:
        """Follow every worker container not followed yet, until it stops."""
        for container in self.stack.workers().values():
            if container.id not in self.threads:
                self.threads[container.id] = threading.Thread(target=self._read, args=(container,), daemon=True)
                self.threads[container.id].start()

    def _read(self, container: Any) -> None:
        self.followed[container.id] = b"".join(container.logs(stream=True, follow=True))

    def raw(self) -> list[bytes]:
        """Each container's log: of removed ones as followed, of present ones as `docker logs` has it now."""
        present = {c.id: c.logs() for c in self.stack.workers().values()}
        for cid, thread in self.threads.items():
            if cid not in present:
                thread.join(timeout=30)
        return [*present.values(), *(log for cid, log in self.followed.items() if cid not in present)]

    def everything(self) -> list[dict[str, Any]]:
        return [line for log in self.raw() for line in json_lines(log)]

    def story(self, task_ids: list[str]) -> str:
        """What each container logged about these tasks, and its stops: for a failing assertion."""
        told = []
        for number, log in enumerate(self.raw()):
            text = log.decode("utf-8", "replace").splitlines()
            told += [
                f"[container {number}] {line[:300]}"
                for line in text
                if any(task_id in line for task_id in task_ids) or "shutdown" in line or "ack" in line.lower()
            ]
        return "\n".join(told)

    def finished_after_sigterm(self, task_id: str) -> bool:
        """In one container: the task was received, then the worker got SIGTERM, then the task succeeded."""
        for log in self.raw():
            text = log.decode("utf-8", "replace")
            received = text.find(f"Task codex.phase[{task_id}] received")
            stop = text.find("Warm shutdown", received)
            if received >= 0 and stop > received and text.find(f"Task codex.phase[{task_id}] succeeded", stop) > stop:
                return True
        return False


def runs_per_task(lines: list[dict[str, Any]], task_id: str) -> tuple[int, int]:
    """(codex.run.audit lines, Celery success lines) of one task in ``lines``."""
    audits = sum(1 for line in lines if line.get("event") == "codex.run.audit" and line.get("task_id") == task_id)
    done = sum(1 for line in lines if str(line.get("event", "")).startswith(f"Task codex.phase[{task_id}] succeeded"))
    return audits, done


@pytest.fixture(scope="module")
def up_stack(
    docker_client: docker.DockerClient, images: Images, rabbitmq_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[UpStack]:
    """`scripts/up` in a directory of its own (the compose files copied there), on a fresh vhost, with
    private image tags (no rebuild elsewhere recreates its containers); the three shards logged in by
    the runbook's headless command."""
    if subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=60, check=False).returncode != 0:
        pytest.skip("compose v2 absent: scripts/provision.sh installs it")
    tag = secrets.token_hex(4)
    project, prefix = f"cwaup{tag}", f"cwa_test_up_{tag}_codex_auth_"
    directory = tmp_path_factory.mktemp("up")
    for name in ("docker-compose.yaml", "docker-compose.offline.yaml"):
        shutil.copy(REPO_ROOT / name, directory / name)
    tags = [f"cwa-test-up-{tag}/worker:dev", f"cwa-test-up-{tag}/job:dev"]
    for source, target in zip((images.worker, images.job), tags, strict=False):
        repository, version = target.split(":")
        assert docker_client.images.get(source).tag(repository, version)
    shell = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root")}
    with broker_account(docker_client, tag) as broker:
        stack = UpStack(
            docker_client,
            ["docker", "compose"],
            project,
            shell,
            broker.from_here,
            prefix,
            directory=directory,
            private_tags=tags,
        )
        try:
            stack.first_up = stack.up(
                {
                    "COMPOSE_PROJECT_NAME": project,
                    "CODEX_VOLUME_PREFIX": prefix,
                    "CELERY_BROKER_URL": broker.for_containers,
                    "CODEX_PHASE_TIMEOUT": "3000",
                    "CODEX_WORKER_IMAGE": tags[0],
                    "CODEX_JOB_IMAGE": tags[1],
                }
            )
            for shard in SHARDS:
                stack.log_in(shard)
            for shard in SHARDS:
                wait_until(
                    lambda: stack.gate_open(f"codex-worker-{shard}"),
                    60,
                    interval=0.5,
                    what=f"gate of shard {shard} open",
                )
            yield stack
        finally:
            remove_project(
                docker_client, project, prefix, ["docker", "compose", "down", "--timeout", "10"], shell, cwd=directory
            )
            for name in tags:
                try:
                    docker_client.images.remove(name, noprune=True)
                except docker.errors.ImageNotFound:
                    pass


def test_runbook_commands_address_the_stack_scripts_up_built(up_stack: UpStack) -> None:
    """The runbook's plain `docker compose` lines reach the offline stack scripts/up built, through its
    .env: a killed worker comes back with `up -d` (no pull, nothing else recreated) and takes its
    claim again with no E010; a crashed one comes back by itself; a stop is warm and frees the claim."""
    stack = up_stack
    env_file = stack.directory / ".env"
    settings = env_file.read_text()
    assert env_file.stat().st_mode & 0o777 == 0o600
    assert "COMPOSE_FILE='docker-compose.yaml:docker-compose.offline.yaml'" in settings
    assert "CODEX_UP_BROKER='given'" in settings and f"COMPOSE_PROJECT_NAME='{stack.project}'" in settings
    assert "CODEX_PHASE_TIMEOUT='3000'" in settings and "CODEX_STOP_GRACE_PERIOD='3060s'" in settings  # limit + 60 s
    broker_url = settings.split("CELERY_BROKER_URL='", 1)[1].split("'", 1)[0]
    password = urlsplit(broker_url).password
    out, err = stack.first_up
    assert password and password not in out + err, "scripts/up printed the broker password"
    for shard in SHARDS:  # the next step, both ways
        assert f"docker compose run --rm login-{shard} " in out
        assert f"docker compose run --rm -T --entrypoint codex login-{shard} login --with-api-key < KEY_FILE" in out

    # What a bare `docker compose` reads here: this project, its broker, the host-broker stand-in.
    # Without .env the same directory names another project, the registry's broker image and URL.
    rendered = json.loads(stack.sh("docker compose config --format json").stdout)
    assert rendered["name"] == stack.project and rendered["services"]["rabbitmq"]["image"] == stack.private_tags[0]
    assert rendered["services"]["codex-worker-1"]["environment"]["CELERY_BROKER_URL"] == broker_url, "another broker"
    bare = json.loads(stack.sh("docker compose --env-file /dev/null config --format json").stdout)
    assert bare["name"] != stack.project and bare["services"]["rabbitmq"]["image"] == "rabbitmq:3-management"
    assert (
        bare["services"]["codex-worker-1"]["environment"]["CELERY_BROKER_URL"] == "amqp://guest:guest@rabbitmq:5672//"
    )
    workers = stack.workers()
    broker_stand_in = stack.container("rabbitmq").id
    if shutil.which("docker-compose"):  # v1 reads the same .env: the same containers
        v1 = subprocess.run(
            ["docker-compose", "ps", "-q", "codex-worker-0"],
            cwd=stack.directory,
            env=stack.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        assert v1.stdout.strip() == workers["codex-worker-0"].id
    for container in workers.values():  # the stop grace period covers the phase limit
        assert "CODEX_PHASE_TIMEOUT=3000" in container.attrs["Config"]["Env"]
        assert (
            container.attrs["Config"]["StopTimeout"] == 3060
            and container.attrs["HostConfig"]["RestartPolicy"]["Name"] == "always"
        )

    def no_e010(service: str) -> bool:
        return not any(line.get("code") == "CODEX-E010" for line in json_lines(stack.container(service).logs()))

    # A crash (the Celery main process dies, as in an OOM kill): Docker restarts it, claim retaken.
    crashed = workers["codex-worker-0"]
    tini = crashed.attrs["State"]["Pid"]
    main = int(Path(f"/proc/{tini}/task/{tini}/children").read_text().split()[0])
    os.kill(main, signal.SIGKILL)
    wait_until(
        lambda: crashed.reload() or crashed.attrs["RestartCount"] >= 1, 60, interval=0.5, what="worker 0 restarted"
    )
    wait_until(lambda: stack.gate_open("codex-worker-0"), 60, interval=0.5, what="gate 0 open after the crash")
    assert stack.volume_report(0)["holder"]["container_id"] == crashed.id and no_e010("codex-worker-0")

    # `docker kill`: a manual stop to Docker, no policy restarts it; the runbook's procedure does.
    killed = workers["codex-worker-1"]
    killed.kill()
    wait_until(lambda: killed.reload() or killed.status == "exited", 30, interval=0.5, what="worker 1 exited")
    time.sleep(3)
    killed.reload()
    assert (killed.status, killed.attrs["State"]["ExitCode"], killed.attrs["RestartCount"]) == ("exited", 137, 0)
    assert "exited" in stack.sh(runbook_says("docker compose ps -a codex-worker-1")).stdout.lower()
    stack.sh(runbook_says("docker compose up -d codex-worker-1"))
    wait_until(lambda: stack.gate_open("codex-worker-1"), 60, interval=0.5, what="gate 1 open after up -d")
    assert {s: c.id for s, c in stack.workers().items()} == {s: c.id for s, c in workers.items()}, (
        "a container was recreated"
    )
    assert stack.container("rabbitmq").id == broker_stand_in
    assert "gate open" in stack.sh(runbook_says("docker compose exec codex-worker-1 codex-agent status")).stdout
    holder = stack.volume_report(1)["holder"]
    assert holder["container_id"] == killed.id and holder["fresh"] is True and no_e010("codex-worker-1")

    # A stop is warm: exit 0, the claim released; the worker comes back the same way.
    stack.sh(runbook_says("docker compose stop codex-worker-1"))
    stopped = stack.container("codex-worker-1")
    assert (stopped.status, stopped.attrs["State"]["ExitCode"]) == ("exited", 0)
    assert "exited (0)" in stack.sh(runbook_says("docker compose ps -a codex-worker-1")).stdout.lower()
    assert stack.volume_report(1)["holder"] is None
    stack.sh(runbook_says("docker compose up -d codex-worker-1"))
    wait_until(lambda: stack.gate_open("codex-worker-1"), 60, interval=0.5, what="gate 1 open after the stop")


@pytest.mark.timeout(600)
def test_add_and_remove_a_shard_with_phases_in_flight(up_stack: UpStack, docker_client: docker.DockerClient) -> None:
    """The runbook's add-a-shard (headless) and decommission procedures, as written, while a phase
    longer than Docker's default stop timeout runs on every shard that stops: each such phase
    finishes after its worker's SIGTERM, none is cut off or runs twice, and every worker that stops
    exits 0. The new shard runs the runbook's test task; the removed shard's waiting tasks move and
    run once, its volume keeps its login and its empty queue is deleted. A stop shorter than the
    phase cuts one off, and it runs again."""
    stack = up_stack
    # Followed live: the daemon keeps too few past events to ask for them at the end.
    deaths = docker_client.events(
        decode=True,
        filters={"type": "container", "event": "die", "label": f"com.docker.compose.project={stack.project}"},
    )
    exits: list[tuple[str, str]] = []

    def watch() -> None:
        try:
            for event in deaths:
                exits.append((event["Actor"]["Attributes"]["name"], event["Actor"]["Attributes"]["exitCode"]))
        except Exception:  # noqa: BLE001  (the stream was closed at the end)
            pass

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    tap = LogTap(stack)
    compose_file = stack.directory / "docker-compose.yaml"
    stopped_warm: list[str] = []  # phases in flight when their worker was told to stop

    def publisher(shards: int) -> Any:
        return create_app(config_mod.load({"CELERY_BROKER_URL": stack.host_broker, "CODEX_SHARDS": str(shards)}))

    def hold(app: Any, shard: int, hold_s: float = HOLD_S) -> str:
        key = f"hold-{shard}-{secrets.token_hex(4)}"
        kwargs = {"affinity_key": key, "run_id": f"run-{key}", "phase": "hold", "hold_s": hold_s, "codex_shard": shard}
        task_id: str = app.send_task("codex.phase", kwargs=kwargs).id
        return task_id

    def in_flight(app: Any, shards: tuple[int, ...]) -> None:
        """A long phase running on each of ``shards``; the tap follows every worker."""
        tap.follow()
        tasks = {shard: hold(app, shard) for shard in shards}
        for shard, task_id in tasks.items():
            wait_until(
                lambda: runs_per_task(json_lines(stack.container(f"codex-worker-{shard}").logs()), task_id)[0] == 1,
                60,
                interval=0.3,
                what=f"the phase on shard {shard} running",
            )
        stopped_warm.extend(tasks.values())

    # Provisioning shard 3, steps 1-3: scripts/up recreates workers 0..2 (and the default one) while
    # each runs a phase.
    runbook_says("scripts/compose-shards 3")
    grown = _grown_by_shard_3(compose_file.read_text())
    compose_file.write_text(grown)
    out, _ = stack.up(hold_at="==> choosing the broker", meanwhile=lambda: in_flight(publisher(3), SHARDS))
    assert "docker compose run --rm login-3 " in out
    assert "docker compose run --rm -T --entrypoint codex login-3 login --with-api-key < KEY_FILE" in out

    # Steps 4-5: the headless login, then the runbook's test task on codex-3 and its audit lines.
    stack.log_in(3)
    wait_until(lambda: stack.gate_open("codex-worker-3"), 60, interval=0.5, what="gate of shard 3 open")
    assert stack.volume_report(3)["holder"]["container_id"] == stack.container("codex-worker-3").id
    stack.sh(
        runbook_says(
            "docker compose exec -T codex-worker-default celery -A worker_entry.app:app call codex.phase --queue codex-3 "
            """--kwargs '{"affinity_key": "smoke-test", "run_id": "smoke-shard-3", "phase": "smoke"}'"""
        )
    )
    read = runbook_says(
        """docker logs "$(docker compose ps -q codex-worker-3)" 2>&1 | jq -cR 'fromjson? | """
        """select(.run_id=="smoke-shard-3") | {event, queue, volume, exit_code}'"""
    )
    finished = wait_until(
        lambda: [json.loads(x) for x in stack.sh(read).stdout.splitlines() if "codex.job.finished" in x],
        60,
        interval=1,
        what="the test task's job finished on shard 3",
    )
    assert finished == [{"event": "codex.job.finished", "queue": "codex-3", "volume": stack.volume(3), "exit_code": 0}]

    # Decommissioning shard 3, steps 3-4: its worker stops while running a phase; late publishers,
    # still on 4 shards, left tasks in codex-3 (keys that route to shard 0 over 3 shards): drained.
    four = publisher(4)
    in_flight(four, (3,))
    stack.sh(runbook_says("docker compose stop codex-worker-3"))
    worker_3 = stack.container("codex-worker-3")
    assert worker_3.attrs["State"]["ExitCode"] == 0 and stack.volume_report(3)["holder"] is None
    keys = [k for k in keys_for_shard(3, 40, shards=4, prefix=f"decom-{stack.project}") if shard_for(k, 3) == 0][:4]
    late = [
        four.send_task("codex.phase", kwargs={"affinity_key": k, "run_id": f"run-{k}", "phase": "plan"}).id
        for k in keys
    ]
    wait_until(
        lambda: stack.waiting("codex-3") == len(late), 20, interval=0.5, what="the late tasks waiting in codex-3"
    )
    drain = runbook_says("docker compose exec codex-worker-default codex-agent drain codex-3 --shards 3")
    assert f"would move {len(late)} task(s)" in stack.sh(runbook_says(f"{drain} --dry-run")).stdout
    moved = stack.sh(drain).stdout
    assert f"moved {len(late)} task(s), 0 left in codex-3" in moved, moved

    # Step 5 recreates workers 0..2 with the new count while each runs a phase; step 6 verifies and
    # deletes the empty queue.
    in_flight(publisher(3), SHARDS)
    compose_file.write_text(_shrunk_to_3_shards(grown))
    stack.sh(runbook_says("docker compose up -d --remove-orphans"))
    assert "codex-worker-3" not in stack.workers()
    assert not docker_client.containers.list(all=True, filters={"id": worker_3.id})
    assert "would move 0 task(s), 0 left in codex-3" in stack.sh(f"{drain} --dry-run").stdout
    kept = stack.volume_report(3)
    assert kept["logged_in"] is True and kept["holder"] is None
    stack.sh(
        runbook_says(
            "docker compose exec -T codex-worker-default celery -A worker_entry.app:app amqp queue.delete codex-3 yes yes"
        )
    )
    assert not stack.exists("codex-3")

    # Every phase ran exactly once, each in-flight one through its worker's warm stop; the moved
    # tasks on shard 0; every worker that stopped exited 0.
    wait_until(
        lambda: all(runs_per_task(tap.everything(), task_id) == (1, 1) for task_id in late),
        90,
        interval=1,
        what="the moved tasks run once",
    )
    lines = tap.everything()
    assert sorted(
        (e["task_id"], e["queue"], e["exit_code"])
        for e in lines
        if e.get("event") == "codex.job.finished" and e["task_id"] in late
    ) == sorted((tid, "codex-0", 0) for tid in late)
    assert len(stopped_warm) == 7
    twice = [task_id for task_id in stopped_warm if runs_per_task(lines, task_id) != (1, 1)]
    assert not twice, (
        tap.story(twice) + "\n" + stack.container("docker-guard").logs().decode("utf-8", "replace")[-6000:]
    )
    assert [task_id for task_id in stopped_warm if not tap.finished_after_sigterm(task_id)] == []
    deaths.close()
    watcher.join(timeout=10)
    worker_exits = [code for name, code in exits if "codex-worker-" in name]
    assert len(worker_exits) >= 9 and set(worker_exits) == {"0"}, exits  # 4 recreated, 1 stopped, 4 recreated

    # Without a grace period that covers the phase, a stop cuts it off and it runs again.
    for shard in SHARDS:
        wait_until(lambda: stack.gate_open(f"codex-worker-{shard}"), 60, interval=0.5, what=f"gate {shard} open")
    cut = hold(publisher(3), 1, hold_s=6)
    wait_until(
        lambda: runs_per_task(json_lines(stack.container("codex-worker-1").logs()), cut)[0] == 1,
        60,
        interval=0.3,
        what="the phase on shard 1 running",
    )
    stack.sh("docker compose stop -t 1 codex-worker-1")
    assert stack.container("codex-worker-1").attrs["State"]["ExitCode"] == 137
    stack.sh(runbook_says("docker compose up -d codex-worker-1"))
    wait_until(
        lambda: runs_per_task(json_lines(stack.container("codex-worker-1").logs()), cut) == (2, 1),
        90,
        interval=1,
        what="the cut-off phase run again",
    )
