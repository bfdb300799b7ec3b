"""Real Codex phases from real workers: worker containers of the project's image (uid 1000, the
shard's volume at ``~/.codex``) on the host network, so that they and their job containers
(``CODEX_JOB_NETWORK=host``) reach the brokers and the OpenAI stand-in on 127.0.0.1. Like in
production, a worker reaches Docker only through its shard's endpoint of a real Docker API guard
(``python -m agent.guard``, one per worker here); ``guarded=False`` mounts the raw socket instead.

Logins are written straight into each volume's directory on the host, owned by uid 1000 and
private, as an operator's headless login leaves them.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from openai_standin import StandIn, login_files
from openai_standin.tokens import LoginTokens

from .dockerkit import TEST_LABEL, TEST_PREFIX
from .guard import GUARD_DOCKER_HOST, GuardProcess
from .workers import JsonLog

__all__ = [
    "APP_UID",
    "JOB_HOME",
    "UNCLASSIFIED_LIMIT_SITE",
    "UNHARVESTED_SITE",
    "ContainerWorker",
    "PhaseLab",
    "PhaseShard",
]

APP_UID = 1000
JOB_HOME = "/home/app/.codex"
ARTIFACTS_IN_WORKER = "/var/artifacts/spec_workflows"

UNHARVESTED_SITE = """\
# The unprotected variant of the harvest (tests/integration/test_phase_once.py, bench/soak.py): a
# worker that harvests no job of a Codex phase (agent.jobs.reconcile and agent.jobs.phase call these names
# at call time).
import agent.jobs.harvest
import agent.jobs.reconcile
agent.jobs.harvest.locate = lambda config, job: None
agent.jobs.reconcile.settle_earlier_job = lambda *args, **kwargs: None
"""

UNCLASSIFIED_LIMIT_SITE = """\
# The unprotected variant of the usage-limit hold (tests/integration/test_usage_limits.py,
# bench/limit_hold.py): a worker that does not tell a usage limit from any other failed run
# (agent.jobs.phase calls usage.classify through the module).
import agent.login.usage
agent.login.usage.classify = lambda *args, **kwargs: None
"""


@dataclass
class PhaseShard:
    """One shard's volume and the login in it."""

    index: int
    volume: str
    source: Path
    tokens: LoginTokens | None = None

    @property
    def codex_home(self) -> Path:
        """The volume's directory on the host."""
        return self.source

    def auth(self) -> dict[str, Any]:
        """The volume's auth.json (a test-only login; never printed)."""
        data: dict[str, Any] = json.loads((self.source / "auth.json").read_text())
        return data


class ContainerWorker(JsonLog):
    """A worker container whose ``docker logs`` are its JSON lines."""

    def __init__(self, container: Any) -> None:
        self.container = container
        self.name: str = container.name

    def log_text(self) -> str:
        return str(self.container.logs().decode("utf-8", "replace"))

    def exited(self) -> str | None:
        self.container.reload()
        if self.container.status in ("exited", "dead"):
            return f"exited {self.container.attrs['State'].get('ExitCode')}"
        return None

    def status(self) -> dict[str, Any]:
        """``codex-agent status --json`` inside the worker, plus its exit code."""
        code, output = self.container.exec_run(["codex-agent", "status", "--json"])
        data: dict[str, Any] = json.loads(output)
        data["exit_code"] = code
        return data

    def stop(self, timeout: int = 30) -> None:
        """Warm shutdown (SIGTERM through init), then remove."""
        try:
            self.container.stop(timeout=timeout)
        finally:
            self.container.remove(force=True)


class PhaseLab:
    """Volumes, logins and worker containers for phase tests; removes all of them at the end.

    Args:
        docker_client: the real engine.
        standin: the OpenAI stand-in the logins belong to.
        worker_image: the worker image; job_image: the job image (Codex CLI, uid 1000).
    """

    def __init__(self, docker_client: Any, standin: StandIn, worker_image: str, job_image: str) -> None:
        self.docker = docker_client
        self.standin = standin
        self.worker_image = worker_image
        self.job_image = job_image
        self.base = Path(tempfile.mkdtemp(prefix="cwa-phases-", dir="/var/tmp"))
        os.chmod(self.base, 0o755)
        self.artifacts = self.base / "artifacts"
        self.artifacts.mkdir()
        os.chown(self.artifacts, APP_UID, APP_UID)
        self.shards: list[PhaseShard] = []
        self.workers: list[ContainerWorker] = []
        self.guards: list[GuardProcess] = []

    def shard(self, index: int, *, access_ttl: float | None = None, login: bool = True) -> PhaseShard:
        """A new volume for shard ``index`` with the stand-in's config, logged in unless told not to."""
        name = f"{TEST_PREFIX}phase{index}_{uuid.uuid4().hex[:8]}"
        created = self.docker.volumes.create(name=name, labels=dict(TEST_LABEL))
        source = Path(created.attrs["Mountpoint"])
        os.chown(source, APP_UID, APP_UID)
        os.chmod(source, 0o700)
        shard = PhaseShard(index, name, source)
        self.shards.append(shard)
        login_files(None, self.standin.url).write(source, APP_UID, APP_UID)
        if login:
            self.login(shard, access_ttl=access_ttl)
        return shard

    def login(
        self, shard: PhaseShard, *, access_ttl: float | None = None, last_refresh: float | None = None
    ) -> LoginTokens:
        """Log the volume in afresh (a new token family), as the operator's headless login would."""
        shard.tokens = self.standin.authority.mint(access_ttl=access_ttl)
        login_files(shard.tokens, None, last_refresh=last_refresh).write(shard.source, APP_UID, APP_UID)
        return shard.tokens

    def copy_login(self, source: PhaseShard, target: PhaseShard) -> None:
        """Copy one volume's auth.json into another: the mistake the product exists to stop."""
        shutil.copy2(source.source / "auth.json", target.source / "auth.json")
        os.chown(target.source / "auth.json", APP_UID, APP_UID)
        target.tokens = source.tokens

    def guard(self, shard: PhaseShard) -> GuardProcess:
        """A Docker API guard serving ``shard`` (job network: host), stopped at :meth:`close`."""
        guard = GuardProcess({shard.index: shard.volume}, CODEX_JOB_NETWORK="host")
        self.guards.append(guard)
        return guard

    def worker(
        self,
        shard: PhaseShard,
        broker_url: str,
        backend_url: str,
        *,
        guard: GuardProcess | None = None,
        guarded: bool = True,
        command: list[str] | None = None,
        mounts: dict[str, Any] | None = None,
        image: str | None = None,
        **env: str,
    ) -> ContainerWorker:
        """Start a worker container for ``shard`` on the host network.

        Args:
            guard: the guard whose endpoint the worker uses; a new one when None and ``guarded``.
            guarded: False mounts the host's raw Docker socket instead (the unprotected variant).
            command: worker-entry's arguments (e.g. ``["--app", "myproj.celery:app"]``); none by default.
            mounts: more volumes, as the docker SDK takes them (an adopter's package, say).
            image: another worker image (an adopter's own); the lab's worker image by default.
        """
        name = f"{TEST_PREFIX}pw{shard.index}_{uuid.uuid4().hex[:6]}"
        environment = {
            "CELERY_BROKER_URL": broker_url,
            "CELERY_RESULT_BACKEND": backend_url,
            "CELERY_VISIBILITY_TIMEOUT": "30",
            "AGENT_RECHECK_INTERVAL": "1",
            "AGENT_WORKER_NAME": name,
            "CODEX_LOGIN_TIMEOUT": "10",
            "CODEX_SHARD_INDEX": str(shard.index),
            "CODEX_VOLUME_NAME": shard.volume,
            "CODEX_JOB_IMAGE": self.job_image,
            "CODEX_JOB_NETWORK": "host",
            "CODEX_REFRESH_TOKEN_URL_OVERRIDE": self.standin.refresh_url,
            **env,
        }
        volumes = {
            shard.volume: {"bind": JOB_HOME, "mode": "rw"},
            str(self.artifacts): {"bind": ARTIFACTS_IN_WORKER, "mode": "rw"},
            **(mounts or {}),
        }
        docker_access: dict[str, Any] = {}
        if guarded:
            guard = guard or self.guard(shard)
            volumes.update(guard.worker_mount(shard.index))
            environment["DOCKER_HOST"] = GUARD_DOCKER_HOST
        else:
            volumes["/var/run/docker.sock"] = {"bind": "/var/run/docker.sock", "mode": "rw"}
            docker_access["group_add"] = [str(os.stat("/var/run/docker.sock").st_gid)]
        container = self.docker.containers.run(
            image or self.worker_image,
            command=command,
            name=name,
            detach=True,
            init=True,
            network_mode="host",
            environment=environment,
            volumes=volumes,
            labels=dict(TEST_LABEL),
            **docker_access,
        )
        worker = ContainerWorker(container)
        self.workers.append(worker)
        return worker

    def ready_worker(self, shard: PhaseShard, broker_url: str, backend_url: str, **options: Any) -> ContainerWorker:
        """A worker for ``shard`` (options as :meth:`worker`) whose gate has opened."""
        worker = self.worker(shard, broker_url, backend_url, **options)
        worker.wait_for("codex.agent.ready", timeout=90, gate="open")
        return worker

    def site(self, name: str, text: str) -> dict[str, str]:
        """Worker environment that loads ``text`` as its sitecustomize (an unprotected variant)."""
        site = self.artifacts / name
        site.mkdir(exist_ok=True)
        (site / "sitecustomize.py").write_text(text)
        return {"PYTHONPATH": f"{ARTIFACTS_IN_WORKER}/{name}"}

    def artifact_dir(self, job: dict[str, Any]) -> Path:
        """Where a phase's artifacts (reported inside the worker) are on the host."""
        return self.artifacts / Path(job["artifacts"]).relative_to(ARTIFACTS_IN_WORKER)

    def close(self) -> None:
        """Remove the workers, the job containers and workspaces of the test, and the volumes."""
        for worker in self.workers:
            try:
                print(f"--- {worker.name} ---\n{worker.tail()}")  # shown by pytest when the test failed
                worker.container.remove(force=True)
            except Exception:  # noqa: BLE001  (already stopped and removed by the test)
                pass
        for guard in self.guards:
            print(f"--- guard {guard.dir} ---\n{guard.tail()}")
            guard.close()
        for shard in self.shards:
            for container in self.docker.containers.list(all=True, filters={"label": f"codex.volume={shard.volume}"}):
                container.remove(force=True)
            try:
                self.docker.volumes.get(shard.volume).remove(force=True)
            except Exception:  # noqa: BLE001
                pass
            # Workspaces the shard's jobs made, whatever their run id (an adopter's example uses its own).
            for volume in self.docker.volumes.list(filters={"label": f"codex.volume={shard.volume}"}):
                try:
                    volume.remove(force=True)
                except Exception:  # noqa: BLE001
                    pass
        for volume in self.docker.volumes.list(filters={"name": "codex_ws_"}):
            if "_cwa-" not in (volume.name or ""):
                continue
            try:
                volume.remove(force=True)
            except Exception:  # noqa: BLE001  (a job of another test still uses it)
                pass
        shutil.rmtree(self.base, ignore_errors=True)
