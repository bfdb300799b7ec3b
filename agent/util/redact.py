"""Keep secrets out of every line the agent writes.

The Codex CLI echoes part of an API key in ``codex login status`` (``sk-test-***bc123``), and
``auth.json`` holds JWTs and refresh tokens. Anything that might carry CLI output or file text goes
through :func:`scrub` before it reaches a log, an error or a report; the structlog chain applies
:func:`scrub_event` to every event as a last line of defence.
"""

from __future__ import annotations

import re
from collections.abc import MutableMapping
from typing import Any

__all__ = ["scrub", "scrub_event", "REDACTED"]

REDACTED = "[redacted]"

_PATTERNS = (
    re.compile(r"\bsk-[A-Za-z0-9_*.\-]+"),  # OpenAI API keys, masked or not
    re.compile(r"\beyJ[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+(?:\.[A-Za-z0-9_\-]*)?"),  # JWTs
    re.compile(r"\brt[-_][A-Za-z0-9_\-.]{8,}"),  # refresh-token-shaped strings
    # Long opaque tokens mixing cases and digits; pure hex (container and claim ids) is kept.
    re.compile(r"\b(?=[A-Za-z0-9_\-]*[g-zG-Z])(?=[A-Za-z0-9_\-]*\d)[A-Za-z0-9_\-]{40,}\b"),
)


def scrub(text: str) -> str:
    """``text`` with every secret-shaped substring replaced by ``[redacted]``."""
    for pattern in _PATTERNS:
        text = pattern.sub(REDACTED, text)
    return text


def _scrub_value(value: Any) -> Any:
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, dict):
        return {k: _scrub_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_scrub_value(v) for v in value]
    return value


def scrub_event(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: scrub every string in the event."""
    for key, value in list(event_dict.items()):
        event_dict[key] = _scrub_value(value)
    return event_dict
