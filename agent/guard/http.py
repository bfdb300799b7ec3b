"""Just enough HTTP/1.1 for a Docker API proxy, on asyncio streams.

The guard reads a request's head and (small) body whole, because it must judge them; responses
are relayed as they arrive: chunk by chunk (``logs?follow=1``, ``wait``), by length, or until the
engine closes, and a hijacked connection (``attach``: ``101 UPGRADED``) becomes a two-way pipe.
Nothing is buffered beyond one read. The standard library's ``http.server`` is blocking and one
thread per connection; aiohttp would be a large dependency for this small a surface.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass

__all__ = [
    "MAX_HEAD",
    "MAX_BODY",
    "BodyTooLarge",
    "Head",
    "read_head",
    "read_body",
    "relay_body",
    "pipe",
    "json_response",
]

MAX_HEAD = 64 * 1024
"""Bytes a request or response head may have (the stream limit)."""
MAX_BODY = 4 * 1024 * 1024
"""Bytes a request body may have: a create is a few kB; a build context is refused anyway."""
_PIECE = 64 * 1024


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
        return "close" in (self.get("Connection") or "").lower() or self.start.startswith("HTTP/1.0") \
            or self.start.endswith("HTTP/1.0")

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


async def read_body(reader: asyncio.StreamReader, head: Head, limit: int = MAX_BODY, *, until_close: bool = False) -> bytes:
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
