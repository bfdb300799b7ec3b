"""Usage limits: a state of the login, not a job failure.

A ChatGPT plan allows so many Codex messages per 5-hour window and per week. Codex records the
login's usage in the volume: every model answer's ``x-codex-*`` headers become an ``event_msg`` of
type ``token_count`` with ``rate_limits`` in the session rollout
(``$CODEX_HOME/sessions/YYYY/MM/DD/rollout-*.jsonl``). This module

* reads the newest snapshot (:func:`read_headroom`): the newest rollout file only, its tail only,
  every field checked, so any bytes give a :class:`Headroom` or None, never a traceback;
* tells a usage limit from the output of a failed ``codex exec`` (:func:`classify`): the stream's
  error text (Codex 0.169 and 0.171 print "You’ve hit your usage limit…", typographic apostrophe), a 429 body
  type, or a snapshot of this run at 100 %;
* decides until when the login is limited (:func:`limit_for`): the limited window's reset time
  from the snapshot, else a bounded fallback cool-down (30 s for a rate limit, 1 h for a quota),
  never longer than :data:`MAX_WAIT_S`;
* keeps that in the volume (``.codex-agent-limited.json``, like the revocation marker), so that the
  login check fails with CODEX-E036 until the reset time and the gate then reopens by itself.

Windows are named by their length (``window_minutes``), never by ``primary``/``secondary``: OpenAI
has removed the 5-hour window before, and the weekly one was then ``primary``.
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import structlog

from agent.settings import defaults, variables
from agent.util.atomic import write_json_atomically
from agent.util.records import parse_record
from agent.util.smallfile import UnreadableFile, read_small_file

__all__ = [
    "LIMIT_FILE",
    "MAX_WAIT_S",
    "FALLBACK_S",
    "REOPEN_MARGIN_S",
    "LimitKind",
    "Window",
    "Headroom",
    "LimitHit",
    "UsageLimit",
    "window_name",
    "parse_snapshot",
    "newest_rollout",
    "read_headroom",
    "snapshot_in_tail",
    "classify",
    "limit_for",
    "record",
    "read",
    "parse_marker",
    "clear",
    "utc",
    "view",
    "DrainThresholds",
    "drain_thresholds",
]

log = structlog.get_logger(__name__)

LIMIT_FILE = ".codex-agent-limited.json"
SESSIONS = "sessions"
TAIL_BYTES = 256 * 1024
"""Bytes read from the end of the newest rollout: a few token_count lines, never a whole session."""
LINE_LIMIT = 64 * 1024
"""A longer line is not a token_count snapshot (they are ~1 KiB): skipped unparsed."""
SCAN_LIMIT = 4096
"""Most directory entries looked at per level of ``sessions/`` (a flooded directory is cut here)."""
DAYS_LOOKED_AT = 2
"""Newest day directories whose rollouts are compared by mtime (a session resumed from yesterday)."""
MAX_WAIT_S = 8 * 24 * 3600.0
"""Sanity bound: no reset time more than a week and a day away is believed (the weekly window)."""
REOPEN_MARGIN_S = 1.0
"""Seconds after the reset time before the gate reopens (clocks differ a little)."""
FALLBACK_S: dict[str, float] = {"rate": 30.0, "usage": 30.0, "quota": 3600.0}
"""Cool-down when no reset time is known, by kind (codex-lb's values); then the next phase re-checks."""
LIMIT_WINDOW_PERCENT = 100.0

LimitKind = Literal["usage", "rate", "quota"]


def utc(epoch: float | None) -> str:
    """``2026-12-01T19:36:00Z``, or ``unknown``."""
    if epoch is None:
        return "unknown"
    return datetime.fromtimestamp(epoch, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def window_name(minutes: int | None) -> str:
    """``5h`` or ``weekly`` by length (the 5-hour and weekly windows), else ``<n>min``; ``unknown``."""
    if minutes is None:
        return "unknown"
    if 240 <= minutes <= 360:
        return "5h"
    if 9000 <= minutes <= 11000:
        return "weekly"
    return f"{minutes}min"


def window_title(minutes: int | None) -> str:
    """Words for messages: ``5-hour``, ``weekly``, ``<n>-minute`` or ``unknown``."""
    name = window_name(minutes)
    return {"5h": "5-hour", "weekly": "weekly", "unknown": "unknown"}.get(name, f"{minutes}-minute")


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


@dataclass(frozen=True)
class Window:
    """One usage window of a snapshot."""

    used_percent: float
    window_minutes: int | None
    resets_at: float | None

    @property
    def name(self) -> str:
        """``5h``, ``weekly``, ... (by length)."""
        return window_name(self.window_minutes)

    @classmethod
    def parse(cls, data: Any, now: float) -> Window | None:
        """A checked window, or None: used percent in 0..1000, length 1 min..1 year, a believable reset."""
        if not isinstance(data, dict):
            return None
        used = _finite(data.get("used_percent"))
        minutes = data.get("window_minutes")
        reset = _finite(data.get("resets_at"))
        if used is None or not 0 <= used <= 1000:
            return None
        if minutes is not None and (
            isinstance(minutes, bool) or not isinstance(minutes, int) or not 0 < minutes <= 525_600
        ):
            return None
        if reset is not None and not 0 < reset <= now + MAX_WAIT_S:
            reset = None
        return cls(used, minutes, reset)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe view, with the window's name."""
        return {**asdict(self), "window": self.name}


@dataclass(frozen=True)
class Headroom:
    """The newest rate-limit snapshot of a login: its windows and when Codex recorded it."""

    windows: tuple[Window, ...]
    observed_at: float
    plan_type: str | None = None
    limit_id: str | None = None

    def window(self, name: str) -> Window | None:
        """The window named ``5h`` or ``weekly`` (by length), if reported."""
        return next((w for w in self.windows if w.name == name), None)

    def exhausted(self, now: float) -> list[Window]:
        """Windows at 100 % whose reset time is still ahead (or unknown)."""
        return [
            w
            for w in self.windows
            if w.used_percent >= LIMIT_WINDOW_PERCENT and (w.resets_at is None or w.resets_at > now)
        ]

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe view (numbers and names only)."""
        return {
            "windows": [w.to_dict() for w in self.windows],
            "observed_at": self.observed_at,
            "plan_type": self.plan_type,
            "limit_id": self.limit_id,
        }


def _timestamp(value: Any) -> float | None:
    if not isinstance(value, str) or len(value) > 64:
        return None
    try:
        stamp = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=UTC)
    return stamp.timestamp()


def parse_snapshot(line: bytes, fallback_time: float, now: float | None = None) -> Headroom | None:
    """One rollout line as a snapshot, or None (not a token_count with rate_limits, or malformed)."""
    if len(line) > LINE_LIMIT or b"rate_limits" not in line:
        return None
    now = time.time() if now is None else now
    try:
        record = json.loads(line)
    except (ValueError, RecursionError):
        return None
    if not isinstance(record, dict) or record.get("type") != "event_msg":
        return None
    payload = record.get("payload")
    if not isinstance(payload, dict) or payload.get("type") != "token_count":
        return None
    limits = payload.get("rate_limits")
    if not isinstance(limits, dict):
        return None
    windows = tuple(w for w in (Window.parse(limits.get(k), now) for k in ("primary", "secondary")) if w is not None)
    if not windows:
        return None
    plan, limit_id = limits.get("plan_type"), limits.get("limit_id")
    observed = _timestamp(record.get("timestamp"))
    return Headroom(
        windows,
        observed if observed is not None and observed <= now + 60 else fallback_time,
        plan if isinstance(plan, str) and len(plan) <= 64 else None,
        limit_id if isinstance(limit_id, str) and len(limit_id) <= 64 else None,
    )


def _newest_names(directory: Path, digits: bool) -> list[str]:
    """Entry names of ``directory`` (at most :data:`SCAN_LIMIT`), newest first by name."""
    names: list[str] = []
    try:
        with os.scandir(directory) as entries:
            for entry in entries:
                if len(names) >= SCAN_LIMIT:
                    break
                if digits and entry.name.isdigit() and entry.is_dir(follow_symlinks=False):
                    names.append(entry.name)
                elif not digits and entry.name.startswith("rollout-") and entry.name.endswith(".jsonl"):
                    names.append(entry.name)
    except OSError:
        return []
    return sorted(names, key=lambda n: (len(n), n) if digits else n, reverse=True)


def newest_rollout(codex_home: Path) -> Path | None:
    """The rollout file Codex wrote last: newest mtime in the newest day directories, or None."""
    days: list[Path] = []
    root = Path(codex_home) / SESSIONS
    for year in _newest_names(root, True):
        for month in _newest_names(root / year, True):
            for day in _newest_names(root / year / month, True):
                days.append(root / year / month / day)
                if len(days) >= DAYS_LOOKED_AT:
                    break
            if len(days) >= DAYS_LOOKED_AT:
                break
        if len(days) >= DAYS_LOOKED_AT:
            break
    best: tuple[float, Path] | None = None
    for folder in days:
        for name in _newest_names(folder, False)[:SCAN_LIMIT]:
            try:
                st = os.lstat(folder / name)
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode) and (best is None or st.st_mtime > best[0]):
                best = (st.st_mtime, folder / name)
    return best[1] if best else None


def _tail(path: Path) -> tuple[bytes, float] | None:
    """The last :data:`TAIL_BYTES` of a regular file (never following a symlink, never blocking)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None
        start = max(0, st.st_size - TAIL_BYTES)
        data = os.pread(fd, TAIL_BYTES, start)
        if start > 0:  # the first line is cut: drop it
            data = data.partition(b"\n")[2]
        return data, st.st_mtime
    except OSError:
        return None
    finally:
        os.close(fd)


def read_headroom(codex_home: Path, *, now: float | None = None) -> Headroom | None:
    """The newest rate-limit snapshot in the volume's newest rollout; None when there is none.

    Reads one file's tail; any content (binary, huge, truncated, nested, wrong types) gives a
    snapshot whose every number was checked, or None.
    """
    path = newest_rollout(codex_home)
    if path is None:
        return None
    tail = _tail(path)
    if tail is None:
        return None
    return snapshot_in_tail(*tail, now=now)


def snapshot_in_tail(data: bytes, modified: float, *, cut: bool = False, now: float | None = None) -> Headroom | None:
    """The newest snapshot in a rollout's tail (read here, or by ``codex-agent volumes``' container).

    Args:
        data: at most :data:`TAIL_BYTES` of the file's end (more is cut to that).
        modified: the file's mtime, the snapshot's time when its line has none.
        cut: the tail does not start at the file's start: its first line is partial and dropped.
    """
    if len(data) > TAIL_BYTES:
        data, cut = data[-TAIL_BYTES:], True
    if cut:
        data = data.partition(b"\n")[2]
    for line in reversed(data.split(b"\n")):
        snapshot = parse_snapshot(line.strip(), modified, now)
        if snapshot is not None:
            return snapshot
    return None


# -- a failed run: was it the limit? ---------------------------------------------------------

_PHRASES: tuple[tuple[str, LimitKind, str], ...] = (
    ("you’ve hit your usage limit", "usage", "usage_limit_reached"),
    ("you've hit your usage limit", "usage", "usage_limit_reached"),
    ("usage_limit_reached", "usage", "usage_limit_reached"),
    ("usage_not_included", "quota", "usage_not_included"),
    ("to use codex with your chatgpt plan, upgrade", "quota", "usage_not_included"),
    ("insufficient_quota", "quota", "insufficient_quota"),
    ("quota_exceeded", "quota", "quota_exceeded"),
    ("quota exceeded", "quota", "insufficient_quota"),
    ("rate_limit_exceeded", "rate", "rate_limit_exceeded"),
    ("last status: 429", "rate", "rate_limit_exceeded"),
)
"""What ``codex exec`` (0.169, 0.171) prints for each 429 (seen against the stand-in), and the body types."""

_RESETS_AT = re.compile(r'"resets_at"\s*:\s*(\d{1,12})')
_RESETS_IN = re.compile(r'"resets_in_seconds"\s*:\s*(\d{1,9})')


@dataclass(frozen=True)
class LimitHit:
    """A failed run met a limit: which kind, the 429 type, and a reset time when the output gave one."""

    kind: LimitKind
    error_type: str
    resets_at: float | None = None


def classify(
    failure: str | None,
    other_lines: str = "",
    snapshot: Headroom | None = None,
    *,
    started: float | None = None,
    now: float | None = None,
) -> LimitHit | None:
    """Whether a failed run met a usage or rate limit.

    Args:
        failure: the stream's error text (``error`` / ``turn.failed``), never the model's replies.
        other_lines: the non-JSON lines of the job's output (stderr), where a 429 body may show.
        snapshot: the volume's newest snapshot, read after the run; one recorded since ``started``
            with a window at 100 % is a usage limit even when no text says so.
    """
    now = time.time() if now is None else now
    text = f"{failure or ''}\n{other_lines}"
    lowered = text.lower()
    hit = next((LimitHit(kind, kind_type) for phrase, kind, kind_type in _PHRASES if phrase in lowered), None)
    if hit is None and snapshot is not None and (started is None or snapshot.observed_at >= started - 1):
        if snapshot.exhausted(now):
            hit = LimitHit("usage", "usage_limit_reached")
    if hit is None:
        return None
    reset: float | None = None
    if (match := _RESETS_AT.search(text)) is not None:
        reset = float(match.group(1))
    elif (match := _RESETS_IN.search(text)) is not None:
        reset = now + float(match.group(1))
    return LimitHit(hit.kind, hit.error_type, reset)


@dataclass(frozen=True)
class UsageLimit:
    """A login limited until ``resets_at``: kind, type, window, whether the time was known.

    Kept in the volume (:data:`LIMIT_FILE`); ``window_minutes`` None when no window was named.
    """

    kind: str
    error_type: str
    resets_at: float
    reset_known: bool
    window_minutes: int | None
    detected_at: float
    run_id: str | None = None
    task_id: str | None = None
    worker: str | None = None

    @property
    def reopen_at(self) -> float:
        """When the gate may open again: the reset time and a small margin."""
        return self.resets_at + REOPEN_MARGIN_S

    @property
    def window(self) -> str:
        """The window's words (``5-hour``, ``weekly``) or what is known of it."""
        if self.window_minutes is not None:
            return window_title(self.window_minutes)
        return "quota" if self.kind == "quota" else "unknown"

    def facts(self) -> dict[str, Any]:
        """The facts of CODEX-E036."""
        reset = utc(self.resets_at)
        return {
            "window": self.window,
            "resets_at": reset
            if self.reset_known
            else f"{reset} (no reset time given: a {FALLBACK_S.get(self.kind, 30.0):.0f} s cool-down, then a re-check)",
            "limit": self.error_type,
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe view."""
        return asdict(self)


def limit_for(
    hit: LimitHit,
    snapshot: Headroom | None,
    *,
    now: float | None = None,
    run_id: str | None = None,
    task_id: str | None = None,
    worker: str | None = None,
) -> UsageLimit:
    """Until when the login is limited: the exhausted window's reset, the output's, or a fallback.

    Every reset time is bounded: in the past or more than :data:`MAX_WAIT_S` away is not believed.
    """
    now = time.time() if now is None else now

    def believable(reset: float | None) -> bool:
        return reset is not None and now < reset <= now + MAX_WAIT_S

    exhausted = snapshot.exhausted(now) if snapshot is not None else []
    dated = [w for w in exhausted if believable(w.resets_at)]
    if dated:
        latest = max(dated, key=lambda w: w.resets_at or 0.0)
        assert latest.resets_at is not None
        return UsageLimit(
            hit.kind, hit.error_type, latest.resets_at, True, latest.window_minutes, now, run_id, task_id, worker
        )
    if believable(hit.resets_at):
        assert hit.resets_at is not None
        minutes = exhausted[0].window_minutes if exhausted else None
        return UsageLimit(hit.kind, hit.error_type, hit.resets_at, True, minutes, now, run_id, task_id, worker)
    minutes = exhausted[0].window_minutes if exhausted else None
    return UsageLimit(
        hit.kind, hit.error_type, now + FALLBACK_S.get(hit.kind, 30.0), False, minutes, now, run_id, task_id, worker
    )


# -- the marker in the volume ----------------------------------------------------------------

_MARKER_FIELDS = {
    "kind": (str,),
    "error_type": (str,),
    "resets_at": (int, float),
    "reset_known": (bool,),
    "window_minutes": (int, type(None)),
    "detected_at": (int, float),
    "run_id": (str, type(None)),
    "task_id": (str, type(None)),
    "worker": (str, type(None)),
}
MARKER_LIMIT = 4096


def record(codex_home: Path, limit: UsageLimit) -> None:
    """Write the marker atomically into the volume."""
    write_json_atomically(Path(codex_home) / LIMIT_FILE, limit.to_dict())


def read(codex_home: Path, *, now: float | None = None) -> UsageLimit | None:
    """The marker in ``codex_home``, or None when there is none.

    Any other content is a limit too, but a short one: the rate fallback from the file's mtime, so
    a damaged marker never keeps a gate closed for long and never opens it at once. Every reset
    time is bounded by :data:`MAX_WAIT_S` after detection.
    """
    now = time.time() if now is None else now
    path = Path(codex_home) / LIMIT_FILE
    try:
        found = read_small_file(path, MARKER_LIMIT)
    except UnreadableFile as e:
        return _damaged(e.modified if e.modified is not None else now)
    if found is None:
        return None
    return parse_marker(*found, now=now)


def parse_marker(raw: bytes, modified: float, *, now: float | None = None) -> UsageLimit:
    """A marker's content as a limit (any bytes: a damaged one is the short fallback, see :func:`read`)."""
    now = time.time() if now is None else now
    try:
        fields = parse_record(raw, _MARKER_FIELDS)
    except ValueError:
        return _damaged(modified)
    if fields["kind"] not in FALLBACK_S or len(fields["error_type"]) > 64:
        return _damaged(modified)
    detected = min(float(fields["detected_at"]), now)
    fields["resets_at"] = min(float(fields["resets_at"]), detected + MAX_WAIT_S)
    fields["detected_at"] = detected
    return UsageLimit(**fields)


def _damaged(modified: float) -> UsageLimit:
    return UsageLimit("rate", "unreadable limit marker", modified + FALLBACK_S["rate"], False, None, modified)


def clear(codex_home: Path) -> None:
    """Remove the marker (the reset time passed); a marker already gone is fine."""
    try:
        (Path(codex_home) / LIMIT_FILE).unlink()
    except FileNotFoundError:
        return
    except OSError as e:
        log.warning("codex.usage.marker_stuck", codex_home=str(codex_home), error=str(e))
        return
    log.info("codex.usage.reset", codex_home=str(codex_home))


def view(headroom: Headroom | None, limit: UsageLimit | None, *, now: float | None = None) -> dict[str, Any]:
    """What ``status``, the fleet board and the metrics show of one login: used percent and reset
    time per window (by length), and the standing limit, if any (numbers and names only)."""
    now = time.time() if now is None else now
    active = limit if limit is not None and now < limit.reopen_at else None
    found: dict[str, Any] = {
        "limited": active is not None,
        "limit": {**active.to_dict(), "window": active.window, "resets_at_utc": utc(active.resets_at)}
        if active
        else None,
        "headroom": headroom.to_dict() if headroom is not None else None,
    }
    for name in ("5h", "weekly"):
        window = headroom.window(name) if headroom is not None else None
        found[f"{name}_used_percent"] = window.used_percent if window is not None else None
        found[f"{name}_resets_at"] = window.resets_at if window is not None else None
    return found


# -- drain before the wall -------------------------------------------------------------------

DRAIN_5H_PERCENT = defaults.DRAIN_5H_PERCENT
DRAIN_WEEKLY_PERCENT = defaults.DRAIN_WEEKLY_PERCENT


@dataclass(frozen=True)
class DrainThresholds:
    """Percent of each window at which a shard stops taking new runs (finishing the ones it holds)."""

    five_hour: float = DRAIN_5H_PERCENT
    weekly: float = DRAIN_WEEKLY_PERCENT

    def until(self, headroom: Headroom | None, now: float | None = None) -> float | None:
        """Until when to drain: the latest reset of a window at or above its threshold; None: not.

        A window without a reset time never drains (nothing would say when to resume).
        """
        if headroom is None:
            return None
        now = time.time() if now is None else now
        limits = {"5h": self.five_hour, "weekly": self.weekly}
        resets = [
            w.resets_at
            for w in headroom.windows
            if w.name in limits and w.used_percent >= limits[w.name] and w.resets_at is not None and w.resets_at > now
        ]
        return max(resets) if resets else None


def drain_thresholds(environ: Any = None) -> DrainThresholds:
    """``CODEX_DRAIN_5H_PERCENT`` and ``CODEX_DRAIN_WEEKLY_PERCENT`` (100 turns draining off for a window).

    Raises:
        ConfigError: CODEX-E001 naming the variable and what is accepted.
    """
    env = os.environ if environ is None else environ
    return DrainThresholds(
        variables.read(env, "CODEX_DRAIN_5H_PERCENT"), variables.read(env, "CODEX_DRAIN_WEEKLY_PERCENT")
    )
