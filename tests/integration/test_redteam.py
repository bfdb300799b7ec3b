"""Red team on the real engine: every way out of a shard is refused with a coded reason and an audit line.

A real Docker API guard (``python -m agent.guard``) serves shard 0 (login volume *mine*) and shard 1
(*theirs*). Task code attacks from inside a worker container of shard 0, which reaches Docker only
through its endpoint: with the docker SDK, the docker CLI and raw HTTP on the socket. The guarded
client (``JobLauncher``) is attacked from the test process. Each attempt must be refused (403 naming
CODEX-E041 or E045, or the launcher's E041) and leave a ``codex.guard.refused`` or
``codex.job.refused`` line; the legitimate job path keeps working. The test of the test runs the
same requests on the raw socket, where they succeed: the guard is what stops them.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import string
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import docker
import docker.errors
import pytest
from structlog.testing import capture_logs

from agent.errors import DockerUnavailableError, JobRejectedError
from agent.jobs.launcher import JOB_REFUSED, JobLauncher
from agent.settings import config as config_mod
from testkit import TEST_LABEL, Images, make_api_key_login_in_volume, unique_name
from testkit.guard import GUARD_DOCKER_HOST, GuardProcess

pytestmark = [pytest.mark.docker, pytest.mark.codex]

HOME = "/home/app/.codex"
DOCKER_CLI = shutil.which("docker")


@dataclass
class Range:
    """Two shards behind one guard, a worker of shard 0 to attack from, targets of shard 1."""

    raw: docker.DockerClient
    images: Images
    guard: GuardProcess
    mine: str
    theirs: str
    theirs_path: str
    worker: Any
    victim_worker: Any
    victim_job: Any
    own_job: Any
    made: list[str]

    def env(self) -> dict[str, str]:
        """What the in-container attempts read: images, names and targets."""
        return {
            "IMAGE": self.images.job,
            "THEIRS": self.theirs,
            "THEIRS_PATH": self.theirs_path,
            "VICTIM": self.victim_worker.id,
            "VICTIM_JOB": self.victim_job.id,
            "OWN_JOB": self.own_job.id,
            "NAME": unique_name("rt"),
        }

    def refusals(self) -> list[dict[str, Any]]:
        return self.guard.events("codex.guard.refused")


@pytest.fixture(scope="module")
def range_(docker_client: docker.DockerClient, images: Images) -> Iterator[Range]:
    raw = docker_client
    made_volumes = [
        raw.volumes.create(name=unique_name(f"rt{i}"), labels={**TEST_LABEL, "codex.auth": "1"}).name for i in (0, 1)
    ]
    mine, theirs = made_volumes
    containers: list[Any] = []
    guard = GuardProcess({0: mine, 1: theirs})
    try:
        for name in made_volumes:
            source = raw.volumes.get(name).attrs["Mountpoint"]
            os.chown(source, 1000, 1000)
            os.chmod(source, 0o700)
        make_api_key_login_in_volume(images.job, mine)
        cli = {DOCKER_CLI: {"bind": "/usr/local/bin/docker", "mode": "ro"}} if DOCKER_CLI else {}
        pause = ["python3", "-c", "import signal; signal.pause()"]
        worker = raw.containers.run(
            images.worker,
            entrypoint=pause,
            detach=True,
            name=unique_name("rtw0"),
            labels=dict(TEST_LABEL),
            environment={
                "DOCKER_HOST": GUARD_DOCKER_HOST,
                "CODEX_SHARD_INDEX": "0",
                "CODEX_VOLUME_NAME": mine,
                "CODEX_LOGIN_CHECK_IMAGE": images.job,
            },
            volumes={mine: {"bind": HOME, "mode": "rw"}, **guard.worker_mount(0), **cli},
            network_mode="none",
        )
        victim_worker = raw.containers.run(
            images.worker,
            entrypoint=pause,
            detach=True,
            name=unique_name("rtw1"),
            labels=dict(TEST_LABEL),
            volumes={theirs: {"bind": HOME, "mode": "rw"}},
            network_mode="none",
        )
        containers += [worker, victim_worker]
        victim_job = guard.client(1).containers.run(images.job, ["sleep", "600"], detach=True, labels=dict(TEST_LABEL))
        own_job = guard.client(0).containers.run(images.job, ["sleep", "600"], detach=True, labels=dict(TEST_LABEL))
        containers += [victim_job, own_job]
        theirs_path = raw.volumes.get(theirs).attrs["Mountpoint"]
        yield Range(raw, images, guard, mine, theirs, theirs_path, worker, victim_worker, victim_job, own_job, [])
    finally:
        print(f"--- guard ---\n{guard.tail(40)}")
        guard.close()
        ours = {c.id for c in containers} | {
            c.id for name in made_volumes for c in raw.containers.list(all=True, filters={"volume": name})
        }
        for container_id in ours:
            try:
                raw.api.remove_container(container_id, force=True)
            except docker.errors.APIError:
                pass  # already gone, or being removed by --rm
        for name in made_volumes:
            raw.volumes.get(name).remove(force=True)


# -- the attempts ------------------------------------------------------------------------------

SDK = """
import docker, io, json, os, sys
client = docker.from_env(version="1.41")
IMAGE, THEIRS, VICTIM, VICTIM_JOB, OWN_JOB, THEIRS_PATH = (os.environ[k] for k in
    ("IMAGE", "THEIRS", "VICTIM", "VICTIM_JOB", "OWN_JOB", "THEIRS_PATH"))
for number, body in enumerate(json.loads(sys.argv[1])):
    NAME = f"{os.environ['NAME']}_{number}"
    try:
        exec(body)
        print(json.dumps({"status": 200, "message": "done"}))
    except docker.errors.APIError as e:
        print(json.dumps({"status": e.status_code, "message": e.explanation}))
"""

HTTP = """
import json, os, socket, sys
for method, path, body in json.loads(sys.argv[1]):
    s = socket.socket(socket.AF_UNIX)
    s.connect(os.environ["DOCKER_HOST"][len("unix://"):])
    s.sendall(f"{method} {path} HTTP/1.1\\r\\nHost: docker\\r\\nContent-Type: application/json\\r\\n"
              f"Content-Length: {len(body.encode())}\\r\\nConnection: close\\r\\n\\r\\n".encode() + body.encode())
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    s.close()
    head, _, rest = data.partition(b"\\r\\n\\r\\n")
    print(json.dumps({"status": int(head.split()[1]), "message": json.loads(rest or b"{}").get("message", "")}))
"""

E041, E045 = "CODEX-E041", "CODEX-E045"

# (id, channel, attempt, code, rule): sdk = Python code run in the worker; cli = docker argv; http =
# (method, path, body) on the endpoint socket.
ATTEMPTS: list[tuple[str, str, Any, str, str]] = [
    (
        "sdk-privileged",
        "sdk",
        "client.containers.create(IMAGE, ['true'], name=NAME, privileged=True)",
        E041,
        "create-option",
    ),
    (
        "sdk-cap-add-sys-admin",
        "sdk",
        "client.containers.create(IMAGE, ['true'], name=NAME, cap_add=['SYS_ADMIN'])",
        E041,
        "create-option",
    ),
    (
        "sdk-pid-host",
        "sdk",
        "client.containers.create(IMAGE, ['true'], name=NAME, pid_mode='host')",
        E041,
        "create-option",
    ),
    (
        "sdk-network-host",
        "sdk",
        "client.containers.create(IMAGE, ['true'], name=NAME, network_mode='host')",
        E041,
        "network",
    ),
    (
        "sdk-devices",
        "sdk",
        "client.containers.create(IMAGE, ['true'], name=NAME, devices=['/dev/kmsg:/dev/kmsg:r'])",
        E041,
        "create-option",
    ),
    (
        "sdk-docker-socket",
        "sdk",
        "client.containers.create(IMAGE, ['true'], name=NAME, volumes={'/var/run/docker.sock': {'bind': '/s', 'mode': 'rw'}})",
        E041,
        "host-bind",
    ),
    (
        "sdk-other-shard-volume",
        "sdk",
        "client.containers.create(IMAGE, ['true'], name=NAME, volumes={THEIRS: {'bind': '/x', 'mode': 'rw'}})",
        E041,
        "auth-volume",
    ),
    (
        "sdk-volumes-from",
        "sdk",
        "client.containers.create(IMAGE, ['true'], name=NAME, volumes_from=[VICTIM])",
        E041,
        "create-option",
    ),
    ("sdk-root-user", "sdk", "client.containers.create(IMAGE, ['true'], name=NAME, user='root')", E041, "root-user"),
    (
        "sdk-forged-shard-label",
        "sdk",
        "client.containers.create(IMAGE, ['true'], name=NAME, labels={'codex.shard': '1'})",
        E041,
        "forged-label",
    ),
    (
        "sdk-seccomp-unconfined",
        "sdk",
        "client.containers.create(IMAGE, ['true'], name=NAME, security_opt=['seccomp=unconfined'])",
        E041,
        "security-opt",
    ),
    (
        "sdk-memory-above-limit",
        "sdk",
        "client.containers.create(IMAGE, ['true'], name=NAME, mem_limit='64g')",
        E041,
        "limit",
    ),
    (
        "sdk-exec-other-worker",
        "sdk",
        "client.api.exec_create(VICTIM, ['cat', '/home/app/.codex/auth.json'])",
        E045,
        "endpoint",
    ),
    ("sdk-kill-other-shard-job", "sdk", "client.api.kill(VICTIM_JOB)", E045, "foreign-container"),
    ("sdk-stop-other-shard-job", "sdk", "client.api.stop(VICTIM_JOB, timeout=1)", E045, "foreign-container"),
    (
        "sdk-image-build",
        "sdk",
        "client.images.build(fileobj=__import__('io').BytesIO(b'FROM scratch'))",
        E045,
        "endpoint",
    ),
    ("sdk-network-create", "sdk", "client.networks.create(NAME)", E045, "endpoint"),
    ("sdk-volume-remove-other-shard", "sdk", "client.api.remove_volume(THEIRS)", E045, "foreign-volume"),
    ("cli-cap-add", "cli", ["run", "--rm", "--cap-add", "SYS_ADMIN", "$IMAGE", "true"], E041, "create-option"),
    ("cli-uts-host", "cli", ["run", "--rm", "--uts", "host", "$IMAGE", "true"], E041, "create-option"),
    ("cli-ipc-host", "cli", ["run", "--rm", "--ipc", "host", "$IMAGE", "true"], E041, "create-option"),
    ("cli-bind-root", "cli", ["run", "--rm", "-v", "/:/host", "$IMAGE", "true"], E041, "host-bind"),
    (
        "cli-bind-docker-volumes",
        "cli",
        ["run", "--rm", "-v", "/var/lib/docker/volumes:/v", "$IMAGE", "true"],
        E041,
        "host-bind",
    ),
    (
        "cli-other-shard-volume-by-path",
        "cli",
        ["run", "--rm", "-v", "$THEIRS_PATH:/x", "$IMAGE", "true"],
        E041,
        "host-bind",
    ),
    (
        "cli-other-shard-volume-by-name",
        "cli",
        ["run", "--rm", "-v", "$THEIRS:/x", "$IMAGE", "true"],
        E041,
        "auth-volume",
    ),
    ("cli-root-uid", "cli", ["run", "--rm", "-u", "0", "$IMAGE", "true"], E041, "root-user"),
    (
        "cli-unmask-proc",
        "cli",
        ["run", "--rm", "--security-opt", "systempaths=unconfined", "$IMAGE", "true"],
        E041,
        "create-option",
    ),
    ("cli-device", "cli", ["run", "--rm", "--device", "/dev/fuse", "$IMAGE", "true"], E041, "create-option"),
    (
        "cli-forged-volume-label",
        "cli",
        ["run", "--rm", "--label", "codex.volume=$THEIRS", "$IMAGE", "true"],
        E041,
        "forged-label",
    ),
    ("cli-exec-other-worker", "cli", ["exec", "$VICTIM", "true"], E045, "foreign-container"),
    ("cli-swarm-init", "cli", ["swarm", "init"], E045, "endpoint"),
    ("cli-plugin-ls", "cli", ["plugin", "ls"], E045, "endpoint"),
    (
        "http-ipc-host",
        "http",
        ("POST", "/v1.41/containers/create", '{"Image": "$IMAGE", "HostConfig": {"IpcMode": "host"}}'),
        E041,
        "create-option",
    ),
    (
        "http-privileged",
        "http",
        ("POST", "/v1.41/containers/create", '{"Image": "$IMAGE", "HostConfig": {"Privileged": true}}'),
        E041,
        "create-option",
    ),
    (
        "http-volume-driver-bind",
        "http",
        (
            "POST",
            "/v1.41/containers/create",
            '{"Image": "$IMAGE", "HostConfig": {"Mounts": [{"Type": "volume", "Source": "rtx", "Target": "/x", "VolumeOptions": {"DriverConfig": {"Name": "local", "Options": {"type": "none", "o": "bind", "device": "/"}}}}]}}',
        ),
        E041,
        "host-bind",
    ),
    (
        "http-update-own-job",
        "http",
        ("POST", "/v1.41/containers/$OWN_JOB/update", '{"Privileged": true, "Memory": 0}'),
        E045,
        "endpoint",
    ),
    ("http-commit-own-job", "http", ("POST", "/v1.41/commit?container=$OWN_JOB", "{}"), E045, "endpoint"),
    ("http-image-pull", "http", ("POST", "/v1.41/images/create?fromImage=alpine&tag=latest", ""), E045, "endpoint"),
    ("http-swarm", "http", ("GET", "/v1.41/swarm", ""), E045, "endpoint"),
    ("http-plugins-pull", "http", ("POST", "/v1.41/plugins/pull?remote=vieux/sshfs", "[]"), E045, "endpoint"),
    (
        "http-secret-create",
        "http",
        ("POST", "/v1.41/secrets/create", '{"Name": "x", "Data": "eA=="}'),
        E045,
        "endpoint",
    ),
    ("http-configs", "http", ("GET", "/v1.41/configs", ""), E045, "endpoint"),
    ("http-info", "http", ("GET", "/v1.41/info", ""), E045, "endpoint"),
    (
        "http-logs-other-shard-job",
        "http",
        ("GET", "/v1.41/containers/$VICTIM_JOB/logs?stdout=1&stderr=1", ""),
        E045,
        "foreign-container",
    ),
    ("http-inspect-other-shard-volume", "http", ("GET", "/v1.41/volumes/$THEIRS", ""), E045, "foreign-volume"),
    ("http-inspect-other-worker", "http", ("GET", "/v1.41/containers/$VICTIM/json", ""), E045, "foreign-container"),
]


@dataclass
class Outcome:
    """What one attempt got back, and the guard's audit lines it caused."""

    status: int
    message: str
    refused: list[dict[str, Any]]


def _run_in_worker(range_: Range, argv: list[str]) -> tuple[int, str]:
    code, output = range_.worker.exec_run(argv, environment=range_.env())
    return code, output.decode("utf-8", "replace")


def _batch(range_: Range, channel: str, attempts: list[Any]) -> list[Outcome]:
    """SDK or HTTP attempts in one process in the worker; each makes exactly one call, so the
    guard's refused lines pair with them in order."""
    before = len(range_.refusals())
    script = SDK if channel == "sdk" else HTTP
    payload = (
        attempts
        if channel == "sdk"
        else [[string.Template(w).safe_substitute(range_.env()) for w in a] for a in attempts]
    )
    code, text = _run_in_worker(range_, ["python3", "-c", script, json.dumps(payload)])
    assert code == 0, text
    results = [json.loads(line) for line in text.strip().splitlines()]
    refused = range_.refusals()[before:]
    assert len(results) == len(attempts) == len(refused), (results, refused)
    return [Outcome(int(r["status"]), str(r["message"]), [line]) for r, line in zip(results, refused, strict=False)]


def _cli(range_: Range, attempt: list[str]) -> Outcome:
    before = len(range_.refusals())
    code, text = _run_in_worker(
        range_, ["docker", *[string.Template(w).safe_substitute(range_.env()) for w in attempt]]
    )
    return Outcome(code, text, range_.refusals()[before:])


@pytest.fixture(scope="module")
def outcomes(range_: Range) -> dict[str, Outcome]:
    """Every attempt from task code, run once: SDK and HTTP in one batch each, CLI one by one."""
    found: dict[str, Outcome] = {}
    for channel in ("sdk", "http"):
        chosen = [a for a in ATTEMPTS if a[1] == channel]
        found.update(zip((a[0] for a in chosen), _batch(range_, channel, [a[2] for a in chosen]), strict=False))
    if DOCKER_CLI is not None:
        found.update((a[0], _cli(range_, a[2])) for a in ATTEMPTS if a[1] == "cli")
    return found


class TestFromTaskCode:
    @pytest.mark.parametrize(
        ("attempt_id", "channel", "code", "rule"),
        [(a[0], a[1], a[3], a[4]) for a in ATTEMPTS],
        ids=[a[0] for a in ATTEMPTS],
    )
    def test_attempt_is_refused_with_its_code_and_an_audit_line(
        self, outcomes: dict[str, Outcome], attempt_id: str, channel: str, code: str, rule: str
    ) -> None:
        """Refused with 403 (the CLI exits non-zero) naming the code; the guard logs the rule."""
        if channel == "cli" and DOCKER_CLI is None:
            pytest.skip("docker CLI absent on the host (nothing to mount into the worker)")
        outcome = outcomes[attempt_id]
        assert outcome.status in (403, 1, 125) and code in outcome.message, outcome.message
        assert outcome.refused, "no codex.guard.refused line"
        last = outcome.refused[-1]
        assert (last["rule"], last["code"], last["shard"]) == (rule, code, 0), last
        assert last["error"] in outcome.message

    def test_nothing_the_attempts_named_was_created(self, range_: Range, outcomes: dict[str, Outcome]) -> None:
        """After every attempt, shard 0's endpoint created nothing but its own job, and the volumes survive."""
        created = range_.raw.containers.list(all=True, filters={"label": f"codex.guard={range_.mine}"})
        assert {c.id for c in created} == {range_.own_job.id}
        assert {v.name for v in range_.raw.volumes.list() if v.name in (range_.mine, range_.theirs)} == {
            range_.mine,
            range_.theirs,
        }
        assert range_.raw.containers.get(range_.victim_worker.id).status == "running"
        assert range_.raw.containers.get(range_.victim_job.id).status == "running"
        assert len(outcomes) == len(ATTEMPTS) >= 25


LAUNCHER_ATTEMPTS: list[tuple[str, dict[str, Any], str]] = [
    ("privileged", {"privileged": True}, "privileged="),
    ("cap-add", {"cap_add": ["SYS_ADMIN"]}, "cap_add="),
    ("pid-host", {"pid_mode": "host"}, "pid_mode="),
    ("network-host", {"network_mode": "host"}, "NetworkMode"),
    ("docker-socket", {"volumes": {"/var/run/docker.sock": {"bind": "/s", "mode": "rw"}}}, "HostConfig.Binds"),
    ("volumes-from", {"volumes_from": ["x"]}, "volumes_from="),
    ("root-user", {"user": "0:0"}, "User"),
    ("forged-label", {"labels": {"codex.shard": "1"}}, "labels="),
]


class TestThroughTheGuardedClient:
    @pytest.mark.parametrize(
        ("options", "offending"), [a[1:] for a in LAUNCHER_ATTEMPTS], ids=[a[0] for a in LAUNCHER_ATTEMPTS]
    )
    def test_launcher_refuses_before_the_engine(self, range_: Range, options: dict[str, Any], offending: str) -> None:
        """JobLauncher refuses with CODEX-E041 and a codex.job.refused line; the guard never saw it."""
        before = len(range_.guard.events("codex.guard.created")) + len(range_.refusals())
        launcher = _launcher(range_)
        with capture_logs() as logs, pytest.raises(JobRejectedError) as info:
            launcher.run(range_.images.job, ["true"], **options)
        assert info.value.code == "CODEX-E041" and info.value.facts["offending"] == offending
        assert [e["offending"] for e in logs if e["event"] == JOB_REFUSED] == [offending]
        assert len(range_.guard.events("codex.guard.created")) + len(range_.refusals()) == before

    def test_other_shard_volume_by_name_and_path(self, range_: Range) -> None:
        """The launcher names the other shard's login volume, by name and by host path."""
        launcher = _launcher(range_)
        for source in (range_.theirs, range_.theirs_path):
            with pytest.raises(JobRejectedError) as info:
                launcher.run(range_.images.job, ["true"], volumes={source: {"bind": "/x", "mode": "ro"}})
            assert range_.theirs in info.value.message


def _launcher(range_: Range) -> JobLauncher:
    config = config_mod.load({"CODEX_SHARD_INDEX": "0", "AGENT_WORKER_NAME": "rt-worker"})
    context = {
        "queue": "codex-0",
        "shard": 0,
        "volume": range_.mine,
        "worker": "rt-worker",
        "run_id": f"redteam-{secrets.token_hex(4)}",
        "task_id": "redteam-task",
    }
    return JobLauncher(range_.guard.client(0), config, range_.mine, context)


class TestLegitimatePath:
    def test_a_job_through_the_guard_sees_its_login_in_the_sandbox(self, range_: Range) -> None:
        """The launcher's job runs with the login, as 1000, no capabilities, read-only root; one created line."""
        result = _launcher(range_).run(
            range_.images.job,
            ["sh", "-c", "codex login status; id -u; grep CapEff /proc/self/status; touch /x || echo ro"],
        )
        assert result.exit_code == 0 and "API key configured" in result.output
        assert "1000" in result.output and "0000000000000000" in result.output and "ro" in result.output
        created = range_.guard.events("codex.guard.created", container_id=result.container_id)
        assert len(created) == 1 and created[0]["binds"][0] == f"{range_.mine}:{HOME}:rw"

    def test_a_raw_client_gets_the_policy_imposed(self, range_: Range) -> None:
        """Task code's plain containers.run through the endpoint gets the login, the user, the labels and the sandbox."""
        container = range_.guard.client(0).containers.run(
            range_.images.job, ["sleep", "60"], detach=True, user="1000", labels={"team": "a"}
        )
        try:
            attrs = range_.raw.api.inspect_container(container.id)
            host = attrs["HostConfig"]
            assert host["Binds"][0] == f"{range_.mine}:{HOME}:rw" and host["CapDrop"] == ["ALL"]
            assert (
                host["SecurityOpt"] == ["no-new-privileges"] and host["Init"] is True and host["ReadonlyRootfs"] is True
            )
            assert host["PidsLimit"] == 1024 and host["Memory"] == 4 * 1024**3 and host["NanoCpus"] > 0
            assert host["Privileged"] is False and host["Tmpfs"]["/tmp"].startswith("rw,nosuid,nodev")
            assert attrs["Config"]["User"] == "1000:1000" and f"CODEX_HOME={HOME}" in attrs["Config"]["Env"]
            labels = attrs["Config"]["Labels"]
            assert (labels["codex.guard"], labels["codex.shard"], labels["codex.volume"], labels["team"]) == (
                range_.mine,
                "0",
                range_.mine,
                "a",
            )
        finally:
            container.remove(force=True)  # through the guard: its own container

    def test_listings_show_only_the_shard(self, range_: Range) -> None:
        """Containers and volumes listed through shard 0's endpoint are shard 0's alone."""
        client = range_.guard.client(0)
        assert {c.id for c in client.containers.list(all=True)} == {range_.own_job.id}
        names = {v.name for v in client.volumes.list()}
        assert range_.mine in names and range_.theirs not in names

    @pytest.mark.skipif(DOCKER_CLI is None, reason="docker CLI absent on the host (nothing to mount into the worker)")
    def test_the_docker_cli_in_the_worker_runs_a_job(self, range_: Range) -> None:
        """docker run (attach, stdin, wait, --rm) through the endpoint works and the job sees the login."""
        code, output = range_.worker.exec_run(
            ["sh", "-c", f"echo piped | docker run --rm -i {range_.images.job} sh -c 'cat; codex login status'"]
        )
        text = output.decode()
        assert code == 0 and "piped" in text and "API key configured" in text, text

    def test_codex_agent_volumes_in_the_worker_shows_its_own_volume(self, range_: Range) -> None:
        """`codex-agent volumes` works through the endpoint and sees this shard's login only, mounted
        read-only as it asked (the guard imposes the login mount; it keeps the mode it was asked for)."""
        since = time.time() - 1
        code, output = range_.worker.exec_run(["codex-agent", "volumes", "--json"])
        report = json.loads(output)
        assert [v["name"] for v in report["volumes"]] == [range_.mine] and report["volumes"][0]["logged_in"] is True
        until = int(time.time()) + 1
        inspectors = {
            e["Actor"]["ID"]
            for e in range_.raw.events(
                since=int(since), until=until, decode=True, filters={"type": "container", "event": "create"}
            )
            if e["Actor"]["Attributes"].get("codex.purpose") == "inspect"
        }
        modes = [
            e["Actor"]["Attributes"].get("read/write")
            for e in range_.raw.events(
                since=int(since), until=until, decode=True, filters={"type": "volume", "event": "mount"}
            )
            if e["Actor"]["ID"] == range_.mine and e["Actor"]["Attributes"].get("container") in inspectors
        ]
        assert len(inspectors) == 1 and modes == ["false"], (inspectors, modes)

    def test_a_guard_down_is_e040_and_its_restart_heals_the_same_client(self, range_: Range) -> None:
        """SIGKILL of the guard: the launch fails with CODEX-E040 (not a login error); after a restart the same client works."""
        launcher = _launcher(range_)
        range_.guard.kill()
        try:
            with pytest.raises(DockerUnavailableError) as info:
                launcher.run(range_.images.job, ["true"])
            assert info.value.code == "CODEX-E040"
        finally:
            range_.guard.start()
        assert launcher.run(range_.images.job, ["codex", "login", "status"]).exit_code == 0

    def test_a_guard_restart_during_a_job_does_not_abandon_it(self, range_: Range) -> None:
        """The guard is killed and started again while a job runs: the launcher waits again and gets
        the same job's exit, not CODEX-E040 (which would run the phase a second time)."""
        launcher = _launcher(range_)
        restart = threading.Timer(1.0, lambda: (range_.guard.kill(), time.sleep(1.0), range_.guard.start()))
        restart.start()
        try:
            result = launcher.run(range_.images.job, ["sh", "-c", "sleep 4; echo survived"])
        finally:
            restart.join()
        assert result.exit_code == 0 and "survived" in result.output
        assert (
            range_.guard.events("codex.guard.started")[-1]["timestamp"]
            > range_.guard.events("codex.guard.created", container_id=result.container_id)[0]["timestamp"]
        )


CONTROLS: list[tuple[str, dict[str, Any], str, Any]] = [
    ("privileged", {"privileged": True}, "Privileged", True),
    ("cap-add", {"cap_add": ["SYS_ADMIN"]}, "CapAdd", ["SYS_ADMIN"]),
    ("pid-host", {"pid_mode": "host"}, "PidMode", "host"),
    (
        "docker-socket",
        {"volumes": {"/var/run/docker.sock": {"bind": "/s", "mode": "rw"}}},
        "Binds",
        ["/var/run/docker.sock:/s:rw"],
    ),
    ("root-user", {"user": "0"}, "User", "0"),
]


class TestTheTestOfTheTest:
    @pytest.mark.parametrize(("options", "field", "value"), [c[1:] for c in CONTROLS], ids=[c[0] for c in CONTROLS])
    def test_the_same_create_on_the_raw_socket_succeeds(
        self, range_: Range, options: dict[str, Any], field: str, value: Any
    ) -> None:
        """Without the guard the engine creates exactly what was refused: the guard is what stops it."""
        container = range_.raw.containers.create(
            range_.images.job, ["true"], name=unique_name("rtraw"), labels=dict(TEST_LABEL), **options
        )
        try:
            attrs = range_.raw.api.inspect_container(container.id)
            found = attrs["Config"][field] if field == "User" else attrs["HostConfig"][field]
            assert found == value
        finally:
            container.remove(force=True)

    def test_exec_into_another_worker_on_the_raw_socket_succeeds(self, range_: Range) -> None:
        """The raw socket lets anyone read another shard's login: exactly what the guard refuses."""
        exec_id = range_.raw.api.exec_create(range_.victim_worker.id, ["ls", HOME])
        assert exec_id["Id"]


# -- bytes the Engine reads differently from a Python reader (issue: the guard writes every byte) --------

RAW = """
import base64, json, os, re, socket, sys
for data in json.loads(sys.argv[1]):
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(15)
    s.connect(os.environ["DOCKER_HOST"][len("unix://"):])
    s.sendall(base64.b64decode(data))
    out = b""
    try:
        while chunk := s.recv(65536):
            out += chunk
    except socket.timeout:
        pass
    s.close()
    head, _, rest = out.partition(b"\\r\\n\\r\\n")
    try:
        message = json.loads(rest or b"{}").get("message", "")
    except ValueError:
        message = rest[:200].decode("utf-8", "replace")
    answers = len(re.findall(rb"HTTP/1\\.1 [0-9]{3} [A-Z]", out))
    print(json.dumps({"status": int(head.split()[1]) if head else 0, "answers": answers, "message": message}))
"""

SMUGGLED = "rtsmuggle"
"""Name prefix of every container a smuggled request would create: none may exist afterwards."""


Bytes = Callable[[dict[str, str]], str]
"""An attempt's bytes, written once the range's names are known (lengths follow the names)."""


def _request(
    method: str, target: str, body: str = "", *, lines: list[str] | None = None, eol: str = "\r\n", close: bool = True
) -> Bytes:
    def write(env: dict[str, str]) -> str:
        path, text = (string.Template(x).safe_substitute(env) for x in (target, body))
        head = [
            f"{method} {path} HTTP/1.1",
            "Host: docker",
            *(
                lines
                if lines is not None
                else ["Content-Type: application/json", f"Content-Length: {len(text.encode())}"]
            ),
            *(["Connection: close"] if close else []),
        ]
        return eol.join(head) + eol + eol + text

    return write


def _then(first: Bytes, second: Bytes, eol: str) -> Bytes:
    return lambda env: first(env) + second(env).replace("\r\n", eol)


def _create(host: dict[str, Any] | str, top: str = "", name: str = "$SMUG") -> Bytes:
    host_json = host if isinstance(host, str) else json.dumps(host)
    return _request(
        "POST",
        f"/v1.41/containers/create?name={name}",
        '{"Image": "$IMAGE", "Cmd": ["true"]' + top + ', "HostConfig": ' + host_json + "}",
    )


_BIND_ROOT = {"Binds": ["/:/host"], "Privileged": True}
RAW_ATTEMPTS: list[tuple[str, Bytes, int, str]] = [
    (
        "bare-lf-smuggles-a-second-request",
        _then(_request("GET", "/_ping", lines=["Content-Length: 0"], eol="\n", close=False), _create(_BIND_ROOT), "\n"),
        400,
        "http",
    ),
    (
        "content-length-and-chunked",
        _request(
            "POST",
            "/v1.41/containers/create?name=$SMUG",
            "0\r\n\r\n",
            lines=["Content-Length: 4", "Transfer-Encoding: chunked"],
        ),
        400,
        "http",
    ),
    (
        "content-length-twice",
        _request("POST", "/v1.41/containers/create", "{}", lines=["Content-Length: 2", "Content-Length: 2"]),
        400,
        "http",
    ),
    (
        "expect-100-continue",
        _request("POST", "/v1.41/containers/create", "{}", lines=["Content-Length: 2", "Expect: 100-continue"]),
        400,
        "http",
    ),
    ("obsolete-line-folding", _request("GET", "/v1.41/version", lines=["X-A: a", " folded"]), 400, "http"),
    ("control-byte-in-target", _request("GET", "/v1.41/containers/$OWN_JOB/json\x01", lines=[]), 400, "http"),
    (
        "crlf-in-a-mount-source",
        _create(
            {
                "Mounts": [
                    {
                        "Type": "volume",
                        "Target": "/x",
                        "Source": "x\r\nPOST /v1.41/containers/create?name=$SMUG HTTP/1.1\r\n",
                    }
                ]
            }
        ),
        403,
        "create-option",
    ),
    ("crlf-in-a-query-value", _request("POST", "/v1.41/containers/create?name=a%0D%0AX-Y:%20z", "{}"), 403, "query"),
    (
        "mounts-in-lower-case",
        _create({"Mounts": [{"type": "bind", "source": "/", "target": "/host"}]}),
        403,
        "ambiguous-key",
    ),
    (
        "mount-source-long-s",
        _create({"Mounts": [{"Type": "volume", "\u017fource": "/", "Target": "/host"}]}),
        403,
        "ambiguous-key",
    ),
    ("hostconfig-in-lower-case", _create("{}", top=', "hostconfig": {"Binds": ["/:/host"]}'), 403, "ambiguous-key"),
    (
        "tmpfs-decoy-then-bind",
        _create(
            {
                "Mounts": [
                    {"Type": "tmpfs", "Target": "/t"},
                    {"Type": "volume", "Target": "/v", "type": "bind", "source": "/"},
                ]
            }
        ),
        403,
        "ambiguous-key",
    ),
    (
        "volume-driver-options-lower-case",
        _create(
            {
                "Mounts": [
                    {
                        "Type": "volume",
                        "Source": "rtx",
                        "Target": "/x",
                        "volumeoptions": {"driverconfig": {"Name": "local", "Options": {"o": "bind", "device": "/"}}},
                    }
                ]
            }
        ),
        403,
        "ambiguous-key",
    ),
    ("kelvin-sign-field", _create({"\u212aernelMemory": 1}), 403, "ambiguous-key"),
    (
        "old-version-start-with-hostconfig",
        _request("POST", "/v1.23/containers/$OWN_JOB/start", json.dumps(_BIND_ROOT)),
        403,
        "api-version",
    ),
    ("v1.12-start", _request("POST", "/v1.12/containers/$OWN_JOB/start", json.dumps(_BIND_ROOT)), 403, "api-version"),
    ("v1.99-start", _request("POST", "/v1.99/containers/$OWN_JOB/start", "{}"), 403, "api-version"),
    ("unversioned-start", _request("POST", "/containers/$OWN_JOB/start", "{}"), 403, "api-version"),
    (
        "pinned-start-with-a-body",
        _request("POST", "/v1.41/containers/$OWN_JOB/start", json.dumps(_BIND_ROOT)),
        403,
        "body",
    ),
    (
        "other-shard-job-by-id-prefix",
        _request("GET", "/v1.41/containers/$VICTIM_PREFIX/archive?path=/etc/hostname", lines=[]),
        403,
        "foreign-container",
    ),
    (
        "other-shard-job-by-name",
        _request("GET", "/v1.41/containers/$VICTIM_NAME/archive?path=/etc/hostname", lines=[]),
        403,
        "foreign-container",
    ),
    (
        "forged-compose-label",
        _create({}, top=', "Labels": {"com.docker.compose.project": "codex"}'),
        403,
        "forged-label",
    ),
    ("forged-metrics-target", _create({}, top=', "Labels": {"codex.metrics.port": "9808"}'), 403, "forged-label"),
    ("cpu-weight-above-default", _create({"CpuShares": 262144}), 403, "limit"),
    ("shm-64-gib", _create({"ShmSize": 64 * 1024**3}), 403, "limit"),
    ("cgroup-namespace-host", _create({"CgroupnsMode": "host"}), 403, "create-option"),
    ("mint-five-volumes", _create({"Binds": [f"$WS{i}:/w{i}" for i in range(5)]}), 403, "volume-count"),
    ("anonymous-volumes", _create({}, top=', "Volumes": {"/a": {}, "/b": {}}'), 403, "volume-count"),
    ("squat-another-shards-workspace", _create({"Binds": ["$THEIR_WS:/w"]}), 403, "workspace-name"),
    ("tmpfs-at-double-slash-job-home", _create({"Tmpfs": {"//home/app/.codex": ""}}), 403, "job-home"),
]


@pytest.fixture(scope="module")
def raw_env(range_: Range) -> dict[str, str]:
    from agent.jobs.policy import workspace_name

    victim = range_.raw.api.inspect_container(range_.victim_job.id)
    return {
        **range_.env(),
        "SMUG": f"{SMUGGLED}_{secrets.token_hex(3)}",
        "VICTIM_PREFIX": range_.victim_job.id[:12],
        "VICTIM_NAME": victim["Name"].lstrip("/"),
        "THEIR_WS": workspace_name(range_.theirs, "victim-run"),
        **{f"WS{i}": workspace_name(range_.mine, f"mint-{i}") for i in range(5)},
    }


@pytest.fixture(scope="module")
def raw_outcomes(range_: Range, raw_env: dict[str, str]) -> dict[str, tuple[dict[str, Any], list[dict[str, Any]]]]:
    """Every byte-level attempt from inside shard 0's worker, one connection each."""
    import base64

    found = {}
    for attempt_id, template, _status, _rule in RAW_ATTEMPTS:
        before = len(range_.refusals())
        data = base64.b64encode(template(raw_env).encode()).decode()
        code, output = range_.worker.exec_run(["python3", "-c", RAW, json.dumps([data])], environment=raw_env)
        assert code == 0, output
        found[attempt_id] = (json.loads(output.decode().strip().splitlines()[-1]), range_.refusals()[before:])
    return found


class TestBytesTheEngineReadsOtherwise:
    @pytest.mark.parametrize(
        ("attempt_id", "status", "rule"), [(a[0], a[2], a[3]) for a in RAW_ATTEMPTS], ids=[a[0] for a in RAW_ATTEMPTS]
    )
    def test_refused_with_one_answer_and_its_rule(
        self, raw_outcomes: dict[str, Any], attempt_id: str, status: int, rule: str
    ) -> None:
        """One answer (nothing smuggled behind it), the status and rule expected, and a refusal line."""
        answer, refused = raw_outcomes[attempt_id]
        assert (answer["status"], answer["answers"]) == (status, 1), answer
        assert refused and refused[-1]["rule"] == rule and refused[-1]["shard"] == 0, refused

    def test_nothing_smuggled_was_created_and_no_workspace_was_minted(
        self, range_: Range, raw_env: dict[str, str], raw_outcomes: dict[str, Any]
    ) -> None:
        """No container of the smuggled name exists; no workspace of the attempts exists."""
        assert not range_.raw.containers.list(all=True, filters={"name": raw_env["SMUG"]})
        names = {v.name for v in range_.raw.volumes.list()}
        assert not {raw_env[f"WS{i}"] for i in range(5)} & names and raw_env["THEIR_WS"] not in names


def _raw_socket(data: bytes) -> bytes:
    import socket as socket_mod

    with socket_mod.socket(socket_mod.AF_UNIX) as sock:
        sock.settimeout(15)
        sock.connect("/var/run/docker.sock")
        sock.sendall(data)
        out = b""
        try:
            while chunk := sock.recv(65536):
                out += chunk
        except TimeoutError:
            pass
    return out


class TestTheEngineObeysThoseBytes:
    """The test of the test: on the raw socket, the Engine does what the guard refuses."""

    def _created(self, range_: Range, template: Bytes, name: str, raw_env: dict[str, str]) -> dict[str, Any]:
        _raw_socket(template({**raw_env, "SMUG": name}).encode())
        container = range_.raw.containers.get(name)
        try:
            return range_.raw.api.inspect_container(container.id)
        finally:
            container.remove(force=True)

    def test_lower_case_mount_keys_bind_host_root(self, range_: Range, raw_env: dict[str, str]) -> None:
        """Go matches "source" to Source: the Engine binds / (what the guard refused as ambiguous-key)."""
        template = dict((a[0], a[1]) for a in RAW_ATTEMPTS)["mounts-in-lower-case"]
        attrs = self._created(range_, template, unique_name("rtraw"), raw_env)
        assert [(m["Type"], m["Source"]) for m in attrs["HostConfig"]["Mounts"]] == [("bind", "/")]

    def test_a_bare_lf_request_runs_the_one_behind_it(self, range_: Range, raw_env: dict[str, str]) -> None:
        """Go ends lines at a bare LF: the smuggled privileged create behind a ping runs."""
        template = dict((a[0], a[1]) for a in RAW_ATTEMPTS)["bare-lf-smuggles-a-second-request"]
        attrs = self._created(range_, template, unique_name("rtraw"), raw_env)
        assert attrs["HostConfig"]["Privileged"] is True and "/:/host" in attrs["HostConfig"]["Binds"]

    def test_limits_and_labels_pass_as_asked(self, range_: Range, raw_env: dict[str, str]) -> None:
        """CPU weight, a compose label: the Engine takes them as given."""
        by_id = dict((a[0], a[1]) for a in RAW_ATTEMPTS)
        assert (
            self._created(range_, by_id["cpu-weight-above-default"], unique_name("rtraw"), raw_env)["HostConfig"][
                "CpuShares"
            ]
            == 262144
        )
        assert (
            self._created(range_, by_id["forged-compose-label"], unique_name("rtraw"), raw_env)["Config"]["Labels"][
                "com.docker.compose.project"
            ]
            == "codex"
        )


class TestReferences:
    def test_a_name_that_is_another_jobs_id_prefix_serves_the_container_judged(self, range_: Range) -> None:
        """Shard 0 names its own job after shard 1's job's ID prefix: the guard resolves the reference once,
        checks that container, and sends the call by its full ID, so shard 0 reads its own job, never shard 1's."""
        client = range_.guard.client(0)
        prefix = range_.victim_job.id[:12]
        own = client.containers.run(
            range_.images.job, ["sleep", "60"], detach=True, name=prefix, labels=dict(TEST_LABEL)
        )
        try:
            chunks, _ = client.api.get_archive(prefix, "/etc/hostname")
            import io
            import tarfile

            with tarfile.open(fileobj=io.BytesIO(b"".join(chunks))) as archive:
                member = archive.extractfile(archive.getmembers()[0])
                hostname = member.read().decode().strip() if member else ""
            assert hostname == own.id[:12] != range_.victim_job.id[:12]
            with pytest.raises(docker.errors.APIError) as info:
                client.api.get_archive(range_.victim_job.id, "/etc/hostname")
            assert info.value.status_code == 403
        finally:
            own.remove(force=True)


class TestWorkspaceRemoval:
    def test_a_shard_removes_its_own_workspace_only(self, range_: Range) -> None:
        """Shard 0 removes its workspace; shard 1's workspace and shard 0's own login are refused
        (foreign-volume) and survive; on the raw socket the same removal of shard 1's goes through."""
        from agent.jobs.policy import workspace_name

        tag = secrets.token_hex(3)
        ours, theirs = workspace_name(range_.mine, f"rt-{tag}"), workspace_name(range_.theirs, f"rt-{tag}")
        for index, name in ((0, ours), (1, theirs)):
            made = range_.guard.client(index).containers.create(
                range_.images.job,
                ["true"],
                volumes={name: {"bind": "/workspace", "mode": "rw"}},
                labels=dict(TEST_LABEL),
            )
            made.remove()
        client = range_.guard.client(0)
        for refused in (theirs, range_.mine):
            with pytest.raises(docker.errors.APIError) as info:
                client.api.remove_volume(refused)
            assert info.value.status_code == 403 and "foreign-volume" in str(info.value.explanation)
        client.api.remove_volume(ours)
        names = {v.name for v in range_.raw.volumes.list()}
        assert ours not in names and {theirs, range_.mine} <= names
        range_.raw.api.remove_volume(theirs)  # the raw socket obeys: the guard is what refused it
        assert theirs not in {v.name for v in range_.raw.volumes.list()}
