"""What the guard lets through, per shard: the endpoint allow-list, and the request it sends instead.

Pure functions of a request (method, target) and of facts the server looked up: no I/O.
:func:`route` parses a call into a :class:`Route` (what it is, what it touches, its query
parameters validated one by one) or raises :class:`Refusal`; :func:`upstream_target` writes the
canonical target the guard sends to the Engine: the pinned API version, a path made from the route
(with the full container ID the server resolved and checked), and a query re-encoded from the
validated parameters. Nothing of the client's target is copied. The job policy of a create body is
:mod:`agent.jobs.policy`, shared with the worker's launcher.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode

from agent.jobs.policy import (
    API_VERSION,
    GUARD_LABEL,
    CreatePlan,
    Refusal,
    ShardPolicy,
    create_request,
    decode_body,
    endpoint_refusal,
    judge_volume,
    own_volume,
    workspace_labels,
    workspace_prefix,
)

__all__ = [
    "API_VERSION",
    "GUARD_LABEL",
    "STREAMING",
    "ShardPolicy",
    "Refusal",
    "Route",
    "CreatePlan",
    "route",
    "upstream_target",
    "create_request",
    "judge_volume",
    "workspace_labels",
    "owns",
    "own_volume",
    "refuse_container",
    "refuse_volume",
    "may_inspect",
    "may_remove_volume",
    "container_filters",
    "own_volumes",
    "FULL_ID",
]


FULL_ID = re.compile(r"^[0-9a-f]{64}$")
_VERSIONED = re.compile(r"^/v(\d+\.\d+)(/.*)$")
_NAME = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,254}"
_CONTAINER = re.compile(rf"^/containers/({_NAME})(?:/([a-z]+))?$")
_VOLUME = re.compile(rf"^/volumes/({_NAME})$")
_IMAGE = re.compile(r"^/images/([A-Za-z0-9][A-Za-z0-9_.:@/-]{0,254})/json$")
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
STREAMING = frozenset({"attach", "logs", "wait", "archive"})
"""Calls whose answer lasts as long as the job: not counted against a shard's upstream bound."""

_BOOL = re.compile(r"^(0|1|true|false|True|False)$")
_INT = re.compile(r"^-?[0-9]{1,10}$")
_TAIL = re.compile(r"^(all|[0-9]{1,9})$")
_TIME = re.compile(r"^[0-9]{1,12}(\.[0-9]{1,9})?$")
_SIGNAL = re.compile(r"^[A-Za-z0-9+]{1,16}$")
_DETACH = re.compile(r"^[a-z0-9,@^\[\]_-]{0,40}$")
_CONDITION = re.compile(r"^(not-running|next-exit|removed)$")
_CREATE_NAME = re.compile(r"^/?[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_PLATFORM = re.compile(r"^[a-z0-9_./-]{0,64}$")
_ARCHIVE_PATH = re.compile(r"^/[\x20-\x7e]{0,4095}$")
_REFERENCE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,254}$")
_FILTERS = "filters"

_QUERY: dict[str, dict[str, re.Pattern[str] | str]] = {
    "ping": {},
    "version": {},
    "image": {},
    "volume": {},
    "workspace-remove": {"force": _BOOL},
    "create": {"name": _CREATE_NAME, "platform": _PLATFORM},
    "containers": {
        "all": _BOOL,
        "limit": _INT,
        "size": _BOOL,
        "trunc": _BOOL,
        "trunc_cmd": _BOOL,
        "since": _REFERENCE,
        "before": _REFERENCE,
        _FILTERS: _FILTERS,
    },
    "volumes": {_FILTERS: _FILTERS},
    "inspect": {"size": _BOOL},
    "logs": {
        "stdout": _BOOL,
        "stderr": _BOOL,
        "follow": _BOOL,
        "timestamps": _BOOL,
        "tail": _TAIL,
        "since": _TIME,
        "until": _TIME,
        "details": _BOOL,
    },
    "archive": {"path": _ARCHIVE_PATH},
    "start": {"detachKeys": _DETACH},
    "wait": {"condition": _CONDITION},
    "kill": {"signal": _SIGNAL},
    "stop": {"t": _INT, "signal": _SIGNAL},
    "attach": {"stream": _BOOL, "stdin": _BOOL, "stdout": _BOOL, "stderr": _BOOL, "logs": _BOOL, "detachKeys": _DETACH},
    "resize": {"h": _INT, "w": _INT},
    "remove": {"v": _BOOL, "force": _BOOL, "link": _BOOL},
}
"""The query parameters each call takes, with the form of each value."""


@dataclass(frozen=True)
class Route:
    """An allowed call: what it is, what it touches, and its validated parameters."""

    kind: str
    """``ping``, ``version``, ``create``, ``container``, ``containers``, ``image``, ``volumes`` or ``volume``."""
    method: str
    path: str
    """The path without its API version prefix (for messages)."""
    action: str | None = None
    name: str | None = None
    """The container, volume or image reference the call names."""
    params: tuple[tuple[str, str], ...] = field(default=())

    @property
    def takes_body(self) -> bool:
        """Only a create carries a request body."""
        return self.kind == "create"

    @property
    def query_kind(self) -> str:
        return self.action if self.kind == "container" and self.action else self.kind

    def param(self, name: str) -> str | None:
        return dict(self.params).get(name)


def _params(policy: ShardPolicy, method: str, path: str, kind: str, query: str) -> tuple[tuple[str, str], ...]:
    accepted = _QUERY[kind]
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query), max_num_fields=32)
    except ValueError as e:
        raise endpoint_refusal(policy, method, path, "query", f"an unreadable query ({e})") from None
    seen: set[str] = set()
    kept = []
    for key, value in pairs:
        if key in seen:
            raise endpoint_refusal(policy, method, path, "query", f"the parameter {key[:40]!r} given twice")
        seen.add(key)
        form = accepted.get(key)
        if form is None:
            raise endpoint_refusal(
                policy,
                method,
                path,
                "query",
                f"the parameter {key[:40]!r}; this call takes {', '.join(sorted(accepted)) or 'none'}",
            )
        if form == _FILTERS:
            try:
                filters = decode_body(value.encode(), limit=16 * 1024)
            except ValueError as e:
                raise endpoint_refusal(policy, method, path, "query", f"filters is not plain JSON ({e})") from None
            if not isinstance(filters, dict):
                raise endpoint_refusal(policy, method, path, "query", "filters is not a JSON object")
            value = json.dumps(filters, separators=(",", ":"))
        elif isinstance(form, re.Pattern) and not form.fullmatch(value):
            raise endpoint_refusal(policy, method, path, "query", f"{key}={value[:40]!r} is not an accepted value")
        kept.append((key, value))
    return tuple(kept)


def route(policy: ShardPolicy, method: str, target: str) -> Route:
    """Classify a call, or refuse it (CODEX-E045).

    Args:
        policy: the shard whose endpoint received the call.
        method: the HTTP method.
        target: the request target, with its query.

    Raises:
        Refusal: rules ``api-version`` (not ``/v1.41``, except ``/_ping`` and ``/version``),
            ``endpoint`` (off the allow-list) or ``query`` (a parameter the call does not take).
    """
    raw_path, _, query = target.partition("?")
    if "%" in raw_path or "//" in raw_path or any(part in (".", "..") for part in raw_path.split("/")):
        raise endpoint_refusal(policy, method, raw_path, "endpoint", "an unnormalised or encoded path")
    versioned = _VERSIONED.fullmatch(raw_path)
    if versioned:
        if versioned.group(1) != API_VERSION:
            raise endpoint_refusal(
                policy,
                method,
                raw_path,
                "api-version",
                f"API version {versioned.group(1)}; the guard serves /v{API_VERSION} only "
                "(the docker SDK and CLI negotiate it)",
            )
        path = versioned.group(2)
    elif raw_path in ("/_ping", "/version"):
        path = raw_path
    else:
        raise endpoint_refusal(
            policy,
            method,
            raw_path,
            "api-version",
            f"a call without an API version; the guard serves /v{API_VERSION} only",
        )
    kind, action, name = _classify(policy, method, path)
    return Route(kind, method, path, action, name, _params(policy, method, path, action or kind, query))


def _classify(policy: ShardPolicy, method: str, path: str) -> tuple[str, str | None, str | None]:
    if (method, path) in (("GET", "/_ping"), ("HEAD", "/_ping")):
        return "ping", None, None
    if (method, path) == ("GET", "/version"):
        return "version", None, None
    if (method, path) == ("POST", "/containers/create"):
        return "create", None, None
    if (method, path) == ("GET", "/containers/json"):
        return "containers", None, None
    if (method, path) == ("GET", "/volumes"):
        return "volumes", None, None
    if method == "GET" and (image := _IMAGE.fullmatch(path)):
        return "image", None, image.group(1)
    if method == "GET" and (volume := _VOLUME.fullmatch(path)):
        return "volume", None, volume.group(1)
    if method == "DELETE" and (volume := _VOLUME.fullmatch(path)):
        return "workspace-remove", None, volume.group(1)
    container = _CONTAINER.fullmatch(path)
    if container and (action := _CONTAINER_ACTIONS.get((method, container.group(2)))):
        return "container", action, container.group(1)
    raise endpoint_refusal(
        policy,
        method,
        path,
        "endpoint",
        "not on the allow-list of a job launch (create, start, wait, logs, attach, inspect, kill, "
        "remove of its own containers; image inspect; its own volumes, and removal of its own workspaces; "
        "ping, version)",
    )


def upstream_target(policy: ShardPolicy, call: Route, container_id: str | None = None) -> str:
    """The target the guard sends to the Engine for an allowed call, written from the route alone.

    Args:
        policy: the shard (container listings are narrowed to it).
        call: the parsed call.
        container_id: the full ID the server resolved and checked, for container calls.
    """
    params = list(call.params)
    if call.kind == "ping":
        path = "/_ping"
    elif call.kind == "version":
        path = "/version"
    elif call.kind == "create":
        path = "/containers/create"
    elif call.kind == "containers":
        path = "/containers/json"
        params = [(k, v) for k, v in params if k != _FILTERS]
        params.append((_FILTERS, json.dumps(container_filters(policy, call.param(_FILTERS)), separators=(",", ":"))))
    elif call.kind == "volumes":
        path = "/volumes"
    elif call.kind == "image":
        path = f"/images/{quote(call.name or '', safe='/:@')}/json"
    elif call.kind == "volume":
        path = f"/volumes/{quote(call.name or '', safe='')}"
    elif call.kind == "workspace-remove":
        path = f"/volumes/{quote(call.name or '', safe='')}"
        params = []  # never forced: the Engine refuses to remove a volume a container still uses
    else:
        if container_id is None or not FULL_ID.fullmatch(container_id):
            raise ValueError("a container call is sent by its full ID only")
        suffix = {"inspect": "/json", "remove": ""}.get(call.action or "", f"/{call.action}")
        path = f"/containers/{container_id}{suffix}"
    query = urlencode(params, quote_via=quote)
    return f"/v{API_VERSION}{path}" + (f"?{query}" if query else "")


def owns(policy: ShardPolicy, labels: Mapping[str, Any] | None) -> bool:
    """Whether a container (by its labels) was created through this shard's endpoint."""
    return str((labels or {}).get(GUARD_LABEL)) == policy.mark


def may_inspect(policy: ShardPolicy, attrs: Mapping[str, Any]) -> bool:
    """Inspect is also allowed on a container mounting this shard's volume (the worker's mount check)."""
    labels = (attrs.get("Config") or {}).get("Labels")
    return owns(policy, labels) or any(m.get("Name") == policy.volume for m in attrs.get("Mounts") or ())


def refuse_container(policy: ShardPolicy, method: str, path: str, name: str) -> Refusal:
    """CODEX-E045 for a call on a container this shard did not create."""
    return endpoint_refusal(
        policy,
        method,
        path,
        "foreign-container",
        f"container {name} was not created through shard {policy.index}'s endpoint",
    )


def may_remove_volume(policy: ShardPolicy, name: str, labels: Mapping[str, Any] | None) -> bool:
    """Only a workspace this shard's endpoint created may be removed through it: never a login."""
    return name != policy.volume and name.startswith(workspace_prefix(policy.volume)) and owns(policy, labels)


def refuse_volume(policy: ShardPolicy, method: str, path: str, name: str) -> Refusal:
    """CODEX-E045 for a look at a volume that is neither this shard's login nor its workspace."""
    return endpoint_refusal(
        policy, method, path, "foreign-volume", f"volume {name} is not one of shard {policy.index}'s"
    )


def container_filters(policy: ShardPolicy, raw: str | None) -> dict[str, Any]:
    """A container listing's filters, narrowed to this shard's containers (label filters are ANDed)."""
    filters = dict(json.loads(raw)) if raw else {}
    labels = filters.get("label") or []
    if isinstance(labels, dict):  # the old {"k=v": true} form
        labels = [k for k, on in labels.items() if on]
    if not isinstance(labels, list):
        labels = []
    filters["label"] = [*[str(x) for x in labels], f"{GUARD_LABEL}={policy.mark}"]
    return filters


def own_volumes(policy: ShardPolicy, listing: Mapping[str, Any]) -> dict[str, Any]:
    """A ``GET /volumes`` reply with only this shard's volumes left in it."""
    volumes = [v for v in listing.get("Volumes") or () if own_volume(policy, str(v.get("Name")), v.get("Labels"))]
    return {**listing, "Volumes": volumes}
