"""Every failure the agent detects, each with a stable code and the command that fixes it.

Hierarchy::

    AgentError                      root; ``code``, ``exit_code``, ``message``, ``remediation``
     ├── ConfigError                CODEX-E001  an environment variable has a bad value
     ├── NotCodexWorkerError        CODEX-E002  a Codex task reached a worker with no shard
     ├── UnsafeSettingError         CODEX-E003  the app sets a worker setting that breaks a guarantee
     ├── ClaimError
     │    ├── VolumeClaimedError    CODEX-E010  another worker holds this volume
     │    ├── ClaimLostError        CODEX-E011  our claim marker was replaced or removed
     │    └── ClaimIOError          CODEX-E012  the claim files cannot be written
     ├── FleetError
     │    ├── FleetDuplicateError   CODEX-E013  another worker in the fleet holds this login
     │    └── FleetUnreadableError  CODEX-E070  the fleet's state cannot be read from the broker
     ├── MountError
     │    ├── NotMountedError       CODEX-E020  CODEX_HOME is not a mount (ephemeral layer)
     │    ├── WrongVolumeError      CODEX-E021  another volume is mounted at CODEX_HOME
     │    ├── ReadOnlyMountError    CODEX-E022  the volume is mounted read-only
     │    └── PermissionsError      CODEX-E023  mode is not 0700 or the owner is not us
     ├── LoginError
     │    ├── NotLoggedInError      CODEX-E030  ``codex login status`` says not logged in
     │    ├── CodexMissingError     CODEX-E031  the Codex CLI cannot be found or run
     │    ├── LoginTimeoutError     CODEX-E032  ``codex login status`` did not answer in time
     │    ├── LoginCheckError       CODEX-E033  any other failure of the login check
     │    ├── LoginRevokedError     CODEX-E034  a run found the login revoked (reused, expired…)
     │    ├── CredentialStoreError  CODEX-E035  config.toml moves the login out of auth.json
     │    └── UsageLimitError       CODEX-E036  the login reached its usage limit; wait for the reset
     ├── InfrastructureError
     │    ├── DockerUnavailableError CODEX-E040 the Docker engine cannot be reached or failed
     │    ├── JobRejectedError      CODEX-E041  task code asked for a forbidden container setup
     │    ├── JobFailedError        CODEX-E042  a job container exited non-zero
     │    ├── JobTimeoutError       CODEX-E043  a job container outlived its wall-clock limit
     │    ├── PhaseRequestError     CODEX-E044  a Codex phase was asked with unusable arguments
     │    ├── GuardRefusedError     CODEX-E045  the Docker API guard refused a call off its allow-list
     │    └── GuardBusyError        CODEX-E046  another guard already serves this socket directory
     ├── RoutingError               CODEX-E050  a routing input is unusable
     ├── UnplaceableTaskError       CODEX-E051  drain met a task its app does not know
     ├── DrainError                 CODEX-E060  queued tasks could not be moved
     └── LoginMoveError             CODEX-E071  a login export or import was refused

Warnings (never close the gate) have ``W`` codes and live in :mod:`agent.problems`. A test keeps
this tree, ``__all__`` and the classes in step.

Messages and remediations are formatted from keyword facts (shard, volume, holder, cause…);
callers must never pass a secret as a fact.
"""

from __future__ import annotations

from string import Formatter
from typing import Any, ClassVar

from agent.problems import WARNINGS, Facts, Problem

__all__ = [
    "AgentError",
    "ConfigError",
    "NotCodexWorkerError",
    "UnsafeSettingError",
    "ClaimError",
    "VolumeClaimedError",
    "ClaimLostError",
    "ClaimIOError",
    "FleetError",
    "FleetDuplicateError",
    "FleetUnreadableError",
    "MountError",
    "NotMountedError",
    "WrongVolumeError",
    "ReadOnlyMountError",
    "PermissionsError",
    "LoginError",
    "NotLoggedInError",
    "CodexMissingError",
    "LoginTimeoutError",
    "LoginCheckError",
    "LoginRevokedError",
    "CredentialStoreError",
    "UsageLimitError",
    "InfrastructureError",
    "DockerUnavailableError",
    "JobRejectedError",
    "JobFailedError",
    "JobTimeoutError",
    "PhaseRequestError",
    "GuardRefusedError",
    "GuardBusyError",
    "RoutingError",
    "UnplaceableTaskError",
    "DrainError",
    "LoginMoveError",
    "ERRORS",
    "all_codes",
]


def _placeholders(*templates: str) -> frozenset[str]:
    """The field names a template needs (``{shard}``, ``{value!r}`` -> shard, value)."""
    return frozenset(name for t in templates for _, name, _, _ in Formatter().parse(t) if name)


_REGISTRY: list[type[AgentError]] = []


class AgentError(Exception):
    """Root of every error the agent reports.

    Subclasses declare ``code`` (stable, never reused), ``title``, ``template`` and
    ``remediation_template``; instances are built from keyword facts, whose names are the
    templates' placeholders (:meth:`fields`). A class that declares its own code registers itself
    in :data:`ERRORS`, so no error escapes the catalogue, the runbook test or the docs.
    """

    code: ClassVar[str] = "CODEX-E000"
    title: ClassVar[str] = "agent error"
    template: ClassVar[str] = "{cause}"
    remediation_template: ClassVar[str] = "see runbook.md"
    exit_code: ClassVar[int] = 1
    strict_fields: ClassVar[bool] = False
    """Tests turn this on: a fact missing from a template is then a TypeError, not a raw ``{name}``."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "code" in cls.__dict__:
            _REGISTRY.append(cls)

    @classmethod
    def fields(cls) -> frozenset[str]:
        """The facts this error's message and remediation need."""
        return _placeholders(cls.template, cls.remediation_template)

    def __init__(self, *restored: str, **facts: Any) -> None:
        self.facts: dict[str, Any] = facts
        self.missing = sorted(self.fields() - facts.keys()) if not restored else []
        if self.missing and AgentError.strict_fields:
            raise TypeError(f"{type(self).__name__} ({self.code}) needs the facts {self.missing}")
        if restored:  # rebuilt from its text: unpickling, or Celery's result backend
            self.message = restored[0].removeprefix(f"{self.code} ")
        else:
            self.message = self.template.format_map(Facts(facts))
        self.remediation: str = self.remediation_template.format_map(Facts(facts))
        super().__init__(f"{self.code} {self.message}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.facts))

    def problem(self, check: str | None = None) -> Problem:
        """This error as the one value every report carries."""
        return Problem(self.code, self.title, self.message, self.remediation, "error", check)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe summary: code, title, message, remediation (the :class:`Problem`)."""
        return self.problem().to_dict()


class ConfigError(AgentError):
    code = "CODEX-E001"
    title = "invalid configuration"
    template = "{variable}={value!r} is invalid: {cause}; accepted: {accepted}"
    remediation_template = "set {variable} to {accepted} and restart the worker"
    exit_code = 2


class NotCodexWorkerError(AgentError):
    code = "CODEX-E002"
    title = "Codex task on a non-Codex worker"
    template = "task {task} reached worker {worker}, which serves no Codex shard (CODEX_SHARD_INDEX unset)"
    remediation_template = (
        "consume codex queues only from Codex workers: remove the codex queue from this worker's -Q, "
        "or set CODEX_SHARD_INDEX; the task was requeued"
    )


class UnsafeSettingError(AgentError):
    code = "CODEX-E003"
    title = "unsafe worker setting"
    template = "Celery app {app!r} sets {setting}={value!r}, which a Codex worker cannot run with: {why}"
    remediation_template = (
        "remove {setting} from the app's configuration (agent.install gives Codex workers the safe value) "
        "or set it to {accepted}, then start the worker again"
    )
    exit_code = 2


class ClaimError(AgentError):
    """The volume claim could not be taken or kept."""


class VolumeClaimedError(ClaimError):
    code = "CODEX-E010"
    title = "volume already claimed"
    template = (
        "shard {shard}: volume {volume} is already claimed by {holder}; "
        "two workers must never share one login, so this worker keeps its Codex gate closed"
    )
    remediation_template = (
        "this worker is the extra one: stop it ({stop_this}), or give it a volume of its own "
        "(CODEX_SHARD_INDEX or CODEX_VOLUME_NAME); leave the holder running. "
        "Who uses the volume: codex-agent volumes {volume}"
    )


class ClaimLostError(ClaimError):
    code = "CODEX-E011"
    title = "claim lost"
    template = "shard {shard}: the claim on volume {volume} is no longer ours ({cause})"
    remediation_template = (
        "find who else writes to the volume: codex-agent volumes; then restart this worker: docker restart {worker}"
    )


class ClaimIOError(ClaimError):
    code = "CODEX-E012"
    title = "claim files not writable"
    template = "shard {shard}: cannot write the claim in {codex_home} on volume {volume} ({cause})"
    remediation_template = (
        "mount the volume read-write and owned by the worker user: "
        "docker run --rm -u 0 -v {volume}:/v codex-worker-agent/job:dev chown -R {uid}:{uid} /v"
    )


class FleetError(AgentError):
    """The fleet seen through the broker: leases of logins, the board of workers."""


class FleetDuplicateError(FleetError):
    code = "CODEX-E013"
    title = "login already in use elsewhere in the fleet"
    template = (
        "shard {shard}: the login in volume {volume} is already leased in the broker by {holder}; "
        "one login must never run in two places"
    )
    remediation_template = (
        "log this volume in afresh with a login of its own: docker compose run --rm login-{shard} "
        "(the gate reopens by itself), or, if auth.json was copied here by mistake, put back this "
        "volume's own earlier auth.json (the copied login is forgotten once it is gone; a login held "
        "elsewhere stays refused); never copy auth.json between volumes or hosts. If this volume "
        "must keep the login instead, stop worker {holder_worker} on host {holder_host} first"
    )


class MountError(AgentError):
    """CODEX_HOME is not the volume it should be, or not usable as it is."""


class NotMountedError(MountError):
    code = "CODEX-E020"
    title = "CODEX_HOME is not a mounted volume"
    template = (
        "shard {shard}: {codex_home} is not a mount ({cause}); a login written there dies with "
        "the container and volume {volume} is not used"
    )
    remediation_template = (
        "mount the volume at CODEX_HOME: docker run -v {volume}:{codex_home} ... "
        "(compose: volumes: - {volume}:{codex_home})"
    )


class WrongVolumeError(MountError):
    code = "CODEX-E021"
    title = "wrong volume mounted"
    template = "shard {shard}: {codex_home} is backed by {found!r}, expected volume {volume}"
    remediation_template = (
        "mount {volume} at {codex_home} (compose: volumes: - {volume}:{codex_home}), "
        "or set CODEX_VOLUME_NAME={found} if that volume really belongs to shard {shard}"
    )


class ReadOnlyMountError(MountError):
    code = "CODEX-E022"
    title = "volume mounted read-only"
    template = (
        "shard {shard}: volume {volume} is mounted read-only at {codex_home}; "
        "Codex must rewrite auth.json when it refreshes the login"
    )
    remediation_template = "remove ':ro' from the mount: volumes: - {volume}:{codex_home}"


class PermissionsError(MountError):
    code = "CODEX-E023"
    title = "volume not private"
    template = (
        "shard {shard}: {codex_home} on volume {volume} has mode {mode} owned by uid {owner}; "
        "expected mode 0700 owned by uid {uid}"
    )
    remediation_template = (
        "docker run --rm -u 0 -v {volume}:/v codex-worker-agent/job:dev sh -c 'chown {uid}:{uid} /v && chmod 0700 /v'"
    )


class LoginError(AgentError):
    """The Codex login in the volume is unusable or could not be checked."""


class NotLoggedInError(LoginError):
    code = "CODEX-E030"
    title = "not logged in"
    template = "shard {shard}: volume {volume} holds no valid Codex login ({cause})"
    remediation_template = (
        "log this volume in once: docker compose run --rm login-{shard}   (device-auth: open the URL "
        "it prints, enter the code); headless: pipe an API key into the same service: "
        "docker compose run --rm -T --entrypoint codex login-{shard} login --with-api-key < key-file, "
        "or copy in an auth.json made elsewhere (runbook: Authenticating each volume once); "
        "the gate reopens by itself"
    )


class CodexMissingError(LoginError):
    code = "CODEX-E031"
    title = "Codex CLI missing"
    template = "shard {shard}: the Codex CLI {binary!r} cannot be run ({cause})"
    remediation_template = "install the pinned CLI in the image (npm install -g @openai/codex) or put `codex` on PATH"


class LoginTimeoutError(LoginError):
    code = "CODEX-E032"
    title = "login check timed out"
    template = "shard {shard}: `codex login status` on volume {volume} did not answer within {timeout}s"
    remediation_template = (
        "check the volume's storage and the CLI: time codex login status; "
        "raise CODEX_LOGIN_TIMEOUT if the storage is slow"
    )


class LoginCheckError(LoginError):
    code = "CODEX-E033"
    title = "login check failed"
    template = "shard {shard}: the login check on volume {volume} failed ({cause})"
    remediation_template = "run it by hand and read its error: codex-agent check --json"


class LoginRevokedError(LoginError):
    code = "CODEX-E034"
    title = "login revoked during a run"
    template = (
        "shard {shard}: a Codex run on volume {volume} found its login dead ({cause}); "
        "the task went back to its queue and the gate stays closed until this volume is logged in again"
    )
    remediation_template = (
        "log this one volume in again (a new auth.json), nothing else: "
        "docker compose run --rm login-{shard}   (headless: docker compose run --rm -T --entrypoint codex "
        "login-{shard} login --with-api-key < key-file); the gate reopens by itself and the task runs"
    )


class CredentialStoreError(LoginError):
    code = "CODEX-E035"
    title = "login not kept in auth.json"
    template = (
        "shard {shard}: {config_file} on volume {volume} {cause}; the agent can only guard a login kept in auth.json"
    )
    remediation_template = (
        'edit {config_file}: remove cli_auth_credentials_store, or set cli_auth_credentials_store = "file" '
        "(the agent never rewrites it for you); the gate reopens by itself"
    )


class UsageLimitError(LoginError):
    """A state of the login, not a failure: a LoginError, so the phase is requeued untouched and the
    gate closes; the marker in the volume keeps it closed until the reset time (:mod:`agent.login.usage`)."""

    code = "CODEX-E036"
    title = "usage limit reached"
    template = (
        "shard {shard}: the login in volume {volume} reached its {window} usage limit ({limit}) and resets at "
        "{resets_at}; the phase went back to its queue untouched and the gate stays closed until then"
    )
    remediation_template = (
        "nothing to do: the gate reopens by itself at the reset time and the queued phases run; to resume "
        "sooner add credits to this ChatGPT account (https://chatgpt.com/settings/usage); for more capacity "
        "add a shard with a login of its own (runbook: Deploying more shards); who else is limited: codex-agent fleet"
    )


class InfrastructureError(AgentError):
    """Something around Codex failed (Docker, containers): never a login problem."""


class DockerUnavailableError(InfrastructureError):
    code = "CODEX-E040"
    title = "Docker engine unavailable"
    template = "shard {shard}: the Docker engine failed during {operation} ({cause})"
    remediation_template = (
        "check the engine (docker info) and this shard's Docker API guard: docker compose ps docker-guard; "
        "start it again with docker compose up -d docker-guard (workers reconnect by themselves). "
        "Without the guard, the worker needs the socket: -v /var/run/docker.sock:/var/run/docker.sock"
    )


class JobRejectedError(InfrastructureError):
    code = "CODEX-E041"
    title = "job container request rejected"
    template = "shard {shard}: refused to create a job container: {cause}"
    remediation_template = (
        "let the agent mount the auth volume and pick the user: drop {offending} from the containers.run() call"
    )


class JobFailedError(InfrastructureError):
    code = "CODEX-E042"
    title = "job container failed"
    template = "shard {shard}: job container {container_id} of image {image} exited {exit_code}"
    remediation_template = "read the job's output: docker logs {worker} | jq 'select(.event==\"codex.job.finished\")'"


class JobTimeoutError(InfrastructureError):
    code = "CODEX-E043"
    title = "job wall-clock limit reached"
    template = (
        "shard {shard}: job container {container_id} of image {image} was still running after its "
        "{timeout}s limit; it was killed and removed"
    )
    remediation_template = (
        'read what the phase was doing: docker logs {worker} | jq \'select(.event=="codex.job.finished" '
        "and .timed_out)'; raise CODEX_PHASE_TIMEOUT if the phase needs longer, or fix the model endpoint"
    )


class PhaseRequestError(InfrastructureError):
    code = "CODEX-E044"
    title = "unusable phase request"
    template = "shard {shard}: {field}={value!r} is invalid: {cause}; accepted: {accepted}"
    remediation_template = "publish the phase again with {field} set to {accepted}"


class GuardRefusedError(InfrastructureError):
    code = "CODEX-E045"
    title = "Docker API call refused by the guard"
    template = "shard {shard}: the Docker API guard refused {method} {path}: {cause} (rule {rule})"
    remediation_template = (
        "a job needs only create, start, wait, logs, attach, inspect, kill and remove of its own containers; "
        "read the refusal: docker logs <guard> | jq 'select(.event==\"codex.guard.refused\")'"
    )


class GuardBusyError(InfrastructureError):
    code = "CODEX-E046"
    title = "another Docker API guard serves this socket directory"
    template = (
        "the Docker API guard cannot serve {socket_dir}: another guard holds it ({holder}); this one "
        "starts nothing and removes nothing"
    )
    remediation_template = (
        "keep one guard per host: use the running one (docker compose ps docker-guard), or stop it first; "
        "to run a second guard for tests, point it elsewhere: CODEX_GUARD_SOCKET_DIR=$(mktemp -d) python -m agent.guard"
    )


class RoutingError(AgentError):
    code = "CODEX-E050"
    title = "unroutable input"
    template = "{cause}"
    remediation_template = "pass a non-empty affinity key and a shard count >= 1"
    exit_code = 2


class UnplaceableTaskError(AgentError):
    code = "CODEX-E051"
    title = "queued task the drain cannot place"
    template = (
        "task {task} (id {task_id}) waiting in {queue} is not a task of Celery app {app!r}: its queue and "
        "affinity argument are unknown, so it stays in {queue}; tasks before it were moved, it and the rest were not"
    )
    remediation_template = (
        "run the drain with the app that defines {task}, from the directory it imports from: "
        "codex-agent drain {queue} --app <module>:<app>"
    )


class DrainError(AgentError):
    code = "CODEX-E060"
    title = "drain failed"
    template = "could not drain queue {queue} ({cause}); tasks already moved stay moved, the rest stay queued"
    remediation_template = "fix the cause and run the same command again: codex-agent drain {queue}"


class FleetUnreadableError(FleetError):
    code = "CODEX-E070"
    title = "fleet state unreadable"
    template = "could not read the fleet's state from the {broker} broker ({cause})"
    remediation_template = (
        "start the broker or point at the fleet's one (RabbitMQ or Redis), then run again: "
        "codex-agent fleet --broker <url>"
    )


class LoginMoveError(AgentError):
    code = "CODEX-E071"
    title = "login move refused"
    template = "cannot {action} the login of volume {volume}: {cause}; nothing was changed"
    remediation_template = (
        "read the cause, fix it, and run the same command again (runbook: Moving a shard's login to another node)"
    )


def _rebuild(cls: type[AgentError], facts: dict[str, Any]) -> AgentError:
    """Unpickle an AgentError from its facts (pool children send errors to the main process)."""
    return cls(**facts)


ERRORS: tuple[type[AgentError], ...] = tuple(_REGISTRY)
"""Every error class with a code, in definition order (registered by ``__init_subclass__``)."""


def all_codes() -> dict[str, str]:
    """Every code the agent can report, errors and warnings, mapped to its title."""
    codes = {cls.code: cls.title for cls in ERRORS}
    codes.update({w.code: w.title for w in WARNINGS})
    return codes
