"""The one job policy: what an Engine ``POST /containers/create`` body may ask for, rebuilt from scratch.

Both the worker's launcher (:mod:`agent.jobs.launcher`, after docker-py has turned its keyword arguments
into a create body) and the Docker API guard (:mod:`agent.guard`, on whatever any client sent)
judge a create with :func:`create_request`. Nothing of the body it was given is passed on: it
builds a new object holding only allow-listed fields under their exact canonical names, with
validated values, plus what the policy imposes (the shard's login at ``CODEX_JOB_HOME``, the job
user, ``CODEX_HOME``, the ``codex.*`` labels, the operator's network, the sandbox).

The Engine (Go ``encoding/json``) matches field names case-insensitively and folds some Unicode
letters (``ſ`` reads as ``s``); Python reads keys exactly. So the body is decoded strictly
(:func:`decode_body`: UTF-8, no duplicate keys, bounded size and depth, no NaN) and every key of a
struct-typed object must be exactly a field name: a key that is not ASCII, or that matches a field
name only when case is ignored, is refused (rule ``ambiguous-key``). A field the policy does not
know is refused when it carries a value and dropped when it holds Docker's zero value (the docker
CLI sends every field); either way the Engine never sees it.
"""

from __future__ import annotations

import hashlib
import json
import math
import posixpath
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from agent.errors import AgentError, GuardRefusedError, JobRejectedError
from agent.settings.sandbox import NO_NEW_PRIVILEGES, TMP_PATH, Sandbox
from agent.volume.discovery import AUTH_LABEL, AUTH_LABEL_VALUE, is_auth_volume

__all__ = [
    "API_VERSION",
    "GUARD_LABEL",
    "RESERVED_LABEL_PREFIXES",
    "WORKER_LABELS",
    "MAX_CREATE_BODY",
    "MAX_DEPTH",
    "MAX_VOLUMES_PER_CREATE",
    "WORKSPACE_PREFIX",
    "ShardPolicy",
    "Refusal",
    "CreatePlan",
    "decode_body",
    "create_request",
    "judge_volume",
    "workspace_labels",
    "workspace_name",
    "workspace_prefix",
]

API_VERSION = "1.41"
"""The one Engine API version job bodies are written for and the Docker API guard serves (docker.io
20.10); the docker SDK and CLI negotiate down to it."""

GUARD_LABEL = "codex.guard"
"""Label on every container and workspace volume created through a shard's endpoint: the shard's
login volume, unique per shard and per stack."""

RESERVED_LABEL_PREFIXES = ("codex.", "com.docker.compose.")
"""Label prefixes task code may not set: ``codex.*`` names shards, runs, logins and metrics
targets; ``com.docker.compose.*`` would make a job look like a compose service."""

WORKER_LABELS = frozenset({"codex.queue", "codex.run_id", "codex.task_id", "codex.worker", "codex.purpose"})
"""``codex.*`` labels the shard's worker sets on its jobs (the launcher writes them): accepted as the
worker's own account of the run, in a checked form. ``codex.shard``, ``codex.volume`` and
:data:`GUARD_LABEL` are imposed; every other reserved label is refused."""

MAX_CREATE_BODY = 256 * 1024
"""Bytes a create body may have; a job's create is a few kB."""
MAX_ITEMS = 4096
"""Members and list items a body may have (counted by its commas before parsing, so a wide body costs
nothing to refuse); a job's create has a few dozen."""
MAX_DEPTH = 16
"""Nesting a create body may have; the deepest field the policy reads is at depth 5."""
MAX_VOLUMES_PER_CREATE = 4
"""Named workspace volumes one create may mount (each one the guard may have to create)."""
WORKSPACE_PREFIX = "codex_ws_"

_LABEL_VALUE = re.compile(r"^[\x20-\x7e]{0,256}$")
_LABEL_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-/]{0,127}$")
_IMAGE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@/\-]{0,254}$")
_HOSTNAME = re.compile(r"^[A-Za-z0-9.\-]{0,253}$")
_SIGNAL = re.compile(r"^[A-Za-z0-9+]{0,16}$")
_VOLUME_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,254}$")
_BIND_MODES = ("ro", "rw", "nocopy")
_NO_NEW_PRIVILEGES = {NO_NEW_PRIVILEGES, f"{NO_NEW_PRIVILEGES}:true", f"{NO_NEW_PRIVILEGES}=true"}
_INT64 = 2**63

# -- the Engine's field names (API 1.41), per struct ----------------------------------------------

CONFIG_FIELDS = frozenset(
    {
        "Hostname",
        "Domainname",
        "User",
        "AttachStdin",
        "AttachStdout",
        "AttachStderr",
        "ExposedPorts",
        "Tty",
        "OpenStdin",
        "StdinOnce",
        "Env",
        "Cmd",
        "Healthcheck",
        "ArgsEscaped",
        "Image",
        "Volumes",
        "WorkingDir",
        "Entrypoint",
        "NetworkDisabled",
        "MacAddress",
        "OnBuild",
        "Labels",
        "StopSignal",
        "StopTimeout",
        "Shell",
        "HostConfig",
        "NetworkingConfig",
    }
)
HOST_FIELDS = frozenset(
    {
        "Binds",
        "ContainerIDFile",
        "LogConfig",
        "NetworkMode",
        "PortBindings",
        "RestartPolicy",
        "AutoRemove",
        "VolumeDriver",
        "VolumesFrom",
        "CapAdd",
        "CapDrop",
        "CgroupnsMode",
        "Dns",
        "DnsOptions",
        "DnsSearch",
        "ExtraHosts",
        "GroupAdd",
        "IpcMode",
        "Cgroup",
        "Links",
        "OomScoreAdj",
        "PidMode",
        "Privileged",
        "PublishAllPorts",
        "ReadonlyRootfs",
        "SecurityOpt",
        "StorageOpt",
        "Tmpfs",
        "UTSMode",
        "UsernsMode",
        "ShmSize",
        "Sysctls",
        "Runtime",
        "ConsoleSize",
        "Isolation",
        "CpuShares",
        "Memory",
        "NanoCpus",
        "CgroupParent",
        "BlkioWeight",
        "BlkioWeightDevice",
        "BlkioDeviceReadBps",
        "BlkioDeviceWriteBps",
        "BlkioDeviceReadIOps",
        "BlkioDeviceWriteIOps",
        "CpuPeriod",
        "CpuQuota",
        "CpuRealtimePeriod",
        "CpuRealtimeRuntime",
        "CpusetCpus",
        "CpusetMems",
        "Devices",
        "DeviceCgroupRules",
        "DeviceRequests",
        "KernelMemory",
        "KernelMemoryTCP",
        "MemoryReservation",
        "MemorySwap",
        "MemorySwappiness",
        "OomKillDisable",
        "PidsLimit",
        "Ulimits",
        "CpuCount",
        "CpuPercent",
        "IOMaximumIOps",
        "IOMaximumBandwidth",
        "Mounts",
        "MaskedPaths",
        "ReadonlyPaths",
        "Init",
    }
)
MOUNT_FIELDS = frozenset(
    {"Type", "Source", "Target", "ReadOnly", "Consistency", "BindOptions", "VolumeOptions", "TmpfsOptions"}
)
VOLUME_OPTION_FIELDS = frozenset({"NoCopy", "Labels", "DriverConfig"})
TMPFS_OPTION_FIELDS = frozenset({"SizeBytes", "Mode"})
NETWORKING_FIELDS = frozenset({"EndpointsConfig"})

_HARMLESS: dict[str, tuple[Any, ...]] = {
    "NetworkMode": ("default",),
    "MemorySwappiness": (-1,),
    "Isolation": ("default",),
}
"""Non-zero values the docker CLI sends that mean Docker's default (dropped like zero values)."""
_NULL_ONLY = {"MaskedPaths", "ReadonlyPaths"}
"""Fields whose empty list is not a default: ``[]`` unmasks ``/proc`` (``systempaths=unconfined``)."""


@dataclass(frozen=True)
class ShardPolicy:
    """The one policy record: one shard's login volume and what every job of it gets."""

    index: int
    volume: str
    job_home: str = "/home/app/.codex"
    job_user: str = "1000:1000"
    network: str | None = None
    sandbox: Sandbox = field(default_factory=Sandbox)
    auth_volumes: frozenset[str] = frozenset()
    """Other volumes known to hold a login (by label), besides those named like one."""
    facts_extra: tuple[tuple[str, Any], ...] = ()
    """More fields for error messages (the worker's name, in the launcher)."""

    @property
    def mark(self) -> str:
        """Value of :data:`GUARD_LABEL` on what this shard's endpoint created."""
        return self.volume

    def facts(self) -> dict[str, Any]:
        """Shard and volume for error messages and audit lines."""
        return {"shard": self.index, "volume": self.volume, **dict(self.facts_extra)}


class Refusal(Exception):
    """A request the policy refuses: a coded error (E041 or E045) and the rule that refused it."""

    def __init__(self, error: AgentError, rule: str) -> None:
        self.error = error
        self.rule = rule
        super().__init__(str(error))

    def body(self) -> bytes:
        """The 403 JSON body; ``message`` is what the docker CLI and SDK show."""
        return json.dumps(
            {
                "message": str(self.error),
                "code": self.error.code,
                "rule": self.rule,
                "remediation": self.error.remediation,
            }
        ).encode()


def job_refusal(policy: ShardPolicy, rule: str, cause: str, offending: str) -> Refusal:
    """CODEX-E041 for a create outside the policy."""
    return Refusal(JobRejectedError(**policy.facts(), cause=cause, offending=offending), rule)


def endpoint_refusal(policy: ShardPolicy, method: str, path: str, rule: str, cause: str) -> Refusal:
    """CODEX-E045 for a call outside the endpoint allow-list."""
    return Refusal(GuardRefusedError(**policy.facts(), method=method, path=path, rule=rule, cause=cause), rule)


# -- strict decoding -----------------------------------------------------------------------------


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for key, value in pairs:
        if key in found:
            raise ValueError(f"the key {key!r} appears twice in one object")
        found[key] = value
    return found


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _check_shape(value: Any) -> None:
    """Depth, integer range and string encodability, iteratively (no recursion on hostile input)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise ValueError(f"nested deeper than {MAX_DEPTH} levels")
        if isinstance(item, dict):
            for key, child in item.items():
                key.encode("utf-8")
                stack.append((child, depth + 1))
        elif isinstance(item, list):
            stack.extend((child, depth + 1) for child in item)
        elif isinstance(item, str):
            item.encode("utf-8")  # a lone surrogate escape (\ud800) raises
        elif isinstance(item, int) and not isinstance(item, bool) and not -_INT64 <= item < _INT64:
            raise ValueError("an integer outside 64 bits")
        elif isinstance(item, float) and not math.isfinite(item):
            raise ValueError("a number beyond Infinity")


def decode_body(raw: bytes, limit: int = MAX_CREATE_BODY) -> Any:
    """A request body as JSON, read strictly: what Go and Python could read differently is refused.

    Raises:
        ValueError: not UTF-8, above ``limit`` bytes or :data:`MAX_ITEMS` items, a duplicate key, NaN or Infinity, nested
            deeper than :data:`MAX_DEPTH`, an integer beyond 64 bits or a lone surrogate.
    """
    if len(raw) > limit:
        raise ValueError(f"a body of {len(raw)} bytes (at most {limit})")
    if raw.count(b",") > MAX_ITEMS:
        raise ValueError(f"more than {MAX_ITEMS} members and items")
    text = raw.decode("utf-8")  # UnicodeDecodeError is a ValueError
    # Depth before parsing: the C parser recurses, and a deep body costs before it fails.
    depth = 0
    for token in _TOKENS.finditer(text):
        char = token.group()
        if char in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                raise ValueError(f"nested deeper than {MAX_DEPTH} levels")
        elif char in "]}":
            depth -= 1
    value = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    _check_shape(value)
    return value


_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]')
"""Strings (skipped whole) and brackets: enough to measure nesting before parsing."""


# -- small validators ------------------------------------------------------------------------------


def _struct(policy: ShardPolicy, value: Any, known: frozenset[str], where: str) -> dict[str, Any]:
    """A struct-typed object whose every key is exactly one of ``known`` or unknown and distinct."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise job_refusal(policy, "create-option", f"{where or 'the body'} is not a JSON object", where or "the body")
    folded = {name.lower(): name for name in known}
    for key in value:
        if key in known:
            continue
        canonical = folded.get(key.lower()) if key.isascii() else None
        if canonical is not None or not key.isascii():
            raise job_refusal(
                policy,
                "ambiguous-key",
                f"key {key!r} in {where or 'the body'} is not a field name, "
                "but the Engine would read it as one (field names are matched ignoring case); use "
                f"the exact name{' ' + repr(canonical) if canonical else ''}",
                f"{where}{key}",
            )
    return value


def _zero(value: Any) -> bool:
    if value is None or value is False or value == 0 or value == "":
        return True
    if isinstance(value, dict):
        return all(_zero(v) for v in value.values())
    if isinstance(value, list):
        return all(_zero(v) for v in value)
    return False


def _unset(key: str, value: Any) -> bool:
    if key in _NULL_ONLY:
        return value is None
    if key == "RestartPolicy" and isinstance(value, dict):
        return str(value.get("Name") or "no") == "no" and _zero(value.get("MaximumRetryCount"))
    return _zero(value) or value in _HARMLESS.get(key, ())


def _refuse_unknown(policy: ShardPolicy, fields: Mapping[str, Any], allowed: Iterable[str], where: str) -> None:
    allowed = set(allowed)
    for key in sorted(fields):
        if key not in allowed and not _unset(key, fields[key]):
            raise job_refusal(
                policy,
                "create-option",
                f"{where}{key}={json.dumps(fields[key])[:80]} is not on the "
                "allow-list of job options (image, command, environment, working dir, workspaces, "
                "limits, the network)",
                f"{where}{key}",
            )


def _string(policy: ShardPolicy, value: Any, where: str, pattern: re.Pattern[str] | None = None) -> str:
    if value is None:
        return ""
    if not isinstance(value, str) or (pattern is not None and not pattern.fullmatch(value)):
        raise job_refusal(policy, "create-option", f"{where}={json.dumps(value)[:80]} is not an accepted value", where)
    return value


def _strings(policy: ShardPolicy, value: Any, where: str) -> list[str] | None:
    """Go's ``StrSlice``: null, a string, or a list of strings."""
    if value is None:
        return None
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise job_refusal(policy, "create-option", f"{where} is not a list of strings", where)
    return list(value)


def _bool(policy: ShardPolicy, value: Any, where: str) -> bool:
    if value is None:
        return False
    if not isinstance(value, bool):
        raise job_refusal(policy, "create-option", f"{where}={json.dumps(value)[:40]} is not true or false", where)
    return value


def _int(policy: ShardPolicy, value: Any, where: str) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise job_refusal(policy, "create-option", f"{where}={json.dumps(value)[:40]} is not an integer", where)
    return value


def _string_map(policy: ShardPolicy, value: Any, where: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise job_refusal(policy, "create-option", f"{where} is not an object of strings", where)
    return dict(value)


# -- mounts ------------------------------------------------------------------------------------------


@dataclass
class CreatePlan:
    """A create as it may go to the Engine: the rebuilt body and the named volumes it mounts."""

    body: dict[str, Any]
    volumes: list[str] = field(default_factory=list)
    login_read_only: bool = False
    """The create asked for the imposed login mount read-only (``codex-agent volumes``): it stays so."""


def _normal(path: str) -> str:
    """An absolute path as the kernel resolves it (``normpath`` keeps a leading ``//``; Linux does not)."""
    return "/" + posixpath.normpath(path).lstrip("/")


def _at_home(policy: ShardPolicy, target: str) -> bool:
    target = _normal(target) if target.startswith("/") else target
    home = policy.job_home.rstrip("/")
    return target == home or target.startswith(home + "/")


def _check_target(policy: ShardPolicy, target: str, what: str) -> str:
    """A mount target: absolute, normalised, and not at or under ``CODEX_JOB_HOME``."""
    if not target.startswith("/") or any(ord(c) < 0x20 for c in target):
        raise job_refusal(policy, "create-option", f"{what} target {target!r} is not an absolute path", what)
    if _at_home(policy, target):
        raise job_refusal(
            policy,
            "job-home",
            f"{what} puts a mount at {target}, inside CODEX_JOB_HOME "
            f"{policy.job_home} where the agent mounts {policy.volume}",
            what,
        )
    return _normal(target)


def _named_source(policy: ShardPolicy, source: str, target: str, what: str, plan: CreatePlan) -> bool:
    """Check a mount's source; True when it is the imposed login mount itself (dropped, re-added)."""
    if source == policy.volume:
        if target.startswith("/") and _normal(target) == policy.job_home:
            return True
        raise job_refusal(
            policy,
            "auth-volume",
            f"{what} mounts the login volume {source} at {target}; the agent mounts it at {policy.job_home} only",
            what,
        )
    _check_target(policy, target, what)
    if source.startswith("/"):
        raise job_refusal(
            policy, "host-bind", f"{what} binds host path {source}; jobs mount named workspace volumes only", what
        )
    if source and not _VOLUME_NAME.fullmatch(source):
        raise job_refusal(policy, "create-option", f"{what} source {source!r} is not a volume name", what)
    if source and (is_auth_volume(source) or source in policy.auth_volumes):
        raise job_refusal(policy, "auth-volume", f"{what} mounts Codex auth volume {source}, another login", what)
    if source:
        plan.volumes.append(source)
    return False


def _binds(policy: ShardPolicy, binds: Any, plan: CreatePlan) -> tuple[list[str], set[str]]:
    kept: list[str] = []
    targets: set[str] = set()
    for bind in _strings(policy, binds, "HostConfig.Binds") or ():
        parts = bind.split(":")
        if len(parts) not in (2, 3) or not parts[0] or not parts[1]:
            raise job_refusal(
                policy, "create-option", f"HostConfig.Binds entry {bind!r} is not source:target[:mode]", "Binds"
            )
        source, target = parts[0], parts[1]
        modes = set(parts[2].split(",")) - {""} if len(parts) == 3 else set()
        if modes - set(_BIND_MODES):
            raise job_refusal(
                policy,
                "create-option",
                f"bind options {sorted(modes - set(_BIND_MODES))} (allowed: ro, rw, nocopy)",
                "Binds",
            )
        if _named_source(policy, source, target, "HostConfig.Binds", plan):
            plan.login_read_only |= "ro" in modes
            continue
        mode = ",".join(m for m in _BIND_MODES if m in modes) or "rw"
        normal = _normal(target)
        targets.add(normal)
        kept.append(f"{source}:{normal}:{mode}")
    return kept, targets


def _mounts(policy: ShardPolicy, mounts: Any, plan: CreatePlan) -> tuple[list[dict[str, Any]], set[str]]:
    kept: list[dict[str, Any]] = []
    targets: set[str] = set()
    if mounts is not None and not isinstance(mounts, list):
        raise job_refusal(policy, "create-option", "HostConfig.Mounts is not a list", "Mounts")
    for raw in mounts or ():
        mount = _struct(policy, raw, MOUNT_FIELDS, "HostConfig.Mounts[].")
        kind = _string(policy, mount.get("Type"), "HostConfig.Mounts[].Type") or "volume"
        source = _string(policy, mount.get("Source"), "HostConfig.Mounts[].Source")
        target = _string(policy, mount.get("Target"), "HostConfig.Mounts[].Target")
        if kind not in ("volume", "tmpfs"):
            raise job_refusal(
                policy,
                "host-bind",
                f"HostConfig.Mounts of type {kind} ({source or '?'}); jobs mount named volumes and tmpfs only",
                "Mounts",
            )
        options = _struct(
            policy, mount.get("VolumeOptions"), VOLUME_OPTION_FIELDS, "HostConfig.Mounts[].VolumeOptions."
        )
        if not _zero(options.get("DriverConfig")):
            raise job_refusal(
                policy,
                "host-bind",
                "a volume mount with driver options (a volume driver can bind any host path)",
                "Mounts",
            )
        _refuse_unknown(policy, options, {"NoCopy"}, "HostConfig.Mounts[].VolumeOptions.")
        _refuse_unknown(
            policy,
            mount,
            {"Type", "Source", "Target", "ReadOnly", "VolumeOptions", "TmpfsOptions", "Consistency"},
            "HostConfig.Mounts[].",
        )
        rebuilt: dict[str, Any] = {
            "Type": kind,
            "Target": _check_target(policy, target, "HostConfig.Mounts"),
            "ReadOnly": _bool(policy, mount.get("ReadOnly"), "HostConfig.Mounts[].ReadOnly"),
        }
        if kind == "tmpfs":
            if source:
                raise job_refusal(policy, "create-option", "a tmpfs mount with a Source", "Mounts")
            tmpfs = _struct(policy, mount.get("TmpfsOptions"), TMPFS_OPTION_FIELDS, "HostConfig.Mounts[].TmpfsOptions.")
            size = _int(policy, tmpfs.get("SizeBytes"), "HostConfig.Mounts[].TmpfsOptions.SizeBytes") or 0
            if not 0 <= size <= policy.sandbox.tmp_size:
                raise job_refusal(
                    policy,
                    "limit",
                    f"a tmpfs mount of {size} bytes is above CODEX_JOB_TMP_SIZE {policy.sandbox.tmp_size}",
                    "Mounts",
                )
            mode = _int(policy, tmpfs.get("Mode"), "HostConfig.Mounts[].TmpfsOptions.Mode")
            rebuilt["TmpfsOptions"] = {"SizeBytes": size or policy.sandbox.tmp_size, **({"Mode": mode} if mode else {})}
        else:
            if _named_source(policy, source, target, "HostConfig.Mounts", plan):
                continue
            rebuilt["Source"] = source
            if _bool(policy, options.get("NoCopy"), "HostConfig.Mounts[].VolumeOptions.NoCopy"):
                rebuilt["VolumeOptions"] = {"NoCopy": True}
        targets.add(rebuilt["Target"])
        kept.append(rebuilt)
    return kept, targets


def _tmpfs(policy: ShardPolicy, tmpfs: Any) -> dict[str, str]:
    given = _string_map(policy, tmpfs, "HostConfig.Tmpfs")
    kept = {TMP_PATH: policy.sandbox.tmpfs_options}
    for target, options in given.items():
        if any(ord(c) < 0x20 for c in options):
            raise job_refusal(policy, "create-option", f"HostConfig.Tmpfs options {options!r}", "Tmpfs")
        kept[_check_target(policy, target, "HostConfig.Tmpfs")] = options
    return kept


# -- the rest of a create ------------------------------------------------------------------------------


def _user(policy: ShardPolicy, user: Any) -> str:
    if _zero(user):
        return policy.job_user
    if not isinstance(user, str):
        raise job_refusal(policy, "other-user", f"User {user!r} is not a user name", "User")
    name, _, group = user.partition(":")
    if "root" in (name, group) or "0" in (name, group):
        raise job_refusal(policy, "root-user", f"User {user} is root; job containers never run as root", "User")
    if user not in (policy.job_user, policy.job_user.split(":")[0]):
        raise job_refusal(
            policy, "other-user", f"User {user} is not CODEX_JOB_USER={policy.job_user}, the owner of the login", "User"
        )
    return policy.job_user


def _env(policy: ShardPolicy, env: Any) -> list[str]:
    kept = []
    for item in _strings(policy, env, "Env") or ():
        name, equals, value = item.partition("=")
        if not name or not equals:
            raise job_refusal(policy, "create-option", f"Env entry {name[:40]!r} is not NAME=value", "Env")
        if name == "CODEX_HOME":
            if not value.startswith("/") or _normal(value) != policy.job_home:
                raise job_refusal(
                    policy, "codex-home", f"Env CODEX_HOME={value} points away from {policy.job_home}", "CODEX_HOME"
                )
            continue
        kept.append(item)
    return [*kept, f"CODEX_HOME={policy.job_home}"]


def _labels(policy: ShardPolicy, labels: Any) -> dict[str, str]:
    given = _string_map(policy, labels, "Labels")
    imposed = {"codex.shard": str(policy.index), "codex.volume": policy.volume, GUARD_LABEL: policy.mark}
    kept: dict[str, str] = {}
    for key, value in given.items():
        if not _LABEL_KEY.fullmatch(key) or not _LABEL_VALUE.fullmatch(value):
            raise job_refusal(
                policy, "create-option", f"label {key[:60]!r} is not a plain printable key and value", "Labels"
            )
        if key in imposed:
            if value != imposed[key]:
                raise job_refusal(
                    policy,
                    "forged-label",
                    f"label {key}={value} claims what this shard is not: it is "
                    f"shard {policy.index} with volume {policy.volume}",
                    key,
                )
            continue
        if key == AUTH_LABEL and value == AUTH_LABEL_VALUE:
            raise job_refusal(
                policy,
                "forged-label",
                f"label {AUTH_LABEL}={AUTH_LABEL_VALUE} marks login volumes, not jobs",
                AUTH_LABEL,
            )
        if key.startswith(RESERVED_LABEL_PREFIXES) and key not in WORKER_LABELS:
            raise job_refusal(
                policy,
                "forged-label",
                f"label {key} is reserved: codex.* and com.docker.compose.* labels are the agent's and compose's",
                key,
            )
        kept[key] = value
    return {**kept, **imposed}


def _network(policy: ShardPolicy, host: Mapping[str, Any], networking: Any) -> str:
    asked = _string(policy, host.get("NetworkMode"), "HostConfig.NetworkMode") or "default"
    configured = policy.network or "default"
    if asked not in ("default", "none", configured):
        raise job_refusal(
            policy,
            "network",
            f"HostConfig.NetworkMode={asked}; the job network is the operator's "
            f"(CODEX_JOB_NETWORK={policy.network or 'unset'}), a job may only ask for none",
            "NetworkMode",
        )
    effective = configured if asked == "default" else asked
    config = _struct(policy, networking, NETWORKING_FIELDS, "NetworkingConfig.")
    endpoints = config.get("EndpointsConfig") or {}
    if not isinstance(endpoints, dict):
        raise job_refusal(policy, "network", "NetworkingConfig.EndpointsConfig is not an object", "NetworkingConfig")
    if set(endpoints) - {effective}:
        raise job_refusal(
            policy,
            "network",
            f"NetworkingConfig joins {sorted(set(endpoints) - {effective})}; a job joins {effective} only",
            "NetworkingConfig",
        )
    if not all(_zero(settings) for settings in endpoints.values()):
        raise job_refusal(
            policy,
            "network",
            "NetworkingConfig endpoint settings (aliases, addresses, links); a job gets the network's defaults",
            "NetworkingConfig",
        )
    return effective


_LIMITS = {
    "Memory": "memory",
    "NanoCpus": "nano_cpus",
    "PidsLimit": "pids_limit",
    "ShmSize": "tmp_size",
    "MemoryReservation": "memory",
    "CpuShares": "cpu_shares",
}
"""Limits a create may lower, never raise, with the :class:`~agent.settings.sandbox.Sandbox` field that caps each
(the shm size is capped like the private ``/tmp``, the CPU weight at Docker's default)."""
_IMPOSED_LIMITS = ("Memory", "NanoCpus", "PidsLimit")


def _limits(policy: ShardPolicy, host: Mapping[str, Any]) -> dict[str, Any]:
    imposed = {**policy.sandbox.host_config(), "CgroupnsMode": "private", "IpcMode": "private"}
    for key, attribute in _LIMITS.items():
        value = host.get(key)
        if _zero(value):
            continue
        ceiling = getattr(policy.sandbox, attribute)
        if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= ceiling:
            raise job_refusal(
                policy, "limit", f"HostConfig.{key}={value} is above the job limit {ceiling} (or unlimited)", key
            )
        imposed[key] = value
    security = _strings(policy, host.get("SecurityOpt"), "HostConfig.SecurityOpt") or []
    extra = [opt for opt in security if opt not in _NO_NEW_PRIVILEGES]
    if extra:
        raise job_refusal(
            policy,
            "security-opt",
            f"HostConfig.SecurityOpt {extra[0]!r}; jobs allow only {NO_NEW_PRIVILEGES}",
            "SecurityOpt",
        )
    if _bool(policy, host.get("ReadonlyRootfs"), "HostConfig.ReadonlyRootfs"):
        imposed["ReadonlyRootfs"] = True  # False is Docker's zero value: the sandbox's choice wins
    for key, accepted in (("CgroupnsMode", ("", "private")), ("IpcMode", ("", "private", "none"))):
        asked = _string(policy, host.get(key), f"HostConfig.{key}")
        if asked not in accepted:
            raise job_refusal(
                policy, "create-option", f"HostConfig.{key}={asked}; a job's namespace is private", f"HostConfig.{key}"
            )
        if asked:
            imposed[key] = asked
    return imposed


_PASSED_STRINGS = {"WorkingDir": None, "Hostname": _HOSTNAME, "Domainname": _HOSTNAME, "StopSignal": _SIGNAL}
_PASSED_BOOLS = ("AttachStdin", "AttachStdout", "AttachStderr", "Tty", "OpenStdin", "StdinOnce", "NetworkDisabled")
_HANDLED = {
    "Image",
    "Cmd",
    "Entrypoint",
    "StopTimeout",
    "User",
    "Env",
    "Labels",
    "Volumes",
    "HostConfig",
    "NetworkingConfig",
    *_PASSED_STRINGS,
    *_PASSED_BOOLS,
}
_HOST_HANDLED = {
    "Binds",
    "Mounts",
    "Tmpfs",
    "NetworkMode",
    "CapDrop",
    "SecurityOpt",
    "Init",
    "ReadonlyRootfs",
    "AutoRemove",
    "ConsoleSize",
    "CgroupnsMode",
    "IpcMode",
    *_LIMITS,
}


def _anonymous_volumes(policy: ShardPolicy, volumes: Any, covered: set[str]) -> dict[str, Any]:
    """Top-level ``Volumes`` only declare mount points (docker-py lists every bind target there); any other
    entry would make the Engine mint an anonymous volume."""
    if volumes is None:
        return {}
    if not isinstance(volumes, dict):
        raise job_refusal(policy, "create-option", "Volumes is not an object", "Volumes")
    kept: dict[str, Any] = {}
    for target in volumes:
        normal = _normal(target) if target.startswith("/") else target
        if normal == policy.job_home:
            continue
        if normal not in covered:
            raise job_refusal(
                policy,
                "volume-count",
                f"Volumes declares {target[:80]!r}, which no bind or mount "
                "covers: the Engine would create an anonymous volume",
                "Volumes",
            )
        kept[normal] = {}
    return kept


def create_request(policy: ShardPolicy, body: Any) -> CreatePlan:
    """Rebuild a create body under the shard's job policy.

    Returns:
        A new body (nothing of ``body`` is reused) and the named volumes it mounts (each to pass
        :func:`judge_volume`).

    Raises:
        Refusal: CODEX-E041 with the rule that refused (``create-option``, ``ambiguous-key``,
            ``host-bind``, ``auth-volume``, ``job-home``, ``root-user``, ``other-user``,
            ``codex-home``, ``forged-label``, ``network``, ``limit``, ``security-opt``,
            ``volume-count``).
    """
    config = _struct(policy, body, CONFIG_FIELDS, "")
    image = config.get("Image")
    if not isinstance(image, str) or not _IMAGE.fullmatch(image):
        raise job_refusal(policy, "create-option", "a create without an Image reference", "Image")
    _refuse_unknown(policy, config, _HANDLED, "")
    host = _struct(policy, config.get("HostConfig"), HOST_FIELDS, "HostConfig.")
    _refuse_unknown(policy, host, _HOST_HANDLED, "HostConfig.")
    plan = CreatePlan(body={})
    binds, bind_targets = _binds(policy, host.get("Binds"), plan)
    mounts, mount_targets = _mounts(policy, host.get("Mounts"), plan)
    if len(dict.fromkeys(plan.volumes)) > MAX_VOLUMES_PER_CREATE:
        raise job_refusal(
            policy,
            "volume-count",
            f"a create mounting {len(set(plan.volumes))} named volumes (at most {MAX_VOLUMES_PER_CREATE})",
            "Binds",
        )
    new_host: dict[str, Any] = {
        **_limits(policy, host),
        "Binds": [f"{policy.volume}:{policy.job_home}:{'ro' if plan.login_read_only else 'rw'}", *binds],
        "Tmpfs": _tmpfs(policy, host.get("Tmpfs")),
        "NetworkMode": _network(policy, host, config.get("NetworkingConfig")),
        "AutoRemove": _bool(policy, host.get("AutoRemove"), "HostConfig.AutoRemove"),
    }
    console = host.get("ConsoleSize")
    if console is not None:
        if not (
            isinstance(console, list)
            and len(console) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 65536 for v in console)
        ):
            raise job_refusal(policy, "create-option", "HostConfig.ConsoleSize is not [height, width]", "ConsoleSize")
        new_host["ConsoleSize"] = list(console)
    if mounts:
        new_host["Mounts"] = mounts
    rebuilt: dict[str, Any] = {"Image": image}
    for key in ("Cmd", "Entrypoint"):
        if key in config:
            rebuilt[key] = _strings(policy, config[key], key)
    for key, pattern in _PASSED_STRINGS.items():
        if config.get(key):
            rebuilt[key] = _string(policy, config[key], key, pattern)
    for key in _PASSED_BOOLS:
        if key in config:
            rebuilt[key] = _bool(policy, config[key], key)
    stop_timeout = _int(policy, config.get("StopTimeout"), "StopTimeout")
    if stop_timeout is not None:
        rebuilt["StopTimeout"] = stop_timeout
    rebuilt.update(
        {
            "User": _user(policy, config.get("User")),
            "Env": _env(policy, config.get("Env")),
            "Labels": _labels(policy, config.get("Labels")),
            "HostConfig": new_host,
        }
    )
    volumes = _anonymous_volumes(policy, config.get("Volumes"), bind_targets | mount_targets)
    if volumes:
        rebuilt["Volumes"] = volumes
    plan.body = rebuilt
    return plan


# -- workspace volumes ---------------------------------------------------------------------------------


def workspace_prefix(volume: str) -> str:
    """The start of every workspace volume name of the shard whose login is ``volume``.

    A fixed-length digest of the login volume, so no shard's namespace is a prefix of another's
    and no shard can create a name another shard's run will need.
    """
    return f"{WORKSPACE_PREFIX}{hashlib.sha256(volume.encode()).hexdigest()[:10]}_"


def workspace_name(volume: str, run_id: str) -> str:
    """A run's workspace volume on the shard whose login is ``volume``."""
    return f"{workspace_prefix(volume)}{run_id}"


def workspace_labels(policy: ShardPolicy) -> dict[str, str]:
    """Labels of a workspace volume the guard creates for this shard."""
    return {GUARD_LABEL: policy.mark, "codex.volume": policy.volume}


def own_volume(policy: ShardPolicy, name: str, labels: Mapping[str, Any] | None) -> bool:
    """This shard's login volume, or a workspace its endpoint created."""
    return name == policy.volume or str((labels or {}).get(GUARD_LABEL)) == policy.mark


def judge_volume(policy: ShardPolicy, name: str, attrs: Mapping[str, Any] | None) -> bool:
    """Whether a named volume a create mounts may be used; True when it must be created first.

    Args:
        policy: the shard.
        name: the volume.
        attrs: the Engine's inspect of it, None when it does not exist.

    Raises:
        Refusal: another login (``auth-volume``); a volume another shard or anyone else made
            (``foreign-volume``); a new name outside this shard's workspace namespace
            (``workspace-name``).
    """
    labels = dict((attrs or {}).get("Labels") or {})
    if is_auth_volume(name, labels) or name in policy.auth_volumes:
        raise job_refusal(policy, "auth-volume", f"a mount of Codex auth volume {name}, another shard's login", name)
    if attrs is None:
        if not name.startswith(workspace_prefix(policy.volume)):
            raise job_refusal(
                policy,
                "workspace-name",
                f"a new volume {name}: shard {policy.index}'s workspaces are "
                f"named {workspace_prefix(policy.volume)}<run> (agent.jobs.policy.workspace_name)",
                name,
            )
        return True
    if not own_volume(policy, name, labels):
        raise job_refusal(
            policy,
            "foreign-volume",
            f"a mount of volume {name}, which shard {policy.index}'s endpoint "
            f"did not create ({GUARD_LABEL}={labels.get(GUARD_LABEL, 'unset')})",
            name,
        )
    return False
