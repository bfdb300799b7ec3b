"""The Responses API stream (``POST /v1/responses``), scripted per request.

Codex reads ``text/event-stream`` events (``event: <type>`` / ``data: <json>``); a turn needs an
assistant ``response.output_item.done`` and a ``response.completed`` carrying the response id and
the token usage. A :class:`ResponseScript` decides what each request gets: by default a short
reply, or the next queued :class:`Behaviour` (a reply, a delay, a hang, an HTTP failure). Every
request's user text is kept so tests can see, for instance, that a resumed session sent the
earlier turn again.
"""

from __future__ import annotations

import json
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["Behaviour", "ModelCall", "ResponseScript", "sse_events", "texts_of"]

Kind = Literal["reply", "delay", "hang", "fail"]


@dataclass(frozen=True)
class Behaviour:
    """What one model request gets.

    Args:
        kind: ``reply`` (stream a reply), ``delay`` (wait ``seconds``, then reply), ``hang`` (send
            the headers and nothing more until the server stops) or ``fail`` (``status`` + body).
        text: the assistant's reply; the default echoes a counter.
        seconds: the delay.
        status: the HTTP status of a failure.
    """

    kind: Kind = "reply"
    text: str | None = None
    seconds: float = 0.0
    status: int = 500


@dataclass(frozen=True)
class ModelCall:
    """One request the stand-in answered: which family paid, and the user texts it carried."""

    number: int
    family: str | None
    texts: tuple[str, ...]
    model: str | None = None
    """The request's ``model``: what ``codex exec -m`` (or the login's config) chose."""
    reasoning_effort: str | None = None
    """The request's ``reasoning.effort``, when Codex sent one."""


def texts_of(body: dict[str, Any]) -> tuple[str, ...]:
    """Every ``input_text``/``output_text`` in a Responses request's ``input`` items, in order."""
    found: list[str] = []
    items = body.get("input")
    for item in items if isinstance(items, list) else ():
        content = item.get("content") if isinstance(item, dict) else None
        if isinstance(content, str):
            found.append(content)
        for part in content if isinstance(content, list) else ():
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                found.append(part["text"])
    return tuple(found)


def _event(kind: str, data: dict[str, Any]) -> bytes:
    return f"event: {kind}\ndata: {json.dumps({'type': kind, **data})}\n\n".encode()


def sse_events(number: int, text: str, input_tokens: int) -> Iterator[bytes]:
    """The events of one complete assistant turn."""
    response_id = f"resp_standin_{number}"
    output_tokens = max(1, len(text.split()))
    yield _event("response.created", {"response": {"id": response_id}})
    item = {
        "type": "message",
        "role": "assistant",
        "id": f"msg_standin_{number}",
        "content": [{"type": "output_text", "text": text}],
    }
    yield _event("response.output_item.done", {"item": item})
    usage = {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": input_tokens + output_tokens,
    }
    yield _event("response.completed", {"response": {"id": response_id, "usage": usage}})


@dataclass
class ResponseScript:
    """Queued behaviours for the next requests, then replies; records every call."""

    default: Behaviour = field(default_factory=Behaviour)
    _queue: deque[Behaviour] = field(default_factory=deque)
    _calls: list[ModelCall] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def push(self, *behaviours: Behaviour) -> None:
        """Queue behaviours for the next requests, in order."""
        with self._lock:
            self._queue.extend(behaviours)

    def clear(self) -> None:
        """Drop queued behaviours (calls stay recorded)."""
        with self._lock:
            self._queue.clear()

    def next(self, family: str | None, body: dict[str, Any]) -> tuple[ModelCall, Behaviour]:
        """Record a request and choose its behaviour."""
        with self._lock:
            reasoning = body.get("reasoning")
            effort = reasoning.get("effort") if isinstance(reasoning, dict) else None
            model = body.get("model")
            call = ModelCall(
                len(self._calls) + 1,
                family,
                texts_of(body),
                model if isinstance(model, str) else None,
                effort if isinstance(effort, str) else None,
            )
            self._calls.append(call)
            behaviour = self._queue.popleft() if self._queue else self.default
        return call, behaviour

    def calls(self, family: str | None = None) -> list[ModelCall]:
        """Recorded calls, optionally of one family."""
        with self._lock:
            return [c for c in self._calls if family is None or c.family == family]
