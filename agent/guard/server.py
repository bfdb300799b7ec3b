"""The Docker API guard: one process holds the real socket; each shard gets an endpoint of its own.

Each shard's worker reaches Docker only through its endpoint, ``<dir>/<volume>/docker.sock``
(``DOCKER_HOST``). Every call is judged by :mod:`agent.guard.policy` before it reaches the engine,
whichever client sent it (the agent's launcher, the raw SDK, the docker CLI, curl):

* a create is rebuilt under the shard's job policy; named volumes it mounts must be workspaces this
  endpoint created (the guard creates new ones, labelled for the shard); a ``codex.guard.created``
  line records it;
* calls on containers pass only for containers this endpoint created (inspect also for the
  worker's own container, which mounts the shard's volume);
* container and volume listings are narrowed to the shard's own;
* anything else is a 403 whose JSON body names the code and the rule, with a ``codex.guard.refused``
  line.

Replies are relayed as they arrive; ``attach`` becomes a two-way pipe. An engine that does not
answer is a 502 naming CODEX-E040.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any
from urllib.parse import parse_qsl, quote

import structlog

from agent.errors import DockerUnavailableError, JobRejectedError
from agent.guard import policy as rules
from agent.guard.config import GuardConfig
from agent.guard.http import MAX_BODY, MAX_HEAD, BodyTooLarge, Head, json_response, pipe, read_body, read_head, relay_body
from agent.guard.policy import Refusal, Route, ShardPolicy

__all__ = [
    "GUARD_STARTED",
    "GUARD_ENDPOINT_ADDED",
    "GUARD_REFUSED",
    "GUARD_CREATED",
    "GUARD_VOLUME_CREATED",
    "GUARD_ENGINE_DOWN",
    "DISCOVER_INTERVAL",
    "GuardServer",
]

log = structlog.get_logger("agent.guard")

GUARD_STARTED = "codex.guard.started"
GUARD_ENDPOINT_ADDED = "codex.guard.endpoint_added"
GUARD_REFUSED = "codex.guard.refused"
GUARD_CREATED = "codex.guard.created"
GUARD_VOLUME_CREATED = "codex.guard.volume_created"
GUARD_ENGINE_DOWN = "codex.guard.engine_unreachable"

DISCOVER_INTERVAL = 2.0
"""Seconds between looks for new login volumes (a shard added while the guard runs)."""
_MAX_REPLY = 64 * 1024 * 1024
_OWNED_LIMIT = 50_000
_PEERCRED = struct.Struct("3i")


class _EngineDown(Exception):
    """The real engine did not answer."""


@dataclass
class _Call:
    """An allowed call, as it goes to the engine."""

    route: Route
    target: str
    body: bytes
    rewrite: Callable[[bytes], bytes] | None = None


def _query_name(target: str) -> str | None:
    """The ``name`` a create asked for (``?name=``), for the audit line."""
    return dict(parse_qsl(target.partition("?")[2])).get("name")


def _peer(writer: asyncio.StreamWriter) -> dict[str, int]:
    """pid (in the guard's pid namespace; 0 when outside it) and uid of the caller."""
    sock = writer.get_extra_info("socket")
    try:
        pid, uid, _gid = _PEERCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size))
    except (OSError, AttributeError, struct.error):
        return {}
    return {"peer_pid": pid, "peer_uid": uid}


class GuardServer:
    """Serves every shard endpoint of a :class:`~agent.guard.config.GuardConfig`.

    Args:
        config: the shards, the socket directory and the real engine.
    """

    def __init__(self, config: GuardConfig) -> None:
        self.config = config
        self._endpoints: dict[str, tuple[ShardPolicy, asyncio.AbstractServer]] = {}
        self._owned: dict[str, set[str]] = {}
        self._connections: set[asyncio.Task[Any]] = set()
        self._discovery: asyncio.Task[None] | None = None

    @property
    def endpoints(self) -> list[ShardPolicy]:
        """The shards served now."""
        return sorted((policy for policy, _ in self._endpoints.values()), key=lambda p: (p.index, p.volume))

    async def start(self) -> None:
        """Bind every endpoint known now, log them, and keep looking for new shards (unless listed)."""
        await self.discover(log_added=False)
        log.info(GUARD_STARTED, upstream=self.config.upstream, **self._describe(self.endpoints),
                 discovery=None if self.config.static is not None else f"volumes named {self.config.volume_prefix}<N>")
        if self.config.static is None:
            self._discovery = asyncio.ensure_future(self._discover_forever())

    async def discover(self, log_added: bool = True) -> list[ShardPolicy]:
        """Serve every shard the config lists or the engine's volumes name; returns the new ones."""
        names: list[str] = []
        if self.config.static is None:
            query = quote(json.dumps({"name": [self.config.volume_prefix]}))
            try:
                status, listing = await self._engine("GET", f"/volumes?filters={query}")
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
        """Bind one endpoint; a stale socket of an earlier run is replaced, the directory kept."""
        path = self.config.socket_path(policy)
        path.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(path.parent, 0o755)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        server = await asyncio.start_unix_server(partial(self._handle, policy), path=str(path), limit=MAX_HEAD)
        os.chown(path, *self.config.owner)
        os.chmod(path, 0o660)
        self._endpoints[policy.volume] = (policy, server)
        self._owned[policy.volume] = set()

    def _describe(self, policies: list[ShardPolicy]) -> dict[str, Any]:
        return {"endpoints": {p.index: {"volume": p.volume, "socket": str(self.config.socket_path(p))} for p in policies}}

    async def close(self) -> None:
        """Stop looking, stop listening and remove the sockets."""
        if self._discovery is not None:
            self._discovery.cancel()
        for _, server in self._endpoints.values():
            server.close()
        for policy, server in self._endpoints.values():
            await server.wait_closed()
            with contextlib.suppress(FileNotFoundError):
                self.config.socket_path(policy).unlink()

    # -- one client connection ------------------------------------------------------------

    async def _handle(self, policy: ShardPolicy, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # asyncio holds a connection's task only weakly, and its streams only through the task's
        # own frame: a connection waiting on a quiet stream (attach, logs follow) would be garbage
        # collected mid-stream. Hold it until it ends.
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
            task.add_done_callback(self._connections.discard)
        engine: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        try:
            while True:
                head = await read_head(reader)
                if head is None:
                    return
                method, target, _ = head.start.split(" ", 2)
                try:
                    body = await read_body(reader, head)
                    call = await self._judge(policy, method, target, body)
                except (Refusal, BodyTooLarge) as e:
                    refusal = e if isinstance(e, Refusal) else self._too_large(policy)
                    log.warning(GUARD_REFUSED, **policy.facts(), method=method, path=target.split("?", 1)[0],
                                name=_query_name(target), rule=refusal.rule, code=refusal.error.code,
                                error=refusal.error.message, **_peer(writer))
                    keep = isinstance(e, Refusal) and not head.closes()
                    writer.write(json_response(403, "Forbidden", refusal.body(), keep_alive=keep))
                    await writer.drain()
                    if keep:
                        continue
                    return
                except _EngineDown as e:
                    writer.write(self._engine_down(policy, str(e)))
                    return
                if engine is None:
                    try:
                        engine = await asyncio.open_unix_connection(self.config.upstream, limit=MAX_HEAD)
                    except OSError as e:
                        writer.write(self._engine_down(policy, f"{type(e).__name__}: {e}"))
                        return
                if not await self._forward(policy, method, head, call, (reader, writer), engine):
                    return
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            return  # a client or engine that went away mid-message
        finally:
            for stream in (writer, engine[1] if engine else None):
                if stream is not None:
                    with contextlib.suppress(Exception):
                        stream.close()

    async def _forward(
        self,
        policy: ShardPolicy,
        method: str,
        head: Head,
        call: _Call,
        client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        engine: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    ) -> bool:
        """Send an allowed call on and relay its reply; returns whether the connection goes on."""
        version = head.start.rsplit(" ", 1)[-1]
        engine[1].write(head.encode(f"{method} {call.target} {version}", length=len(call.body)) + call.body)
        await engine[1].drain()
        reply = await read_head(engine[0])
        if reply is None:
            client[1].write(self._engine_down(policy, "the engine closed the connection"))
            return False
        writer = client[1]
        if reply.status == 101 or (call.route.action == "attach" and 200 <= reply.status < 300):
            writer.write(reply.encode())
            await writer.drain()
            await pipe(client, engine)
            return False
        if call.rewrite is not None and 200 <= reply.status < 300:
            framed = reply.chunked or reply.get("Content-Length") is not None
            data = call.rewrite(await read_body(engine[0], reply, _MAX_REPLY, until_close=not framed))
            writer.write(reply.encode(length=len(data)) + data)
            keep = framed and not reply.closes()
        else:
            writer.write(reply.encode())
            keep = await relay_body(engine[0], writer, reply, method)
        await writer.drain()
        return keep and not head.closes()

    # -- judging a call -------------------------------------------------------------------

    async def _judge(self, policy: ShardPolicy, method: str, target: str, body: bytes) -> _Call:
        route = rules.route(policy, method, target)
        if route.kind == "create":
            return await self._create(policy, route, target, body)
        if route.kind == "containers":
            return _Call(route, rules.container_list_query(policy, target), body)
        if route.kind == "volumes":
            return _Call(route, target, body, partial(self._own_volumes, policy))
        if route.kind == "volume" and route.name:
            status, attrs = await self._engine("GET", f"/volumes/{route.name}")
            if status == 200 and not rules.own_volume(policy, route.name, (attrs or {}).get("Labels")):
                raise rules.refuse_volume(policy, method, route.path, route.name)
        if route.kind == "container" and route.name:
            await self._check_container(policy, method, route)
        return _Call(route, target, body)

    async def _create(self, policy: ShardPolicy, route: Route, target: str, body: bytes) -> _Call:
        try:
            request = json.loads(body or b"{}")
        except ValueError:
            request = None
        if not isinstance(request, dict):
            raise rules.Refusal(JobRejectedError(**policy.facts(), cause="a create whose body is not a JSON object",
                                                 offending="the body"), "create-option")
        plan = rules.create_request(policy, request)
        for name in dict.fromkeys(plan.volumes):
            status, attrs = await self._engine("GET", f"/volumes/{name}")
            if rules.judge_volume(policy, name, attrs if status == 200 else None):
                await self._create_volume(policy, name)
        return _Call(route, target, json.dumps(plan.body).encode(), partial(self._created, policy, plan.body))

    async def _create_volume(self, policy: ShardPolicy, name: str) -> None:
        status, attrs = await self._engine("POST", "/volumes/create", {"Name": name, "Labels": rules.workspace_labels(policy)})
        if status >= 300 or not rules.own_volume(policy, name, (attrs or {}).get("Labels")):
            rules.judge_volume(policy, name, attrs or {"Labels": {}})  # raced with another creator: refuse
        log.info(GUARD_VOLUME_CREATED, **policy.facts(), workspace=name)

    async def _check_container(self, policy: ShardPolicy, method: str, route: Route) -> None:
        assert route.name is not None
        if route.name in self._owned[policy.volume]:
            return
        status, attrs = await self._engine("GET", f"/containers/{route.name}/json")
        if status != 200 or not isinstance(attrs, dict):
            return  # the engine answers this call itself (404 No such container)
        if rules.owns(policy, (attrs.get("Config") or {}).get("Labels")):
            self._remember(policy, str(attrs.get("Id")))
            return
        if route.action == "inspect" and rules.may_inspect(policy, attrs):
            return
        raise rules.refuse_container(policy, method, route.path, route.name)

    def _remember(self, policy: ShardPolicy, container_id: str) -> None:
        owned = self._owned[policy.volume]
        if len(owned) >= _OWNED_LIMIT:
            owned.clear()  # a cache only: the labels are asked again
        owned.add(container_id)

    def _created(self, policy: ShardPolicy, body: dict[str, Any], reply: bytes) -> bytes:
        container_id = str(json.loads(reply).get("Id"))
        self._remember(policy, container_id)
        labels = body["Labels"]
        host = body["HostConfig"]
        log.info(GUARD_CREATED, **policy.facts(), container_id=container_id, image=body.get("Image"),
                 user=body["User"], network=host["NetworkMode"], binds=host["Binds"],
                 run_id=labels.get("codex.run_id"), task_id=labels.get("codex.task_id"), worker=labels.get("codex.worker"))
        return reply

    @staticmethod
    def _own_volumes(policy: ShardPolicy, reply: bytes) -> bytes:
        return json.dumps(rules.own_volumes(policy, json.loads(reply))).encode()

    @staticmethod
    def _too_large(policy: ShardPolicy) -> Refusal:
        return rules.Refusal(JobRejectedError(**policy.facts(), cause=f"a request body above {MAX_BODY} bytes "
                                              "(a build context?)", offending="the body"), "body-size")

    def _engine_down(self, policy: ShardPolicy, cause: str) -> bytes:
        error = DockerUnavailableError(**policy.facts(), operation="a call through the guard", cause=cause)
        log.error(GUARD_ENGINE_DOWN, **policy.facts(), upstream=self.config.upstream, error=cause)
        return json_response(502, "Bad Gateway", {"message": str(error), "code": error.code}, keep_alive=False)

    async def _engine(self, method: str, path: str, payload: dict[str, Any] | None = None) -> tuple[int, Any]:
        """One call of the guard's own to the engine (inspect, volume create)."""
        try:
            reader, writer = await asyncio.open_unix_connection(self.config.upstream, limit=MAX_HEAD)
        except OSError as e:
            raise _EngineDown(f"{type(e).__name__}: {e}") from e
        try:
            body = b"" if payload is None else json.dumps(payload).encode()
            headers = [("Host", "docker"), ("Content-Type", "application/json"), ("Connection", "close")]
            writer.write(Head(f"{method} {path} HTTP/1.1", headers).encode(length=len(body)) + body)
            await writer.drain()
            head = await read_head(reader)
            if head is None:
                raise _EngineDown("the engine closed the connection")
            framed = head.chunked or head.get("Content-Length") is not None
            data = await read_body(reader, head, _MAX_REPLY, until_close=not framed)
            return head.status, json.loads(data) if data.strip() else None
        finally:
            writer.close()
