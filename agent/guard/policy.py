"""What the guard lets through, per shard: the endpoint allow-list and the job policy of a create.

Pure functions of a request (method, path, JSON body) and of facts the server looked up: no I/O.
:func:`route` names what an allowed call touches or raises :class:`Refusal`; :func:`create_request`
rebuilds a ``POST /containers/create`` body from an allow-list of Engine API fields, with the
shard's login volume at ``CODEX_JOB_HOME``, the job user, the ``codex.*`` labels, the operator's
network and the sandbox (:mod:`agent.sandbox`). A field off the list is refused when it carries a
value and dropped when it holds Docker's zero value (the docker CLI sends every field), so nothing
the guard does not know ever reaches the engine (an empty ``MaskedPaths`` would unmask ``/proc``).
"""

from __future__ import annotations

import json
import posixpath
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode

from agent.discovery import AUTH_LABEL, AUTH_LABEL_VALUE, is_auth_volume
from agent.errors import AgentError, GuardRefusedError, JobRejectedError
from agent.sandbox import NO_NEW_PRIVILEGES, TMP_PATH, Sandbox

__all__ = [
    "GUARD_LABEL",
    "ShardPolicy",
    "Refusal",
    "Route",
    "CreatePlan",
    "route",
    "create_request",
    "judge_volume",
    "workspace_labels",
    "owns",
    "own_volume",
    "refuse_container",
    "refuse_volume",
    "may_inspect",
    "container_list_query",
    "own_volumes",
]

GUARD_LABEL = "codex.guard"
"""Label the guard puts on every container and workspace volume it creates: the shard's login volume,
unique per shard and per stack (two guards on one host never own each other's containers)."""

_VERSION = re.compile(r"^/v\d+\.\d+(?=/)")
_NAME = r"[A-Za-z0-9][A-Za-z0-9_.-]*"
_CONTAINER = re.compile(rf"^/containers/({_NAME})(?:/([a-z]+))?$")
_VOLUME = re.compile(rf"^/volumes/({_NAME})$")
_IMAGE = re.compile(r"^/images/([A-Za-z0-9][A-Za-z0-9_.:@/-]*)/json$")
_CONTAINER_ACTIONS = {
    ("GET", "json"): "inspect",
    ("GET", "logs"): "logs",
    ("GET", "archive"): "archive",
    ("HEAD", "archive"): "archive",
    ("POST", "start"): "start",
    ("POST", "wait"): "wait",
    ("POST", "kill"): "kill",
    ("POST", "stop"): "stop",
    ("POST", "attach"): "attach",
    ("POST", "resize"): "resize",
    ("DELETE", None): "remove",
}
"""What a job launch does to its own containers; exec, update, commit, put-archive… are not here."""

_PASSED = {"Image", "Cmd", "Entrypoint", "WorkingDir", "Hostname", "Domainname", "AttachStdin", "AttachStdout",
           "AttachStderr", "Tty", "OpenStdin", "StdinOnce", "StopSignal", "StopTimeout", "NetworkDisabled"}
"""Top-level create fields passed as they are."""
_HANDLED = {"User", "Env", "Labels", "Volumes", "HostConfig", "NetworkingConfig"}
_HOST_PASSED = {"AutoRemove", "ConsoleSize", "ShmSize", "CpuShares", "MemoryReservation"}
"""HostConfig fields passed as they are (scratch, terminal size, soft limits)."""
_HOST_HANDLED = {"Binds", "Mounts", "Tmpfs", "NetworkMode", "CapDrop", "SecurityOpt", "Init", "ReadonlyRootfs",
                 "Memory", "NanoCpus", "PidsLimit"}
_HARMLESS = {"NetworkMode": ("default",), "CgroupnsMode": ("private",), "IpcMode": ("private", "none"), "MemorySwappiness": (-1,),
             "Isolation": ("default",)}
"""Non-zero values the docker CLI sends that mean Docker's default (dropped like zero values)."""
_NULL_ONLY = {"MaskedPaths", "ReadonlyPaths"}
"""Fields whose empty list is not a default: ``[]`` unmasks ``/proc`` (``systempaths=unconfined``)."""
_LIMITS = {"Memory": "memory", "NanoCpus": "nano_cpus", "PidsLimit": "pids_limit"}
_BIND_MODES = {"ro", "rw", "nocopy"}
_NO_NEW_PRIVILEGES = {NO_NEW_PRIVILEGES, f"{NO_NEW_PRIVILEGES}:true", f"{NO_NEW_PRIVILEGES}=true"}


@dataclass(frozen=True)
class ShardPolicy:
    """One shard's endpoint: its login volume and the job policy every create gets."""

    index: int
    volume: str
    job_home: str = "/home/app/.codex"
    job_user: str = "1000:1000"
    network: str | None = None
    sandbox: Sandbox = field(default_factory=Sandbox)

    @property
    def mark(self) -> str:
        """Value of :data:`GUARD_LABEL` on what this shard's endpoint created."""
        return self.volume

    def facts(self) -> dict[str, Any]:
        """Shard and volume for error messages and audit lines."""
        return {"shard": self.index, "volume": self.volume}


class Refusal(Exception):
    """A call the guard refuses: a coded error (E041 or E045) and the rule that refused it."""

    def __init__(self, error: AgentError, rule: str) -> None:
        self.error = error
        self.rule = rule
        super().__init__(str(error))

    def body(self) -> bytes:
        """The 403 JSON body; ``message`` is what the docker CLI and SDK show."""
        return json.dumps({"message": str(self.error), "code": self.error.code, "rule": self.rule,
                           "remediation": self.error.remediation}).encode()


def _endpoint(policy: ShardPolicy, method: str, path: str, rule: str, cause: str) -> Refusal:
    return Refusal(GuardRefusedError(**policy.facts(), method=method, path=path, rule=rule, cause=cause), rule)


def _job(policy: ShardPolicy, rule: str, cause: str, offending: str) -> Refusal:
    return Refusal(JobRejectedError(**policy.facts(), cause=cause, offending=offending), rule)


@dataclass(frozen=True)
class Route:
    """An allowed call: what it is and what it touches."""

    kind: str
    """``ping``, ``create``, ``container``, ``containers``, ``image``, ``volumes`` or ``volume``."""
    path: str
    """The path without its API version prefix."""
    action: str | None = None
    name: str | None = None
    """The container or volume the call names."""


def route(policy: ShardPolicy, method: str, target: str) -> Route:
    """Classify a call, or refuse it (CODEX-E045, rule ``endpoint``).

    Args:
        policy: the shard whose endpoint received the call.
        method: the HTTP method.
        target: the request target, with its query.
    """
    raw_path = target.split("?", 1)[0]
    path = _VERSION.sub("", raw_path, count=1)
    if "%" in path or "//" in path or any(part in (".", "..") for part in path.split("/")):
        raise _endpoint(policy, method, path, "endpoint", "an unnormalised or encoded path")
    if (method, path) in (("GET", "/_ping"), ("HEAD", "/_ping"), ("GET", "/version")):
        return Route("ping", path)
    if (method, path) == ("POST", "/containers/create"):
        return Route("create", path)
    if (method, path) == ("GET", "/containers/json"):
        return Route("containers", path)
    if (method, path) == ("GET", "/volumes"):
        return Route("volumes", path)
    if method == "GET" and (image := _IMAGE.match(path)):
        return Route("image", path, name=image.group(1))
    if method == "GET" and (volume := _VOLUME.match(path)):
        return Route("volume", path, name=volume.group(1))
    container = _CONTAINER.match(path)
    if container and (action := _CONTAINER_ACTIONS.get((method, container.group(2)))):
        return Route("container", path, action=action, name=container.group(1))
    raise _endpoint(policy, method, path, "endpoint",
                    "not on the allow-list of a job launch (create, start, wait, logs, attach, inspect, kill, "
                    "remove of its own containers; image inspect; its own volumes; ping, version)")


def owns(policy: ShardPolicy, labels: Mapping[str, Any] | None) -> bool:
    """Whether a container (by its labels) was created through this shard's endpoint."""
    return str((labels or {}).get(GUARD_LABEL)) == policy.mark


def may_inspect(policy: ShardPolicy, attrs: Mapping[str, Any]) -> bool:
    """Inspect is also allowed on a container mounting this shard's volume (the worker's mount check)."""
    labels = (attrs.get("Config") or {}).get("Labels")
    return owns(policy, labels) or any(m.get("Name") == policy.volume for m in attrs.get("Mounts") or ())


def refuse_container(policy: ShardPolicy, method: str, path: str, name: str) -> Refusal:
    """CODEX-E045 for a call on a container this shard did not create."""
    return _endpoint(policy, method, path, "foreign-container",
                     f"container {name} was not created through shard {policy.index}'s endpoint")


def refuse_volume(policy: ShardPolicy, method: str, path: str, name: str) -> Refusal:
    """CODEX-E045 for a look at a volume that is neither this shard's login nor its workspace."""
    return _endpoint(policy, method, path, "foreign-volume", f"volume {name} is not one of shard {policy.index}'s")


def container_list_query(policy: ShardPolicy, target: str) -> str:
    """``GET /containers/json`` narrowed to this shard's containers (label filters are ANDed)."""
    path, _, query = target.partition("?")
    params = [(k, v) for k, v in parse_qsl(query, keep_blank_values=True) if k != "filters"]
    raw = dict(parse_qsl(query)).get("filters")
    try:
        filters = json.loads(raw) if raw else {}
    except ValueError:
        filters = {}
    if not isinstance(filters, dict):
        filters = {}
    labels = filters.get("label") or []
    if isinstance(labels, dict):  # the old {"k=v": true} form
        labels = [k for k, on in labels.items() if on]
    filters["label"] = [*[str(x) for x in labels], f"{GUARD_LABEL}={policy.mark}"]
    return f"{path}?{urlencode([*params, ('filters', json.dumps(filters))])}"


def own_volume(policy: ShardPolicy, name: str, labels: Mapping[str, Any] | None) -> bool:
    """This shard's login volume, or a workspace its endpoint created."""
    return name == policy.volume or str((labels or {}).get(GUARD_LABEL)) == policy.mark


def own_volumes(policy: ShardPolicy, listing: Mapping[str, Any]) -> dict[str, Any]:
    """A ``GET /volumes`` reply with only this shard's volumes left in it."""
    volumes = [v for v in listing.get("Volumes") or () if own_volume(policy, str(v.get("Name")), v.get("Labels"))]
    return {**listing, "Volumes": volumes}


def judge_volume(policy: ShardPolicy, name: str, attrs: Mapping[str, Any] | None) -> bool:
    """Whether a named volume a create mounts may be used; True when the guard must create it first.

    Raises:
        Refusal: another login (``auth-volume``) or a volume another shard or anyone else made
            (``foreign-volume``).
    """
    labels = dict((attrs or {}).get("Labels") or {})
    if is_auth_volume(name, labels):
        raise _job(policy, "auth-volume", f"a mount of Codex auth volume {name}, another shard's login", name)
    if attrs is None:
        return True
    if not own_volume(policy, name, labels):
        raise _job(policy, "foreign-volume",
                   f"a mount of volume {name}, which shard {policy.index}'s endpoint did not create "
                   f"({GUARD_LABEL}={labels.get(GUARD_LABEL, 'unset')})", name)
    return False


def workspace_labels(policy: ShardPolicy) -> dict[str, str]:
    """Labels of a workspace volume the guard creates for this shard."""
    return {GUARD_LABEL: policy.mark, "codex.volume": policy.volume}


# -- the create body ---------------------------------------------------------------------------


@dataclass
class CreatePlan:
    """A create the guard will forward: the rebuilt body and the named volumes it mounts."""

    body: dict[str, Any]
    volumes: list[str] = field(default_factory=list)


def _zero(value: Any) -> bool:
    if value is None or value is False or value == 0 or value == "":
        return True
    if isinstance(value, Mapping):
        return all(_zero(v) for v in value.values())
    if isinstance(value, list):
        return all(_zero(v) for v in value)
    return False


def _unset(key: str, value: Any) -> bool:
    if key in _NULL_ONLY:
        return value is None
    if key == "RestartPolicy" and isinstance(value, Mapping):
        return str(value.get("Name") or "no") == "no" and _zero(value.get("MaximumRetryCount"))
    return _zero(value) or value in _HARMLESS.get(key, ())


def _at_home(policy: ShardPolicy, target: str) -> bool:
    target = posixpath.normpath(target) if target.startswith("/") else target
    home = policy.job_home.rstrip("/")
    return target == home or target.startswith(home + "/")


def _check_target(policy: ShardPolicy, target: str, what: str) -> None:
    if _at_home(policy, target):
        raise _job(policy, "job-home", f"{what} puts a mount at {target}, inside CODEX_JOB_HOME {policy.job_home} "
                   f"where the guard mounts {policy.volume}", what)


def _named_source(policy: ShardPolicy, source: str, target: str, what: str, plan: CreatePlan) -> bool:
    """Check a mount's source; True when it is the imposed login mount itself (dropped, re-added)."""
    if source != policy.volume:
        _check_target(policy, target, what)
    if source.startswith("/"):
        raise _job(policy, "host-bind", f"{what} binds host path {source}; jobs mount named workspace volumes only", what)
    if source == policy.volume:
        if posixpath.normpath(target) == policy.job_home:
            return True
        raise _job(policy, "auth-volume", f"{what} mounts the login volume {source} at {target}; the guard mounts it "
                   f"at {policy.job_home} only", what)
    if source:
        plan.volumes.append(source)
    return False


def _binds(policy: ShardPolicy, binds: Any, plan: CreatePlan) -> list[str]:
    kept: list[str] = []
    for bind in binds or ():
        parts = str(bind).split(":")
        if len(parts) < 2:
            raise _job(policy, "create-option", f"HostConfig.Binds entry {bind!r} is not source:target[:mode]", "Binds")
        source, target, modes = parts[0], parts[1], set(",".join(parts[2:]).split(",")) - {""}
        if modes - _BIND_MODES:
            raise _job(policy, "create-option", f"bind options {sorted(modes - _BIND_MODES)} (allowed: ro, rw, nocopy)", "Binds")
        if not _named_source(policy, source, target, "HostConfig.Binds", plan):
            kept.append(str(bind))
    return kept


def _mounts(policy: ShardPolicy, mounts: Any, plan: CreatePlan) -> list[dict[str, Any]]:
    kept: list[dict[str, Any]] = []
    for mount in mounts or ():
        kind, source, target = mount.get("Type") or "volume", str(mount.get("Source") or ""), str(mount.get("Target") or "")
        if kind not in ("volume", "tmpfs"):
            raise _job(policy, "host-bind", f"HostConfig.Mounts of type {kind} ({source or '?'}); jobs mount named "
                       "volumes and tmpfs only", "Mounts")
        if not _zero((mount.get("VolumeOptions") or {}).get("DriverConfig")):
            raise _job(policy, "host-bind", "a volume mount with driver options (a volume driver can bind any host path)",
                       "Mounts")
        if kind == "tmpfs":
            _check_target(policy, target, "HostConfig.Mounts")
        if not _named_source(policy, source, target, "HostConfig.Mounts", plan):
            kept.append(dict(mount))
    return kept


def _user(policy: ShardPolicy, user: Any) -> str:
    if _zero(user):
        return policy.job_user
    name, _, group = str(user).partition(":")
    if "root" in (name, group) or "0" in (name, group):
        raise _job(policy, "root-user", f"User {user} is root; job containers never run as root", "User")
    if str(user) not in (policy.job_user, policy.job_user.split(":")[0]):
        raise _job(policy, "other-user", f"User {user} is not CODEX_JOB_USER={policy.job_user}, the login's owner", "User")
    return policy.job_user


def _env(policy: ShardPolicy, env: Any) -> list[str]:
    kept = []
    for item in env or ():
        name, _, value = str(item).partition("=")
        if name == "CODEX_HOME":
            if posixpath.normpath(value or ".") != policy.job_home:
                raise _job(policy, "codex-home", f"Env CODEX_HOME={value} points away from {policy.job_home}", "CODEX_HOME")
            continue
        kept.append(str(item))
    return [*kept, f"CODEX_HOME={policy.job_home}"]


def _labels(policy: ShardPolicy, labels: Any) -> dict[str, str]:
    given = {str(k): str(v) for k, v in (labels or {}).items()}
    imposed = {"codex.shard": str(policy.index), "codex.volume": policy.volume, GUARD_LABEL: policy.mark}
    for key, value in imposed.items():
        if key in given and given[key] != value:
            raise _job(policy, "forged-label", f"label {key}={given[key]} claims what this endpoint is not: it serves "
                       f"shard {policy.index} and volume {policy.volume}", key)
    if given.get(AUTH_LABEL) == AUTH_LABEL_VALUE:
        raise _job(policy, "forged-label", f"label {AUTH_LABEL}={AUTH_LABEL_VALUE} marks login volumes, not jobs", AUTH_LABEL)
    return {**given, **imposed}


def _network(policy: ShardPolicy, host: Mapping[str, Any], networking: Any) -> str:
    asked = str(host.get("NetworkMode") or "default")
    configured = policy.network or "default"
    if asked not in ("default", "none", configured):
        raise _job(policy, "network", f"HostConfig.NetworkMode={asked}; the job network is the operator's "
                   f"({configured}), a job may only ask for none", "NetworkMode")
    endpoints = (networking or {}).get("EndpointsConfig") or {}
    effective = configured if asked == "default" else asked
    if set(endpoints) - {effective}:
        raise _job(policy, "network", f"NetworkingConfig joins {sorted(set(endpoints) - {effective})}; a job joins "
                   f"{effective} only", "NetworkingConfig")
    return effective


def _limits(policy: ShardPolicy, host: Mapping[str, Any]) -> dict[str, Any]:
    imposed = policy.sandbox.host_config()
    for key, attribute in _LIMITS.items():
        value = host.get(key)
        if _zero(value):
            continue
        ceiling = getattr(policy.sandbox, attribute)
        if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= ceiling:
            raise _job(policy, "limit", f"HostConfig.{key}={value} is above the job limit {ceiling} (or unlimited)", key)
        imposed[key] = value
    extra = [opt for opt in host.get("SecurityOpt") or () if str(opt) not in _NO_NEW_PRIVILEGES]
    if extra:
        raise _job(policy, "security-opt", f"HostConfig.SecurityOpt {extra[0]!r}; jobs allow only {NO_NEW_PRIVILEGES}",
                   "SecurityOpt")
    if host.get("ReadonlyRootfs") is True:  # False is Docker's zero value: the sandbox's choice wins
        imposed["ReadonlyRootfs"] = True
    return imposed


def _refuse_unknown(policy: ShardPolicy, fields: Mapping[str, Any], known: set[str], prefix: str) -> None:
    for key in sorted(fields):
        if key not in known and not _unset(key, fields[key]):
            raise _job(policy, "create-option", f"{prefix}{key}={json.dumps(fields[key])[:80]} is not on the allow-list "
                       "of job options (image, command, environment, working dir, workspaces, limits, the network)",
                       f"{prefix}{key}")


def create_request(policy: ShardPolicy, body: Mapping[str, Any]) -> CreatePlan:
    """Rebuild a create body under the shard's job policy.

    Returns:
        The body to forward and the named volumes it mounts (each to pass :func:`judge_volume`).

    Raises:
        Refusal: CODEX-E041 with the rule that refused (``create-option``, ``host-bind``,
            ``auth-volume``, ``job-home``, ``root-user``, ``other-user``, ``codex-home``,
            ``forged-label``, ``network``, ``limit``, ``security-opt``).
    """
    if not isinstance(body.get("Image"), str) or not body["Image"]:
        raise _job(policy, "create-option", "a create without an Image", "Image")
    _refuse_unknown(policy, body, _PASSED | _HANDLED, "")
    host = body.get("HostConfig") or {}
    _refuse_unknown(policy, host, _HOST_PASSED | _HOST_HANDLED, "HostConfig.")
    plan = CreatePlan(body={})
    binds = _binds(policy, host.get("Binds"), plan)
    mounts = _mounts(policy, host.get("Mounts"), plan)
    tmpfs = {TMP_PATH: policy.sandbox.tmpfs_options, **{str(k): str(v) for k, v in (host.get("Tmpfs") or {}).items()}}
    for target in tmpfs:
        _check_target(policy, target, "HostConfig.Tmpfs")
    # Top-level Volumes only declare mount points (docker-py lists every bind target there); an
    # anonymous volume at CODEX_JOB_HOME is covered by the login bind the guard adds.
    new_host: dict[str, Any] = {
        **{k: host[k] for k in _HOST_PASSED if k in host},
        **_limits(policy, host),
        "Binds": [f"{policy.volume}:{policy.job_home}:rw", *binds],
        "Tmpfs": tmpfs,
        "NetworkMode": _network(policy, host, body.get("NetworkingConfig")),
    }
    if mounts:
        new_host["Mounts"] = mounts
    plan.body = {
        **{k: body[k] for k in _PASSED if k in body},
        "User": _user(policy, body.get("User")),
        "Env": _env(policy, body.get("Env")),
        "Labels": _labels(policy, body.get("Labels")),
        "HostConfig": new_host,
    }
    if body.get("Volumes"):
        plan.body["Volumes"] = dict(body["Volumes"])
    return plan
