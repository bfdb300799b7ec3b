"""HTTP/1.1 for a Docker API proxy that never forwards a client's bytes, on asyncio streams.

Requests are read strictly (:class:`RequestReader`): the head is screened byte by byte first and
refused when it could be read two ways (a bare LF, which the Engine takes as a line end; a CR
alone; folded lines; control or non-ASCII bytes; both Content-Length and Transfer-Encoding; a
length given twice; ``Expect``; anything but HTTP/1.1), then h11, a strict HTTP/1.1 state
machine, frames it and its body, within head and body timeouts. The guard writes the request it
sends upstream itself (:func:`upstream_head`). Responses come from the Engine, which the guard
trusts: they are relayed as they arrive, chunk by chunk (``logs?follow=1``, ``wait``), by length,
or until the Engine closes, and a hijacked connection (``attach``: ``101 UPGRADED``) becomes a
two-way pipe. Nothing is buffered beyond one read.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from dataclasses import dataclass, field

import h11

__all__ = [
    "MAX_HEAD",
    "MAX_BODY",
    "BadRequest",
    "BodyTooLarge",
    "Request",
    "RequestReader",
    "upstream_head",
    "Head",
    "read_head",
    "read_body",
    "relay_body",
    "pipe",
    "json_response",
]

MAX_HEAD = 64 * 1024
"""Bytes a request or response head may have (the stream limit)."""
MAX_BODY = 256 * 1024
"""Bytes a request body may have: a create is a few kB (:data:`agent.jobs.policy.MAX_CREATE_BODY`)."""
_PIECE = 64 * 1024

_REQUEST_LINE = re.compile(rb"^(GET|HEAD|POST|PUT|DELETE) (/[\x21-\x7e]{0,8191}) HTTP/1\.1$")
_HEADER_LINE = re.compile(rb"^([!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}):[ ]*([\x21-\x7e](?:[\x20-\x7e]*[\x21-\x7e])?)?[ ]*$")
_AMBIGUOUS_ENDING = re.compile(rb"(?<!\r)\n|\r(?!\n)")
_SINGLE = ("content-length", "transfer-encoding", "host", "connection", "upgrade", "content-type")


class BadRequest(Exception):
    """A request the guard will not read: answered with ``status`` and the connection closed."""

    def __init__(self, cause: str, status: int = 400) -> None:
        self.cause = cause
        self.status = status
        super().__init__(cause)


@dataclass
class Request:
    """One request as the guard read it; nothing of it is sent upstream as it is."""

    method: str
    target: str
    headers: dict[str, str]
    """Lower-cased names, each at most once."""
    body: bytes = b""
    leftover: bytes = field(default=b"", repr=False)
    """Bytes that followed the request (an attach's stdin, once the connection is hijacked)."""

    @property
    def closes(self) -> bool:
        """Whether the client asked to close the connection after this request."""
        return "close" in self.headers.get("connection", "").lower()

    @property
    def upgrade(self) -> bool:
        """Whether the client asked to hijack the connection (``attach``)."""
        return (
            self.headers.get("upgrade", "").lower() == "tcp" and "upgrade" in self.headers.get("connection", "").lower()
        )


def screen_head(head: bytes) -> tuple[str, str, dict[str, str]]:
    """Method, target and headers of a request head (without its final CR LF CR LF), or BadRequest.

    Raises:
        BadRequest: anything two HTTP readers could read differently.
    """
    if _AMBIGUOUS_ENDING.search(head):
        raise BadRequest("a line ended by a bare LF or CR (only CR LF ends a line)")
    lines = head.split(b"\r\n")
    start = _REQUEST_LINE.fullmatch(lines[0])
    if not start:
        raise BadRequest(f"a request line that is not METHOD /target HTTP/1.1 ({lines[0][:60]!r})")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        match = _HEADER_LINE.fullmatch(line)
        if not match:
            raise BadRequest(f"a header line with folding, control or non-ASCII bytes ({line[:40]!r})")
        name = match.group(1).decode().lower()
        value = (match.group(2) or b"").decode()
        if name in headers and name in _SINGLE:
            raise BadRequest(f"the header {name} given twice")
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    if "expect" in headers:
        raise BadRequest("an Expect header (send the body with the request)")
    if "transfer-encoding" in headers and "content-length" in headers:
        raise BadRequest("both Content-Length and Transfer-Encoding")
    if headers.get("transfer-encoding", "chunked").lower() != "chunked":
        raise BadRequest(f"Transfer-Encoding {headers['transfer-encoding'][:20]!r} (only chunked)")
    if not re.fullmatch(r"[0-9]{1,10}", headers.get("content-length", "0")):
        raise BadRequest("a Content-Length that is not a number")
    return start.group(1).decode(), start.group(2).decode(), headers


class RequestReader:
    """Reads one client's requests strictly, each within its time budget.

    Args:
        reader: the client's stream.
        max_body: bytes a body may have.
    """

    def __init__(self, reader: asyncio.StreamReader, max_body: int = MAX_BODY) -> None:
        self.reader = reader
        self.max_body = max_body
        self.buffer = b""

    async def _more(self, deadline: float, what: str, status: int) -> bytes:
        remaining = deadline - asyncio.get_running_loop().time()
        try:
            piece = await asyncio.wait_for(self.reader.read(_PIECE), timeout=max(remaining, 0.001))
        except TimeoutError:
            raise BadRequest(f"{what} did not arrive in time", status) from None
        return piece

    async def next(self, idle: float, head_timeout: float, body_timeout: float) -> Request | None:
        """The next request; None when the client closed or stayed idle ``idle`` seconds between requests.

        Raises:
            BadRequest: a request the guard will not read, or one that came too slowly.
        """
        loop = asyncio.get_running_loop()
        if not self.buffer:
            try:
                self.buffer = await asyncio.wait_for(self.reader.read(_PIECE), timeout=idle)
            except TimeoutError:
                return None
            if not self.buffer:
                return None
        deadline = loop.time() + head_timeout
        while (end := self.buffer.find(b"\r\n\r\n")) < 0:
            if _AMBIGUOUS_ENDING.search(self.buffer[:-1]):
                raise BadRequest("a line ended by a bare LF or CR (only CR LF ends a line)")
            if len(self.buffer) > MAX_HEAD:
                raise BadRequest(f"a request head over {MAX_HEAD} bytes", 431)
            piece = await self._more(deadline, "the request head", 408)
            if not piece:
                raise BadRequest("the connection closed inside a request head")
            self.buffer += piece
        if end > MAX_HEAD:
            raise BadRequest(f"a request head over {MAX_HEAD} bytes", 431)
        method, target, headers = screen_head(self.buffer[:end])
        if int(headers.get("content-length", "0")) > self.max_body:
            raise BadRequest(f"a request body of {headers['content-length']} bytes (at most {self.max_body})", 413)
        connection = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        connection.receive_data(self.buffer)
        self.buffer = b""
        parts: list[bytes] = []
        size = 0
        seen_head = False
        deadline = loop.time() + body_timeout
        try:
            while True:
                event = connection.next_event()
                if event is h11.NEED_DATA:
                    piece = await self._more(deadline, "the request body", 408)
                    connection.receive_data(piece)
                elif isinstance(event, h11.Data):
                    size += len(event.data)
                    if size > self.max_body:
                        raise BadRequest(f"a request body over {self.max_body} bytes", 413)
                    parts.append(bytes(event.data))
                elif isinstance(event, h11.EndOfMessage):
                    break
                elif isinstance(event, h11.Request) and not seen_head:
                    seen_head = True  # the head screen_head read; h11 agrees it is one
                elif isinstance(event, h11.ConnectionClosed):
                    raise BadRequest("the connection closed inside a request body")
                else:  # PAUSED, or a second request head before this one ended
                    raise BadRequest(f"an unexpected {type(event).__name__} inside a request")
        except h11.RemoteProtocolError as e:
            raise BadRequest(f"not a well-formed HTTP/1.1 request ({e})") from None
        self.buffer = bytes(connection.trailing_data[0])
        return Request(method, target, headers, b"".join(parts))

    def take_leftover(self) -> bytes:
        """What the client sent after the last request (a hijacked stream's first bytes)."""
        data, self.buffer = self.buffer, b""
        return data


def upstream_head(method: str, target: str, body: bytes, *, upgrade: bool = False) -> bytes:
    """A request head the guard writes itself: its own target, Host and framing, nothing of the client's."""
    lines = [f"{method} {target} HTTP/1.1", "Host: docker", "User-Agent: codex-guard"]
    if body or method in ("POST", "PUT"):
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    if upgrade:
        lines += ["Connection: Upgrade", "Upgrade: tcp"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


class BodyTooLarge(Exception):
    """A request body above :data:`MAX_BODY`."""


@dataclass
class Head:
    """A request or status line and its headers, in order."""

    start: str
    headers: list[tuple[str, str]]

    def get(self, name: str) -> str | None:
        """The last value of a header, case-insensitively."""
        lowered = name.lower()
        found = [v for k, v in self.headers if k.lower() == lowered]
        return found[-1] if found else None

    @property
    def chunked(self) -> bool:
        """Whether the body is chunked."""
        return "chunked" in (self.get("Transfer-Encoding") or "").lower()

    @property
    def status(self) -> int:
        """The status code of a response head."""
        return int(self.start.split(" ", 2)[1])

    def closes(self) -> bool:
        """Whether the sender closes the connection after this message."""
        return (
            "close" in (self.get("Connection") or "").lower()
            or self.start.startswith("HTTP/1.0")
            or self.start.endswith("HTTP/1.0")
        )

    def encode(self, start: str | None = None, length: int | None = None) -> bytes:
        """The head as bytes; with ``length`` the body framing becomes that Content-Length."""
        headers = self.headers
        if length is not None:
            headers = [(k, v) for k, v in headers if k.lower() not in ("content-length", "transfer-encoding")]
            headers.append(("Content-Length", str(length)))
        lines = [start or self.start, *(f"{k}: {v}" for k, v in headers)]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def read_head(reader: asyncio.StreamReader) -> Head | None:
    """The next head, or None when the peer closed between messages.

    Raises:
        asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError: a broken or huge head.
    """
    try:
        data = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as e:
        if not e.partial.strip():
            return None
        raise
    lines = data[:-4].decode("latin-1").split("\r\n")
    headers = []
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon:
            raise ValueError(f"malformed header line {line[:40]!r}")
        headers.append((name.strip(), value.strip()))
    return Head(lines[0], headers)


async def _until_close(reader: asyncio.StreamReader, limit: int) -> bytes:
    parts: list[bytes] = []
    size = 0
    while piece := await reader.read(_PIECE):
        size += len(piece)
        if size > limit:
            raise BodyTooLarge(size)
        parts.append(piece)
    return b"".join(parts)


async def read_body(
    reader: asyncio.StreamReader, head: Head, limit: int = MAX_BODY, *, until_close: bool = False
) -> bytes:
    """A whole body (a request's, or a small response the guard rewrites).

    Raises:
        BodyTooLarge: more than ``limit`` bytes.
    """
    if head.chunked:
        parts: list[bytes] = []
        size_total = 0
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0].strip(), 16)
            if size == 0:
                while await reader.readuntil(b"\r\n") != b"\r\n":
                    pass
                return b"".join(parts)
            size_total += size
            if size_total > limit:
                raise BodyTooLarge(size_total)
            parts.append((await reader.readexactly(size + 2))[:-2])
    length = head.get("Content-Length")
    if length is None:
        return await _until_close(reader, limit) if until_close else b""
    if int(length) > limit:
        raise BodyTooLarge(int(length))
    return await reader.readexactly(int(length))


async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, size: int | None) -> None:
    """Copy ``size`` bytes (None: until EOF), flushing every piece."""
    remaining = size
    while remaining is None or remaining > 0:
        piece = await reader.read(_PIECE if remaining is None else min(_PIECE, remaining))
        if not piece:
            if remaining is None:
                return
            raise asyncio.IncompleteReadError(b"", remaining)
        writer.write(piece)
        await writer.drain()
        if remaining is not None:
            remaining -= len(piece)


async def relay_body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: Head, method: str) -> bool:
    """Relay a response body as it arrives; returns whether the connection may carry another.

    Chunked bodies are relayed chunk by chunk with their framing, so ``logs?follow=1`` and
    ``wait`` reach the client the moment the engine writes them.
    """
    status = head.status
    if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
        return not head.closes()
    if head.chunked:
        while True:
            line = await reader.readuntil(b"\r\n")
            writer.write(line)
            size = int(line.split(b";")[0].strip(), 16)
            if size == 0:
                while (trailer := await reader.readuntil(b"\r\n")) != b"\r\n":
                    writer.write(trailer)
                writer.write(b"\r\n")
                await writer.drain()
                return not head.closes()
            await _copy(reader, writer, size)
            writer.write(await reader.readexactly(2))
            await writer.drain()
    length = head.get("Content-Length")
    if length is not None:
        await _copy(reader, writer, int(length))
        return not head.closes()
    await _copy(reader, writer, None)
    return False


async def pipe(
    client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    engine: tuple[asyncio.StreamReader, asyncio.StreamWriter],
) -> None:
    """A hijacked connection: bytes both ways until the engine's side ends."""

    async def forward(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            await _copy(reader, writer, None)
            if writer.can_write_eof():
                writer.write_eof()  # the client closed stdin: tell the engine, keep reading output

    upstream = asyncio.ensure_future(forward(client[0], engine[1]))
    try:
        await forward(engine[0], client[1])
    finally:
        upstream.cancel()


def json_response(status: int, reason: str, payload: bytes | dict[str, object], keep_alive: bool = True) -> bytes:
    """A complete JSON response."""
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    if not keep_alive:
        headers.append(("Connection", "close"))
    return Head(f"HTTP/1.1 {status} {reason}", headers).encode() + body
