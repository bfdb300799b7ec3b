"""Usage limits of ChatGPT logins, as the Responses endpoint reports them, scriptable per family.

The real service sends every model answer with the login's usage in headers, which the Codex CLI
writes into the session rollout (``event_msg`` ``token_count`` ``rate_limits``):
``x-codex-primary-used-percent``, ``-window-minutes`` and ``-reset-at`` (epoch seconds), the same
three for ``secondary``, and ``x-codex-credits-has-credits|unlimited|balance``. A login over its
limit gets HTTP 429 ``usage_limit_reached`` with ``resets_at`` (or, for some limits, no reset time
at all). :class:`UsageBook` plays this per token family: a used percent per window, a 429 with a
reset time until a chosen moment (after which the window has reset: 0 %), or a 429 without one.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, replace
from typing import Any

__all__ = ["FIVE_HOURS", "WEEK", "Window", "Usage", "UsageBook", "LIMIT_MESSAGE"]

FIVE_HOURS = 300
WEEK = 10080
LIMIT_MESSAGE = "The usage limit has been reached"


@dataclass(frozen=True)
class Window:
    """One usage window: percent used, length in minutes, when it resets (epoch seconds)."""

    used_percent: float
    window_minutes: int
    resets_at: int

    def headers(self, name: str) -> dict[str, str]:
        """The three headers of this window as ``primary`` or ``secondary``."""
        return {
            f"x-codex-{name}-used-percent": f"{self.used_percent:g}",
            f"x-codex-{name}-window-minutes": str(self.window_minutes),
            f"x-codex-{name}-reset-at": str(self.resets_at),
        }


@dataclass(frozen=True)
class Usage:
    """What one family's answers carry, and whether it is refused.

    Attributes:
        primary, secondary: the windows (None: the header set is left out, as when OpenAI
            removed the 5-hour window and the weekly one became ``primary``).
        limited_until: answer 429 ``error_type`` with ``resets_at`` until this epoch time; the
            limited window is reported at 100 % meanwhile, and reset (0 %) afterwards.
        limited_window: which window the limit is in (``primary`` or ``secondary``).
        no_reset: answer 429 ``error_type`` with no reset time, until cleared.
        error_type: the 429 body's ``error.type``.
        plan_type: the plan the 429 body names.
    """

    primary: Window | None
    secondary: Window | None
    limited_until: float | None = None
    limited_window: str = "primary"
    no_reset: bool = False
    error_type: str = "usage_limit_reached"
    plan_type: str = "plus"

    def now(self, at: float) -> Usage:
        """This usage as of ``at``: a limit whose reset time passed is over, its window at 0 %."""
        if self.limited_until is None or at < self.limited_until:
            return self
        window = getattr(self, self.limited_window)
        reset = replace(window, used_percent=0.0, resets_at=int(at + window.window_minutes * 60)) if window else None
        changes: dict[str, Any] = {self.limited_window: reset}
        return replace(self, limited_until=None, **changes)

    def refused(self) -> bool:
        """Whether a request is answered 429 now (call on :meth:`now`'s result)."""
        return self.no_reset or self.limited_until is not None

    def headers(self) -> dict[str, str]:
        """Every rate-limit header of an answer."""
        found: dict[str, str] = {}
        for name in ("primary", "secondary"):
            window = getattr(self, name)
            if window is not None:
                found.update(window.headers(name))
        found.update(
            {
                "x-codex-credits-has-credits": "false",
                "x-codex-credits-unlimited": "false",
                "x-codex-credits-balance": "0",
            }
        )
        return found

    def refusal(self) -> dict[str, Any]:
        """The 429 body."""
        error: dict[str, Any] = {"type": self.error_type, "message": LIMIT_MESSAGE, "plan_type": self.plan_type}
        if self.limited_until is not None and not self.no_reset:
            error["resets_at"] = int(self.limited_until)
            error["resets_in_seconds"] = max(0, int(self.limited_until - time.time()))
        return {"error": error}


def default_usage(at: float) -> Usage:
    """A login with headroom: 5-hour window primary, weekly secondary, both barely used."""
    return Usage(Window(1.0, FIVE_HOURS, int(at + FIVE_HOURS * 60)), Window(1.0, WEEK, int(at + WEEK * 60)))


class UsageBook:
    """Usage per token family; thread-safe. Families never scripted get :func:`default_usage`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._usage: dict[str, Usage] = {}
        self.refusals: dict[str, int] = {}
        """429 answers per family."""
        self.refused_at: dict[str, list[float]] = {}
        """When each 429 was answered, per family (epoch seconds; the benchmarks time from it)."""

    def get(self, family: str, at: float | None = None) -> Usage:
        """The family's usage as of ``at`` (now by default)."""
        at = time.time() if at is None else at
        with self._lock:
            usage = self._usage.get(family) or default_usage(at)
            current = usage.now(at)
            if current is not usage:
                self._usage[family] = current
            return current

    def set(self, family: str, usage: Usage) -> None:
        """Script the family's usage."""
        with self._lock:
            self._usage[family] = usage

    def used(
        self,
        family: str,
        primary: float | None = None,
        secondary: float | None = None,
        *,
        primary_minutes: int | None = FIVE_HOURS,
        secondary_minutes: int | None = WEEK,
    ) -> Usage:
        """Report ``primary``/``secondary`` percent used (a window of None minutes is left out)."""
        at = time.time()

        def window(percent: float | None, minutes: int | None) -> Window | None:
            return None if minutes is None else Window(percent or 0.0, minutes, int(at + minutes * 60))

        usage = Usage(window(primary, primary_minutes), window(secondary, secondary_minutes))
        self.set(family, usage)
        return usage

    def limit(
        self, family: str, until: float, *, window: str = "primary", error_type: str = "usage_limit_reached"
    ) -> Usage:
        """Answer 429 with ``resets_at=until`` until then; the window shows 100 % and that reset time."""
        current = self.get(family)
        chosen = getattr(current, window) or Window(0.0, FIVE_HOURS if window == "primary" else WEEK, int(until))
        changes: dict[str, Any] = {window: replace(chosen, used_percent=100.0, resets_at=int(until))}
        limited = replace(
            current, limited_until=until, limited_window=window, no_reset=False, error_type=error_type, **changes
        )
        self.set(family, limited)
        return limited

    def limit_without_reset(self, family: str, *, error_type: str = "usage_limit_reached") -> Usage:
        """Answer 429 with no reset time (no ``resets_at``) until :meth:`clear`."""
        limited = replace(self.get(family), no_reset=True, limited_until=None, error_type=error_type)
        self.set(family, limited)
        return limited

    def clear(self, family: str) -> None:
        """Back to the default usage."""
        with self._lock:
            self._usage.pop(family, None)

    def refuse(self, family: str) -> None:
        """Count a 429 answer."""
        with self._lock:
            self.refusals[family] = self.refusals.get(family, 0) + 1
            self.refused_at.setdefault(family, []).append(time.time())


def usage_from_json(data: dict[str, Any], current: Usage) -> Usage:
    """A control request's usage (``/_standin/families/<id>/usage``) over the family's ``current`` one.

    Keys: ``primary``/``secondary`` (``{used_percent, window_minutes, resets_at}`` or null),
    ``limited_until``, ``limited_window``, ``no_reset``, ``error_type``, ``plan_type``.

    Raises:
        TypeError, ValueError: a malformed request.
    """
    changes: dict[str, Any] = {}
    for name in ("primary", "secondary"):
        if name in data:
            raw = data[name]
            changes[name] = (
                None
                if raw is None
                else Window(float(raw["used_percent"]), int(raw["window_minutes"]), int(raw["resets_at"]))
            )
    for name, kind in (
        ("limited_until", float),
        ("limited_window", str),
        ("no_reset", bool),
        ("error_type", str),
        ("plan_type", str),
    ):
        if name in data:
            changes[name] = None if data[name] is None else kind(data[name])
    return replace(current, **changes)
