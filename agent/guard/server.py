"""The Docker API guard: one process holds the real socket; each shard gets an endpoint of its own.

Each shard's worker reaches Docker only through its endpoint, ``<dir>/<volume>/docker.sock``
(``DOCKER_HOST``). The guard never forwards a byte the client wrote (streamed attach and log data
aside): every request is read strictly (:mod:`agent.guard.http`), judged (:mod:`agent.guard.policy`,
:mod:`agent.jobs.policy`), and the guard then writes a fresh request of its own: the pinned API
version, a canonical path in which every container is named by the full ID the guard checked, a
query re-encoded from validated parameters, its own headers, and a body re-encoded from the object
the policy built. So:

* a create is rebuilt under the shard's job policy; named volumes it mounts must be workspaces this
  endpoint created, or new names in the shard's workspace namespace (the guard creates them,
  labelled for the shard); a ``codex.guard.created`` line records it;
* calls on containers pass only for containers this endpoint created (inspect also for the
  worker's own container, which mounts the shard's volume);
* container and volume listings are narrowed to the shard's own;
* anything else is a 403 (a 400 for a request it will not read) whose JSON body names the code and
  the rule, with a ``codex.guard.refused`` line, rate-limited per shard with a count of those left out.

One hostile shard cannot slow the others: each shard has a cap on connections, head and body
timeouts, a bound on requests judged at once (bodies are parsed off the event loop) and on calls
upstream at once. One guard serves a socket directory (:mod:`agent.guard.lock`), and it removes only
sockets it created. An engine that does not answer is a 502 naming CODEX-E040.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any
from urllib.parse import quote

import structlog

from agent.errors import DockerUnavailableError, GuardRefusedError, JobRejectedError
from agent.guard import policy as rules
from agent.guard.config import GuardConfig
from agent.guard.http import (
    MAX_BODY,
    MAX_HEAD,
    BadRequest,
    Head,
    Request,
    RequestReader,
    json_response,
    pipe,
    read_body,
    read_head,
    relay_body,
    upstream_head,
)
from agent.guard.lock import GuardLock
from agent.guard.policy import API_VERSION, FULL_ID, STREAMING, Refusal, Route, ShardPolicy
from agent.jobs.policy import decode_body

__all__ = [
    "GUARD_STARTED",
    "GUARD_ENDPOINT_ADDED",
    "GUARD_REFUSED",
    "GUARD_CREATED",
    "GUARD_VOLUME_CREATED",
    "GUARD_ENGINE_DOWN",
    "GUARD_FAILED",
    "DISCOVER_INTERVAL",
    "HEAD_TIMEOUT",
    "BODY_TIMEOUT",
    "IDLE_TIMEOUT",
    "MAX_CONNECTIONS",
    "GuardServer",
]

log = structlog.get_logger("agent.guard")

GUARD_STARTED = "codex.guard.started"
GUARD_ENDPOINT_ADDED = "codex.guard.endpoint_added"
GUARD_REFUSED = "codex.guard.refused"
GUARD_CREATED = "codex.guard.created"
GUARD_VOLUME_CREATED = "codex.guard.volume_created"
GUARD_ENGINE_DOWN = "codex.guard.engine_unreachable"
GUARD_FAILED = "codex.guard.connection_failed"

DISCOVER_INTERVAL = 2.0
"""Seconds between looks for new login volumes (a shard added while the guard runs)."""
HEAD_TIMEOUT = 10.0
"""Seconds a request head may take from its first byte to its end."""
BODY_TIMEOUT = 30.0
"""Seconds a request body may take."""
IDLE_TIMEOUT = 300.0
"""Seconds a kept-alive connection may wait for its next request."""
MAX_CONNECTIONS = 64
ENGINE_TIMEOUT = 60.0
"""Seconds one of the guard's own look-ups (inspect, volume create) may take before it is E040."""
"""Connections one shard may hold open at once (a worker uses a handful)."""
JUDGE_CONCURRENCY = 4
"""Requests of one shard judged at once (parsing, lookups, workspace creation)."""
UPSTREAM_CONCURRENCY = 16
"""Short calls of one shard in flight to the Engine at once (streams are not counted)."""
REFUSAL_BURST = 100
REFUSAL_RATE = 20.0
"""Refusal lines a shard may cause: a burst, then this many a second; the rest are counted."""
_MAX_REPLY = 64 * 1024 * 1024
_OWNED_LIMIT = 50_000
_PEERCRED = struct.Struct("3i")
_REASONS = {
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    408: "Request Timeout",
    413: "Payload Too Large",
    431: "Request Header Fields Too Large",
    503: "Service Unavailable",
}


class _EngineDown(Exception):
    """The real engine did not answer."""


class _Answer(Exception):
    """The guard answers this call itself, from what it looked up (a volume, a 404)."""

    def __init__(self, status: int, payload: Any) -> None:
        self.status = status
        self.payload = payload


@dataclass
class _Call:
    """An allowed call, as the guard will send it to the engine."""

    route: Route
    target: str
    body: bytes = b""
    rewrite: Callable[[bytes], bytes] | None = None


@dataclass
class _RefusalBudget:
    """A token bucket for refusal lines; what it holds back is counted and reported with the next line."""

    tokens: float = REFUSAL_BURST
    stamp: float = field(default_factory=time.monotonic)
    held_back: int = 0

    def take(self) -> int | None:
        """None: hold this line back; else the number of lines held back since the last one."""
        now = time.monotonic()
        self.tokens = min(REFUSAL_BURST, self.tokens + (now - self.stamp) * REFUSAL_RATE)
        self.stamp = now
        if self.tokens < 1:
            self.held_back += 1
            return None
        self.tokens -= 1
        held, self.held_back = self.held_back, 0
        return held


@dataclass
class _Endpoint:
    """One shard's endpoint and what the guard keeps about it."""

    policy: ShardPolicy
    server: asyncio.AbstractServer
    identity: tuple[int, int]
    """(device, inode) of the socket this guard bound: the only one it may remove."""
    owned: set[str] = field(default_factory=set)
    connections: int = 0
    judging: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(JUDGE_CONCURRENCY))
    upstream: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(UPSTREAM_CONCURRENCY))
    refusals: _RefusalBudget = field(default_factory=_RefusalBudget)


def _peer(writer: asyncio.StreamWriter) -> dict[str, int]:
    """pid (in the guard's pid namespace; 0 when outside it) and uid of the caller."""
    sock = writer.get_extra_info("socket")
    try:
        pid, uid, _gid = _PEERCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size))
    except (OSError, AttributeError, struct.error):
        return {}
    return {"peer_pid": pid, "peer_uid": uid}


def _with_pinned_version(reply: Head) -> Head:
    """The Engine's reply head with ``Api-Version`` saying the version the guard serves."""
    return Head(reply.start, [(k, API_VERSION if k.lower() == "api-version" else v) for k, v in reply.headers])


def _pinned_version(reply: bytes) -> bytes:
    """A ``/version`` answer that negotiates clients down to the pinned version."""
    document = json.loads(reply)
    document.update(ApiVersion=API_VERSION, MinAPIVersion=API_VERSION)
    return json.dumps(document).encode()


class GuardServer:
    """Serves every shard endpoint of a :class:`~agent.guard.config.GuardConfig`.

    Args:
        config: the shards, the socket directory and the real engine.
    """

    def __init__(self, config: GuardConfig) -> None:
        self.config = config
        self._endpoints: dict[str, _Endpoint] = {}
        self._connections: set[asyncio.Task[Any]] = set()
        self._discovery: asyncio.Task[None] | None = None
        self._lock = GuardLock(config.socket_dir)

    @property
    def endpoints(self) -> list[ShardPolicy]:
        """The shards served now."""
        return sorted((e.policy for e in self._endpoints.values()), key=lambda p: (p.index, p.volume))

    async def start(self) -> None:
        """Take the directory's lock, bind every endpoint known now, and keep looking for new shards.

        Raises:
            GuardBusyError: CODEX-E046, another guard serves the directory (nothing was touched).
        """
        self._lock.acquire()
        await self.discover(log_added=False)
        log.info(
            GUARD_STARTED,
            upstream=self.config.upstream,
            api_version=API_VERSION,
            **self._describe(self.endpoints),
            discovery=None if self.config.static is not None else f"volumes named {self.config.volume_prefix}<N>",
        )
        if self.config.static is None:
            self._discovery = asyncio.ensure_future(self._discover_forever())

    async def discover(self, log_added: bool = True) -> list[ShardPolicy]:
        """Serve every shard the config lists or the engine's volumes name; returns the new ones."""
        names: list[str] = []
        if self.config.static is None:
            query = quote(json.dumps({"name": [self.config.volume_prefix]}))
            try:
                status, listing = await self._engine("GET", f"/v{API_VERSION}/volumes?filters={query}")
            except _EngineDown as e:
                log.warning(GUARD_ENGINE_DOWN, upstream=self.config.upstream, error=str(e), operation="discovery")
                return []
            names = [str(v.get("Name")) for v in (listing or {}).get("Volumes") or ()] if status == 200 else []
        added = [p for p in self.config.discovered(names) if p.volume not in self._endpoints]
        for policy in added:
            await self._serve(policy)
        if added and log_added:
            log.info(GUARD_ENDPOINT_ADDED, **self._describe(added))
        return added

    async def _discover_forever(self) -> None:
        while True:
            await asyncio.sleep(DISCOVER_INTERVAL)
            await self.discover()

    async def _serve(self, policy: ShardPolicy) -> None:
        """Bind one endpoint. A socket left at its path is an earlier guard's (this one holds the lock,
        so no live guard serves it): it is replaced; the directory is kept (a worker's mount holds it)."""
        path = self.config.socket_path(policy)
        path.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(path.parent, 0o755)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        endpoint: dict[str, _Endpoint] = {}
        server = await asyncio.start_unix_server(
            lambda r, w: self._handle(endpoint["e"], r, w), path=str(path), limit=MAX_HEAD
        )
        os.chown(path, *self.config.owner)
        os.chmod(path, 0o660)
        stat = path.stat()
        endpoint["e"] = self._endpoints[policy.volume] = _Endpoint(policy, server, (stat.st_dev, stat.st_ino))

    def _describe(self, policies: list[ShardPolicy]) -> dict[str, Any]:
        return {
            "endpoints": {p.index: {"volume": p.volume, "socket": str(self.config.socket_path(p))} for p in policies}
        }

    async def close(self) -> None:
        """Stop looking, stop listening, remove the sockets this guard bound, and let the lock go."""
        if self._discovery is not None:
            self._discovery.cancel()
        for endpoint in self._endpoints.values():
            endpoint.server.close()
        for endpoint in self._endpoints.values():
            await endpoint.server.wait_closed()
            path = self.config.socket_path(endpoint.policy)
            with contextlib.suppress(FileNotFoundError):
                stat = path.stat()
                if (stat.st_dev, stat.st_ino) == endpoint.identity:
                    path.unlink()
        self._lock.release()

    # -- one client connection ------------------------------------------------------------

    async def _handle(self, endpoint: _Endpoint, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # asyncio holds a connection's task only weakly, and its streams only through the task's
        # own frame: a connection waiting on a quiet stream (attach, logs follow) would be garbage
        # collected mid-stream. Hold it until it ends.
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
            task.add_done_callback(self._connections.discard)
        policy = endpoint.policy
        if endpoint.connections >= MAX_CONNECTIONS:
            refusal = rules.Refusal(
                GuardRefusedError(
                    **policy.facts(),
                    method="-",
                    path="-",
                    rule="connections",
                    cause=f"more than {MAX_CONNECTIONS} connections at once",
                ),
                "connections",
            )
            self._refused(endpoint, "-", "-", refusal, writer)
            with contextlib.suppress(Exception):
                writer.write(json_response(503, _REASONS[503], refusal.body(), keep_alive=False))
                await writer.drain()
                writer.close()
            return
        endpoint.connections += 1
        requests = RequestReader(reader, MAX_BODY)
        engine: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        try:
            while True:
                try:
                    request = await requests.next(IDLE_TIMEOUT, HEAD_TIMEOUT, BODY_TIMEOUT)
                except BadRequest as e:
                    refusal = rules.Refusal(
                        GuardRefusedError(**policy.facts(), method="-", path="-", rule="http", cause=e.cause), "http"
                    )
                    self._refused(endpoint, "-", "-", refusal, writer)
                    writer.write(
                        json_response(e.status, _REASONS.get(e.status, "Bad Request"), refusal.body(), keep_alive=False)
                    )
                    await writer.drain()
                    return
                if request is None:
                    return
                try:
                    async with endpoint.judging:
                        call = await self._judge(endpoint, request)
                except Refusal as e:
                    self._refused(endpoint, request.method, request.target.split("?", 1)[0], e, writer)
                    writer.write(json_response(403, "Forbidden", e.body(), keep_alive=not request.closes))
                    await writer.drain()
                    if request.closes:
                        return
                    continue
                except _Answer as answer:
                    writer.write(
                        json_response(
                            answer.status,
                            _REASONS.get(answer.status, "OK"),
                            answer.payload,
                            keep_alive=not request.closes,
                        )
                    )
                    await writer.drain()
                    if request.closes:
                        return
                    continue
                except _EngineDown as e:
                    writer.write(self._engine_down(policy, str(e)))
                    return
                if engine is None:
                    try:
                        engine = await asyncio.open_unix_connection(self.config.upstream, limit=MAX_HEAD)
                    except OSError as e:
                        writer.write(self._engine_down(policy, f"{type(e).__name__}: {e}"))
                        return
                if not await self._forward(endpoint, request, call, requests, (reader, writer), engine):
                    return
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            return  # a client or engine that went away mid-message
        except Exception as e:  # noqa: BLE001  (one connection's failure must be seen, and end only it)
            log.error(GUARD_FAILED, **policy.facts(), error=f"{type(e).__name__}: {e}"[:300])
        finally:
            endpoint.connections -= 1
            for stream in (writer, engine[1] if engine else None):
                if stream is not None:
                    with contextlib.suppress(Exception):
                        stream.close()

    def _refused(
        self, endpoint: _Endpoint, method: str, path: str, refusal: Refusal, writer: asyncio.StreamWriter
    ) -> None:
        held_back = endpoint.refusals.take()
        if held_back is None:
            return
        extra = {"held_back": held_back} if held_back else {}
        log.warning(
            GUARD_REFUSED,
            **endpoint.policy.facts(),
            method=method,
            path=path,
            rule=refusal.rule,
            code=refusal.error.code,
            error=refusal.error.message,
            **_peer(writer),
            **extra,
        )

    async def _forward(
        self,
        endpoint: _Endpoint,
        request: Request,
        call: _Call,
        requests: RequestReader,
        client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        engine: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    ) -> bool:
        """Send the guard's own request for an allowed call and relay the reply; returns whether the
        connection goes on."""
        route = call.route
        hijack = route.action == "attach"
        bound = endpoint.upstream if route.action not in STREAMING else contextlib.nullcontext()
        async with bound:
            engine[1].write(
                upstream_head(route.method, call.target, call.body, upgrade=hijack and request.upgrade) + call.body
            )
            await engine[1].drain()
            reply = await read_head(engine[0])
            if reply is None:
                client[1].write(self._engine_down(endpoint.policy, "the engine closed the connection"))
                return False
            writer = client[1]
            reply = _with_pinned_version(reply)
            if reply.status == 101 or (hijack and 200 <= reply.status < 300):
                writer.write(reply.encode())
                await writer.drain()
                stdin = requests.take_leftover()
                if stdin:
                    engine[1].write(stdin)
                    await engine[1].drain()
                await pipe(client, engine)
                return False
            if call.rewrite is not None and 200 <= reply.status < 300:
                framed = reply.chunked or reply.get("Content-Length") is not None
                data = call.rewrite(await read_body(engine[0], reply, _MAX_REPLY, until_close=not framed))
                writer.write(reply.encode(length=len(data)) + data)
                keep = framed and not reply.closes()
            else:
                writer.write(reply.encode())
                keep = await relay_body(engine[0], writer, reply, route.method)
            await writer.drain()
        return keep and not request.closes

    # -- judging a call -------------------------------------------------------------------

    async def _judge(self, endpoint: _Endpoint, request: Request) -> _Call:
        policy = endpoint.policy
        route = rules.route(policy, request.method, request.target)
        if request.body and not route.takes_body:
            raise rules.Refusal(
                GuardRefusedError(
                    **policy.facts(),
                    method=route.method,
                    path=route.path,
                    rule="body",
                    cause="a request body on a call that takes none",
                ),
                "body",
            )
        if route.kind == "create":
            return await self._create(endpoint, route, request.body)
        if route.kind == "volumes":
            return _Call(route, rules.upstream_target(policy, route), rewrite=partial(self._own_volumes, policy))
        if route.kind == "version":
            return _Call(route, rules.upstream_target(policy, route), rewrite=_pinned_version)
        if route.kind == "volume":
            await self._volume(policy, route)
        if route.kind == "workspace-remove":
            await self._workspace(policy, route)
        if route.kind == "container":
            container_id = await self._container(endpoint, route)
            return _Call(route, rules.upstream_target(policy, route, container_id))
        return _Call(route, rules.upstream_target(policy, route))

    @staticmethod
    def _plan(policy: ShardPolicy, body: bytes) -> rules.CreatePlan:
        """Decode and judge a create body (run off the event loop: bounded, but CPU all the same)."""
        try:
            request = decode_body(body)
        except ValueError as e:
            raise rules.Refusal(
                JobRejectedError(
                    **policy.facts(), cause=f"a create body that is not plain JSON ({e})", offending="the body"
                ),
                "create-option",
            ) from None
        return rules.create_request(policy, request)

    async def _create(self, endpoint: _Endpoint, route: Route, body: bytes) -> _Call:
        policy = endpoint.policy
        plan = await asyncio.to_thread(self._plan, policy, body)
        for name in dict.fromkeys(plan.volumes):
            status, attrs = await self._engine("GET", f"/v{API_VERSION}/volumes/{quote(name, safe='')}")
            if rules.judge_volume(policy, name, attrs if status == 200 else None):
                await self._create_volume(policy, name)
        return _Call(
            route,
            rules.upstream_target(policy, route),
            json.dumps(plan.body).encode(),
            partial(self._created, endpoint, plan.body, route.param("name")),
        )

    async def _create_volume(self, policy: ShardPolicy, name: str) -> None:
        status, attrs = await self._engine(
            "POST", f"/v{API_VERSION}/volumes/create", {"Name": name, "Labels": rules.workspace_labels(policy)}
        )
        if status >= 300 or not rules.own_volume(policy, name, (attrs or {}).get("Labels")):
            rules.judge_volume(policy, name, attrs or {"Labels": {}})  # raced with another creator: refuse
        log.info(GUARD_VOLUME_CREATED, **policy.facts(), workspace=name)

    async def _volume(self, policy: ShardPolicy, route: Route) -> None:
        """A volume inspect is answered from the guard's own look-up, once it is the shard's."""
        assert route.name is not None
        status, attrs = await self._engine("GET", rules.upstream_target(policy, route))
        if status == 200 and not rules.own_volume(policy, route.name, (attrs or {}).get("Labels")):
            raise rules.refuse_volume(policy, route.method, route.path, route.name)
        raise _Answer(status, attrs if isinstance(attrs, dict) else {"message": f"volume {route.name}: {status}"})

    async def _workspace(self, policy: ShardPolicy, route: Route) -> None:
        """A volume removal passes for this shard's own workspace only (never its login, never forced)."""
        assert route.name is not None
        status, attrs = await self._engine("GET", rules.upstream_target(policy, replace(route, kind="volume")))
        if status == 404:
            raise _Answer(404, attrs if isinstance(attrs, dict) else {"message": f"no such volume: {route.name}"})
        if status != 200 or not rules.may_remove_volume(policy, route.name, (attrs or {}).get("Labels")):
            raise rules.refuse_volume(policy, route.method, route.path, route.name)

    async def _container(self, endpoint: _Endpoint, route: Route) -> str:
        """The full ID of the container a call names, once it is checked to be the shard's.

        A name or an ID prefix is resolved by the Engine's inspect, and the call then goes upstream
        by the full ID that inspect returned: the container judged is the container served.
        """
        policy = endpoint.policy
        assert route.name is not None
        if FULL_ID.fullmatch(route.name) and route.name in endpoint.owned:
            return route.name
        status, attrs = await self._engine("GET", f"/v{API_VERSION}/containers/{quote(route.name, safe='')}/json")
        if status != 200 or not isinstance(attrs, dict) or not FULL_ID.fullmatch(str(attrs.get("Id"))):
            raise _Answer(
                status if status >= 400 else 502,
                attrs
                if isinstance(attrs, dict) and status >= 400
                else {"message": f"container {route.name}: the engine's answer has no ID"},
            )
        container_id = str(attrs["Id"])
        if rules.owns(policy, (attrs.get("Config") or {}).get("Labels")):
            self._remember(endpoint, container_id)
            return container_id
        if route.action == "inspect" and rules.may_inspect(policy, attrs):
            return container_id
        raise rules.refuse_container(policy, route.method, route.path, route.name)

    def _remember(self, endpoint: _Endpoint, container_id: str) -> None:
        if len(endpoint.owned) >= _OWNED_LIMIT:
            endpoint.owned.clear()  # a cache only: the labels are asked again
        endpoint.owned.add(container_id)

    def _created(self, endpoint: _Endpoint, body: dict[str, Any], name: str | None, reply: bytes) -> bytes:
        container_id = str(json.loads(reply).get("Id"))
        if FULL_ID.fullmatch(container_id):
            self._remember(endpoint, container_id)
        labels = body["Labels"]
        host = body["HostConfig"]
        log.info(
            GUARD_CREATED,
            **endpoint.policy.facts(),
            container_id=container_id,
            name=name,
            image=body.get("Image"),
            user=body["User"],
            network=host["NetworkMode"],
            binds=host["Binds"],
            run_id=labels.get("codex.run_id"),
            task_id=labels.get("codex.task_id"),
            worker=labels.get("codex.worker"),
        )
        return reply

    @staticmethod
    def _own_volumes(policy: ShardPolicy, reply: bytes) -> bytes:
        return json.dumps(rules.own_volumes(policy, json.loads(reply))).encode()

    def _engine_down(self, policy: ShardPolicy, cause: str) -> bytes:
        error = DockerUnavailableError(**policy.facts(), operation="a call through the guard", cause=cause)
        log.error(GUARD_ENGINE_DOWN, **policy.facts(), upstream=self.config.upstream, error=cause)
        return json_response(502, "Bad Gateway", {"message": str(error), "code": error.code}, keep_alive=False)

    async def _engine(self, method: str, path: str, payload: dict[str, Any] | None = None) -> tuple[int, Any]:
        """One call of the guard's own to the engine (inspect, volume create), within :data:`ENGINE_TIMEOUT`."""
        try:
            return await asyncio.wait_for(self._engine_call(method, path, payload), ENGINE_TIMEOUT)
        except TimeoutError:
            raise _EngineDown(f"no answer to {method} {path.split('?')[0]} within {ENGINE_TIMEOUT:.0f}s") from None

    async def _engine_call(self, method: str, path: str, payload: dict[str, Any] | None) -> tuple[int, Any]:
        try:
            reader, writer = await asyncio.open_unix_connection(self.config.upstream, limit=MAX_HEAD)
        except OSError as e:
            raise _EngineDown(f"{type(e).__name__}: {e}") from e
        try:
            body = b"" if payload is None else json.dumps(payload).encode()
            writer.write(upstream_head(method, path, body) + body)
            await writer.drain()
            head = await read_head(reader)
            if head is None:
                raise _EngineDown("the engine closed the connection")
            framed = head.chunked or head.get("Content-Length") is not None
            if not framed and head.status in (204, 304):
                return head.status, None
            data = await read_body(reader, head, _MAX_REPLY, until_close=not framed)
            try:
                return head.status, json.loads(data) if data.strip() else None
            except ValueError:
                return head.status, {"message": data[:200].decode("utf-8", "replace")}
        except (ConnectionError, asyncio.IncompleteReadError) as e:
            raise _EngineDown(f"{type(e).__name__}: {e}") from e
        finally:
            writer.close()
