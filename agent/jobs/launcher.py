"""The job launcher: job containers that always carry the shard's login and audit trail.

Task code calls :meth:`JobLauncher.run` instead of ``client.containers.run``. It may pass only the
allow-listed options of :data:`agent.settings.sandbox.JOB_OPTIONS`, and the container always gets this
shard's auth volume read-write at ``CODEX_JOB_HOME`` (the volume the mount check found),
``CODEX_HOME`` pointing there, the non-root ``CODEX_JOB_USER``, the ``codex.*`` labels, the
operator's ``CODEX_JOB_NETWORK`` and the sandbox's secure defaults (no capabilities, no new
privileges, init, limits, read-only root). Anything else, a mount of another login or a host path,
anything at ``CODEX_JOB_HOME``, root, is refused (CODEX-E041) with a ``codex.job.refused`` line. The
translation from a request to the Engine's create body is the pure :func:`job_create_args`, apart
from the I/O shell: docker-py writes the body, and :func:`agent.jobs.policy.create_request`, the one
job policy, rebuilds it. Where the worker reaches Docker through the API guard (:mod:`agent.guard`),
the guard runs the same function on every client's create, this one included.

Non-zero exits raise :class:`~agent.errors.JobFailedError` (CODEX-E042) by default, carrying the
exit code and a scrubbed output tail; ``check=False`` returns them in the :class:`JobResult`
instead. Engine failures are CODEX-E040, never login errors.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog
from docker.models.containers import _create_container_args
from docker.types import ContainerConfig

from agent.engine.client import ContainerTimeout, EngineCreate, run_container, translate_docker_errors
from agent.errors import AgentError, GuardRefusedError, JobFailedError, JobRejectedError, JobTimeoutError
from agent.jobs.policy import API_VERSION, RESERVED_LABEL_PREFIXES, Refusal, ShardPolicy, create_request
from agent.settings.config import AgentConfig
from agent.settings.sandbox import JOB_OPTIONS, Sandbox
from agent.telemetry.audit import JOB_FINISHED, JOB_STARTED
from agent.util.redact import scrub
from agent.volume.discovery import find_auth_volumes

__all__ = [
    "WORKSPACE_PATH",
    "RESERVED_OPTIONS",
    "JOB_REFUSED",
    "OUTPUT_LIMIT",
    "JobPolicy",
    "JobResult",
    "JobLauncher",
    "job_labels",
    "job_create_args",
    "described",
]

log = structlog.get_logger(__name__)

WORKSPACE_PATH = "/workspace"
"""Where the optional workspace volume is mounted (and the default working directory)."""

OUTPUT_LIMIT = 1_000_000
"""Characters of a job's output kept as its artifact (the end is kept)."""

_TAIL_CHARS = 2000

RESERVED_OPTIONS = frozenset({"detach", "remove", "auto_remove", "stdout", "stderr", "stream", "volumes_from"})
"""``containers.run`` options the launcher owns (lifecycle), or that could smuggle in a login."""

_LABEL_KEYS = ("shard", "queue", "volume", "run_id", "task_id", "worker")
JOB_REFUSED = "codex.job.refused"
"""Audit event of a job request the launcher refused (CODEX-E041), before anything was created."""


@dataclass(frozen=True)
class JobPolicy:
    """What the agent imposes on every job container of one task."""

    volume: str
    job_home: str
    job_user: str
    labels: dict[str, str]
    auth_volumes: frozenset[str] = frozenset()
    facts: dict[str, Any] = field(default_factory=dict)
    network: str | None = None
    """``CODEX_JOB_NETWORK``: the operator's network for jobs (None: Docker's default)."""
    sandbox: Sandbox = field(default_factory=Sandbox)

    def shard_policy(self) -> ShardPolicy:
        """The one policy record, as the Docker API guard holds it for this shard."""
        shard = self.facts.get("shard")
        return ShardPolicy(
            index=shard if isinstance(shard, int) else -1,
            volume=self.volume,
            job_home=self.job_home,
            job_user=self.job_user,
            network=self.network,
            sandbox=self.sandbox,
            auth_volumes=self.auth_volumes,
            facts_extra=tuple((k, v) for k, v in self.facts.items() if k not in ("shard", "volume")),
        )


@dataclass(frozen=True)
class JobResult:
    """A finished job container (already removed): the run's artifact."""

    container_id: str
    image: str
    exit_code: int
    duration_s: float
    output: str
    labels: dict[str, str]

    @property
    def ok(self) -> bool:
        """Whether the job exited 0."""
        return self.exit_code == 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe view (the output is already scrubbed)."""
        return {
            "container_id": self.container_id,
            "image": self.image,
            "exit_code": self.exit_code,
            "duration_s": round(self.duration_s, 3),
            "output": self.output,
            "labels": self.labels,
        }


def job_labels(context: Mapping[str, Any]) -> dict[str, str]:
    """The ``codex.*`` labels for a task's audit context (queue, shard, volume…)."""
    return {f"codex.{key}": "" if context.get(key) is None else str(context[key]) for key in _LABEL_KEYS}


# -- the pure translation --------------------------------------------------------------------


def _reject(policy: JobPolicy, cause: str, offending: str) -> JobRejectedError:
    return JobRejectedError(**{**policy.facts, "cause": cause, "offending": offending})


def _environment(environment: Mapping[str, str] | Sequence[str] | None) -> list[str]:
    if environment is None:
        return []
    if isinstance(environment, Mapping):
        return [f"{k}={v}" for k, v in environment.items()]
    return [str(item) for item in environment]


def _check_options(policy: JobPolicy, rest: Mapping[str, Any]) -> None:
    """What the launcher's own keyword interface takes; the job policy judges the body after."""
    reserved = sorted(RESERVED_OPTIONS & rest.keys())
    if reserved:
        raise _reject(policy, f"option {reserved[0]}= is reserved: the agent manages the container", f"{reserved[0]}=")
    unknown = sorted(rest.keys() - JOB_OPTIONS)
    if unknown:
        raise _reject(
            policy,
            f"option {unknown[0]}= is not on the allow-list of job options ({', '.join(sorted(JOB_OPTIONS))})",
            f"{unknown[0]}=",
        )
    # Docker's zero values for these mean "the default", which the body cannot tell from unset:
    # an explicit ask for less than the sandbox is refused here, where it is still visible.
    if rest.get("read_only") is False and policy.sandbox.read_only:
        raise _reject(policy, "option read_only=False; job containers have a read-only root filesystem", "read_only=")
    if rest.get("init", True) is not True:
        raise _reject(policy, "option init=False; job containers always run an init process", "init=")
    labels = rest.get("labels") or {}
    forged = sorted(str(k) for k in labels if str(k).startswith(RESERVED_LABEL_PREFIXES))
    if forged:
        raise _reject(
            policy,
            f"label {forged[0]} is the agent's: codex.* labels name the job's shard and run, "
            "com.docker.compose.* labels compose's services",
            "labels=",
        )


def _engine_body(args: dict[str, Any]) -> EngineCreate:
    """docker-py's own translation of ``containers.create`` arguments into an Engine body."""
    create = _create_container_args({**args, "version": API_VERSION})
    name = create.pop("name", None)
    for dropped in ("platform", "use_config_proxy", "detach"):
        create.pop(dropped, None)
    return EngineCreate(dict(ContainerConfig(API_VERSION, **create)), name)


def job_create_args(
    policy: JobPolicy,
    image: str,
    command: str | Sequence[str] | None,
    *,
    environment: Mapping[str, str] | Sequence[str] | None = None,
    workspace: str | None = None,
    workspace_path: str = WORKSPACE_PATH,
    options: Mapping[str, Any] | None = None,
    stdin: bool = False,
) -> EngineCreate:
    """Translate a job request into the Engine create body the one job policy approved.

    Pure: no I/O. docker-py turns the request into a create body (as ``containers.create`` would),
    then :func:`agent.jobs.policy.create_request`, the very function the Docker API guard runs on
    every client's create, rebuilds it: the shard's login volume, ``CODEX_HOME``, user, labels,
    network and the sandbox's secure defaults always win.

    Args:
        policy: what the agent imposes (volume, paths, user, labels, known auth volumes, network,
            sandbox).
        image: the job image.
        command: the job's command (argv list or shell-split string).
        environment: extra variables (dict or ``K=V`` list).
        workspace: optional volume mounted read-write at ``workspace_path``.
        workspace_path: where the workspace goes; also the default working directory.
        options: other ``containers.run`` options from :data:`agent.settings.sandbox.JOB_OPTIONS`
            (``volumes``, ``mounts``, ``tmpfs``, ``labels``, ``user``, limits…).
        stdin: the job reads a stream the launcher writes once (its stdin closes at the end).

    Raises:
        JobRejectedError: an option off the allow-list, or a request the job policy refuses (a mount
            of another Codex login, of a host path, or of anything at ``CODEX_JOB_HOME``; root or
            another user; a ``codex.*`` label; a network, limit or security option beyond the sandbox).
    """
    rest = dict(options or {})
    _check_options(policy, rest)
    volumes = rest.pop("volumes", None)
    binds = (
        [
            f"{source}:{spec['bind']}:{spec.get('mode', 'rw')}" if isinstance(spec, Mapping) else f"{source}:{spec}"
            for source, spec in volumes.items()
        ]
        if isinstance(volumes, Mapping)
        else [str(v) for v in volumes or ()]
    )
    if workspace is not None:
        binds.append(f"{workspace}:{workspace_path}:rw")
        rest.setdefault("working_dir", workspace_path)
    tmpfs = rest.pop("tmpfs", None)
    if tmpfs is not None and not isinstance(tmpfs, Mapping):
        tmpfs = dict(str(item).partition(":")[::2] for item in tmpfs)
    task_labels = rest.pop("labels", None) or {}
    if not isinstance(task_labels, Mapping):
        task_labels = {str(k): "" for k in task_labels}
    for imposed in ("cap_drop", "security_opt"):
        if imposed in rest and rest[imposed] is not None:
            rest[imposed] = list(rest[imposed])
    network = {"network_mode": policy.network} if policy.network and "network_mode" not in rest else {}
    args = {
        **policy.sandbox.run_options(),
        **rest,
        **network,
        "image": image,
        "command": command,
        "user": rest.get("user") or policy.job_user,
        "environment": _environment(environment),
        "volumes": [f"{policy.volume}:{policy.job_home}:rw", *binds],
        "tmpfs": dict(tmpfs or {}),
        "labels": {**{str(k): str(v) for k, v in task_labels.items()}, **policy.labels},
    }
    engine = _engine_body(args)
    if stdin:
        engine.body.update({"AttachStdin": True, "OpenStdin": True, "StdinOnce": True})
    try:
        plan = create_request(policy.shard_policy(), engine.body)
    except Refusal as e:
        raise _reject(
            policy, str(e.error.facts.get("cause") or e.error.message), str(e.error.facts.get("offending") or e.rule)
        ) from None
    return EngineCreate(plan.body, engine.name)


def described(describe: Callable[[str], Mapping[str, Any]] | None, output: str) -> dict[str, Any]:
    """The ``describe`` fields of a ``codex.job.finished`` line, on every way a job ends.

    A job that timed out (CODEX-E043) or failed without an exit code has no output kept, yet its line
    must carry the same fields (read from no output) as a finished one: they mark a Codex phase's
    job, and the runs metric (:mod:`agent.telemetry.metrics`) counts a phase by them.
    """
    return dict(describe(output)) if describe is not None else {}


# -- the I/O shell ---------------------------------------------------------------------------


class JobLauncher:
    """Creates job containers for one Codex task under the job policy.

    Args:
        client: a ``docker.DockerClient``.
        config: the worker's configuration (``CODEX_JOB_HOME``, ``CODEX_JOB_USER``).
        volume_name: the auth volume the mount check found (``Agent.volume_name``).
        context: the task's audit fields (``CodexTask.codex_context()``).
    """

    def __init__(self, client: Any, config: AgentConfig, volume_name: str | None, context: Mapping[str, Any]) -> None:
        self.client = client
        self.config = config
        self.volume_name = volume_name
        self.context = dict(context)

    def _facts(self) -> dict[str, Any]:
        return self.config.shard_facts(self.volume_name)

    def policy(self, list_auth_volumes: bool = True) -> JobPolicy:
        """The policy for this task, with the engine's current list of auth volumes.

        Args:
            list_auth_volumes: ask the engine which volumes hold logins; only needed when the
                request brings mounts of its own (names and labels catch the rest).

        Raises:
            JobRejectedError: this worker has no auth volume (not a Codex worker).
            DockerUnavailableError: the engine cannot list volumes.
        """
        facts = self._facts()
        if not self.volume_name:
            raise JobRejectedError(**facts, cause="this worker has no Codex auth volume", offending="the job")
        known: frozenset[str] = frozenset()
        if list_auth_volumes:
            with translate_docker_errors("list volumes", facts):
                known = frozenset(v.name for v in find_auth_volumes(self.client))
        return JobPolicy(
            volume=self.volume_name,
            job_home=self.config.job_home,
            job_user=self.config.job_user,
            labels=job_labels({**self.context, "volume": self.volume_name}),
            auth_volumes=known - {self.volume_name},
            facts=facts,
            network=self.config.job_network,
            sandbox=self.config.sandbox,
        )

    def run(
        self,
        image: str,
        command: str | Sequence[str] | None = None,
        *,
        environment: Mapping[str, str] | Sequence[str] | None = None,
        workspace: str | None = None,
        workspace_path: str = WORKSPACE_PATH,
        timeout: float | None = None,
        check: bool = True,
        describe: Callable[[str], Mapping[str, Any]] | None = None,
        stdin: bytes | None = None,
        **kwargs: Any,
    ) -> JobResult:
        """Run a job container to completion, log it, keep its output, remove it.

        Args:
            image: the job image.
            command: its command.
            environment: extra environment variables.
            workspace: optional workspace volume, read-write at ``workspace_path``.
            workspace_path: mount point of the workspace.
            timeout: wall-clock seconds before the job is killed (CODEX-E043); None waits.
            check: raise JobFailedError on a non-zero exit (default); False returns it.
            describe: extra ``codex.job.finished`` fields read from the (scrubbed) output, such
                as the Codex session and token usage; numbers and ids only, never secrets.
            stdin: bytes written once to the job's stdin, then closed (a workspace seed's tar).
            **kwargs: other ``containers.run`` options, validated by :func:`job_create_args`.

        Returns:
            The finished job with its scrubbed output.

        Raises:
            JobRejectedError: CODEX-E041, the request breaks the policy (nothing was created).
            DockerUnavailableError: CODEX-E040, the engine failed.
            JobFailedError: CODEX-E042, non-zero exit (with ``check``).
            JobTimeoutError: CODEX-E043, still running after ``timeout`` (killed and removed).
        """
        brings_mounts = workspace is not None or bool(kwargs.get("volumes") or kwargs.get("mounts"))
        policy = self.policy(list_auth_volumes=brings_mounts)
        audit = {**self.context, "volume": self.volume_name, "image": image}
        try:
            args = job_create_args(
                policy,
                image,
                command,
                environment=environment,
                workspace=workspace,
                workspace_path=workspace_path,
                options=kwargs,
                stdin=stdin is not None,
            )
        except JobRejectedError as e:
            self._refused(audit, e)
            raise
        started: dict[str, str] = {}

        def on_started(container_id: str) -> None:
            started["id"] = container_id
            log.info(JOB_STARTED, **audit, container_id=container_id)

        try:
            run = run_container(
                self.client,
                args,
                operation="job container",
                facts=self._facts(),
                timeout=timeout,
                on_started=on_started,
                stdin=stdin,
            )
        except ContainerTimeout as e:
            log.error(
                JOB_FINISHED,
                **audit,
                container_id=e.container_id,
                exit_code=None,
                duration_s=timeout,
                timed_out=True,
                **described(describe, ""),
            )
            raise JobTimeoutError(
                **self._facts(), container_id=e.container_id[:12], image=image, timeout=timeout
            ) from e
        except (JobRejectedError, GuardRefusedError) as e:  # the Docker API guard refused it
            self._refused(audit, e)
            raise
        except Exception as e:
            if "id" in started:
                log.error(
                    JOB_FINISHED,
                    **audit,
                    container_id=started["id"],
                    exit_code=None,
                    error=str(e),
                    **described(describe, ""),
                )
            raise
        output = scrub(run.output)[-OUTPUT_LIMIT:]
        result = JobResult(run.container_id, image, run.exit_code, run.duration_s, output, dict(args.body["Labels"]))
        log.info(
            JOB_FINISHED,
            **audit,
            container_id=run.container_id,
            exit_code=run.exit_code,
            duration_s=round(run.duration_s, 3),
            output_chars=len(output),
            **described(describe, output),
        )
        if check and not result.ok:
            raise self._failed(run.container_id, image, run.exit_code, output)
        return result

    @staticmethod
    def _refused(audit: Mapping[str, Any], error: AgentError) -> None:
        """The ``codex.job.refused`` audit line of a refused request (nothing was created)."""
        log.error(JOB_REFUSED, **audit, code=error.code, offending=error.facts.get("offending"), error=error.message)

    def _failed(self, container_id: str, image: str, exit_code: Any, output: str) -> JobFailedError:
        """CODEX-E042; ``facts["exit_code"]`` and ``facts["output_tail"]`` (scrubbed) carry the facts."""
        return JobFailedError(
            **self._facts(),
            container_id=container_id[:12],
            image=image,
            exit_code=exit_code,
            output_tail=output[-_TAIL_CHARS:],
        )
