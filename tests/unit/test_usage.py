"""agent.login.usage: the usage-limit classifier, the bounded snapshot reader (hostile files too), the
limit's reset time and its marker, and the gate's side of it (check, pre-flight, watcher)."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from agent.errors import AgentError, LoginError, UsageLimitError
from agent.login import usage
from agent.login.usage import Headroom, LimitHit, Window
from agent.settings.config import load
from agent.volume.watch import VolumeWatcher
from agent.worker.checks import Checker
from agent.worker.preflight import Preflight
from testkit.workers import wait_until

NOW = 1_796_160_000.0
LIMITED_TEXT = (
    "You’ve hit your usage limit. Upgrade to Pro (https://chatgpt.com/explore/pro), visit "
    "https://chatgpt.com/settings/usage to purchase more credits or try again at 9:14 PM."
)


def token_count(primary: Any, secondary: Any = None, *, stamp: str = "2026-12-01T21:12:05.838Z") -> bytes:
    """A rollout line as Codex 0.169 writes it (seen against the stand-in)."""
    limits = {
        "limit_id": "codex",
        "limit_name": None,
        "primary": primary,
        "secondary": secondary,
        "credits": {"has_credits": False, "unlimited": False, "balance": "0"},
        "plan_type": None,
    }
    line = {
        "timestamp": stamp,
        "ordinal": 9,
        "type": "event_msg",
        "payload": {"type": "token_count", "info": None, "rate_limits": limits},
    }
    return json.dumps(line).encode()


def window(percent: float, minutes: int, resets_at: float) -> dict[str, Any]:
    return {"used_percent": percent, "window_minutes": minutes, "resets_at": resets_at}


def rollout(
    home: Path, content: bytes, day: str = "2026/12/01", name: str = "rollout-2026-12-01T21-12-05-x.jsonl"
) -> Path:
    folder = home / "sessions" / day
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(content)
    return path


class TestClassify:
    @pytest.mark.parametrize(
        ("failure", "kind", "error_type"),
        [
            (LIMITED_TEXT, "usage", "usage_limit_reached"),
            (LIMITED_TEXT.replace("’", "'"), "usage", "usage_limit_reached"),
            ("You’ve hit your usage limit. ... or try again later.", "usage", "usage_limit_reached"),
            ("Quota exceeded. Check your plan and billing details.", "quota", "insufficient_quota"),
            (
                "To use Codex with your ChatGPT plan, upgrade to Plus: https://chatgpt.com/explore/plus.",
                "quota",
                "usage_not_included",
            ),
            ("exceeded retry limit, last status: 429 Too Many Requests", "rate", "rate_limit_exceeded"),
            ('unexpected status 429: {"error": {"type": "quota_exceeded"}}', "quota", "quota_exceeded"),
            ('{"error":{"type":"usage_limit_reached","resets_at":1796163968}}', "usage", "usage_limit_reached"),
        ],
        ids=[
            "typographic",
            "ascii",
            "no-reset",
            "insufficient_quota",
            "usage_not_included",
            "rate",
            "body-quota",
            "body-usage",
        ],
    )
    def test_a_limit_is_told_by_its_text(self, failure: str, kind: str, error_type: str) -> None:
        hit = usage.classify(failure, now=NOW)
        assert hit is not None and (hit.kind, hit.error_type) == (kind, error_type)

    @pytest.mark.parametrize(
        "failure",
        [
            None,
            "",
            "exceeded retry limit, last status: 500 Internal Server Error",
            "stream disconnected",
            "your refresh token was already used",
        ],
    )
    def test_anything_else_is_not_a_limit(self, failure: str | None) -> None:
        assert usage.classify(failure, now=NOW) is None

    def test_a_429_body_in_stderr_gives_the_reset_time(self) -> None:
        hit = usage.classify(None, 'body: {"error": {"type": "usage_limit_reached", "resets_at": 1796163968}}', now=NOW)
        assert hit == LimitHit("usage", "usage_limit_reached", 1796163968.0)
        later = usage.classify(None, '{"type": "usage_limit_reached", "resets_in_seconds": 90}', now=NOW)
        assert later is not None and later.resets_at == NOW + 90

    def test_a_snapshot_of_this_run_at_100_percent_is_a_limit_without_any_text(self) -> None:
        snap = Headroom((Window(100.0, 300, NOW + 60),), observed_at=NOW - 0.5)
        assert usage.classify("something odd", snapshot=snap, started=NOW - 5, now=NOW) == LimitHit(
            "usage", "usage_limit_reached"
        )
        assert usage.classify("something odd", snapshot=snap, started=NOW + 30, now=NOW) is None  # an older run's
        spent = Headroom((Window(100.0, 300, NOW - 60),), observed_at=NOW)
        assert usage.classify("something odd", snapshot=spent, now=NOW) is None  # already reset


class TestLimitFor:
    def test_the_exhausted_window_gives_the_reset_and_is_named_by_length_not_position(self) -> None:
        weekly_primary = Headroom((Window(100.0, 10080, NOW + 3600), Window(20.0, 300, NOW + 60)), NOW)
        limit = usage.limit_for(LimitHit("usage", "usage_limit_reached"), weekly_primary, now=NOW)
        assert (limit.resets_at, limit.reset_known, limit.window) == (NOW + 3600, True, "weekly")
        five_hour = Headroom((Window(100.0, 300, NOW + 90), Window(40.0, 10080, NOW + 9000)), NOW)
        limit = usage.limit_for(LimitHit("usage", "usage_limit_reached"), five_hour, now=NOW)
        assert (limit.resets_at, limit.window) == (NOW + 90, "5-hour")
        assert limit.facts()["resets_at"] == usage.utc(NOW + 90) and limit.reopen_at == NOW + 90 + usage.REOPEN_MARGIN_S

    def test_both_windows_exhausted_wait_for_the_later_reset(self) -> None:
        both = Headroom((Window(100.0, 300, NOW + 90), Window(100.0, 10080, NOW + 9000)), NOW)
        assert usage.limit_for(LimitHit("usage", "x"), both, now=NOW).resets_at == NOW + 9000

    @pytest.mark.parametrize(
        ("hit", "snapshot", "expected"),
        [
            (LimitHit("rate", "rate_limit_exceeded"), None, 30.0),
            (LimitHit("usage", "usage_limit_reached"), None, 30.0),
            (LimitHit("quota", "insufficient_quota"), None, 3600.0),
            (LimitHit("usage", "usage_limit_reached", NOW + 10 * 24 * 3600), None, 30.0),  # absurd: not believed
            (LimitHit("usage", "usage_limit_reached", NOW - 100), None, 30.0),  # in the past
            (LimitHit("usage", "usage_limit_reached"), Headroom((Window(100.0, 300, None),), NOW), 30.0),
            (LimitHit("usage", "usage_limit_reached", NOW + 120), None, 120.0),
        ],
        ids=["rate", "usage", "quota", "absurd", "past", "window-without-reset", "body-reset"],
    )
    def test_unknown_or_absurd_reset_times_give_a_bounded_cool_down(
        self, hit: LimitHit, snapshot: Headroom | None, expected: float
    ) -> None:
        limit = usage.limit_for(hit, snapshot, now=NOW)
        assert limit.resets_at == NOW + expected
        assert limit.reset_known is (expected == 120.0)


class TestSnapshot:
    def test_the_newest_token_count_of_the_newest_rollout_is_read(self, tmp_path: Path) -> None:
        old = rollout(
            tmp_path, token_count(window(10, 300, NOW + 100)) + b"\n", day="2026/11/30", name="rollout-a.jsonl"
        )
        os.utime(old, (NOW - 10**6, NOW - 10**6))
        lines = [
            token_count(window(30, 300, NOW + 100)),
            token_count(window(42.5, 300, NOW + 100), window(91, 10080, NOW + 900)),
            b'{"type":"event_msg","payload":{"type":"token_count","rate_limits":null}}',
        ]
        rollout(tmp_path, b"\n".join(lines) + b"\n")
        snap = usage.read_headroom(tmp_path, now=NOW)
        assert snap is not None
        assert (snap.window("5h"), snap.window("weekly")) == (
            Window(42.5, 300, NOW + 100),
            Window(91.0, 10080, NOW + 900),
        )
        assert snap.limit_id == "codex"
        view = usage.view(snap, None, now=NOW)
        assert (view["5h_used_percent"], view["weekly_used_percent"], view["limited"]) == (42.5, 91.0, False)

    def test_a_session_resumed_in_yesterdays_folder_is_newest_by_mtime(self, tmp_path: Path) -> None:
        rollout(tmp_path, token_count(window(10, 300, NOW + 100)) + b"\n", day="2026/12/01", name="rollout-new.jsonl")
        resumed = rollout(
            tmp_path, token_count(window(77, 300, NOW + 100)) + b"\n", day="2026/11/30", name="rollout-old.jsonl"
        )
        os.utime(resumed, (time.time() + 5, time.time() + 5))
        snap = usage.read_headroom(tmp_path, now=NOW)
        assert snap is not None and snap.windows[0].used_percent == 77

    @pytest.mark.parametrize(
        "content",
        [
            b"",
            bytes(range(256)) * 64,
            b"\xff\xfe" + token_count(window(50, 300, NOW)),
            token_count(window(50, 300, NOW))[:-7],
            b'{"type":"event_msg","payload":{"type":"token_count","rate_limits":'
            + b"[" * 100_000
            + b"]" * 100_000
            + b"}}",
            b'{"type":"event_msg","payload":{"type":"token_count","rate_limits":{"primary":'
            + b'{"a":' * 5000
            + b"1"
            + b"}" * 5000
            + b"}}}",
            token_count(window("50", 300, NOW)),
            token_count(window(float("nan"), 300, NOW)),
            token_count(window(1e308 * 10, 300, NOW)),
            token_count(window(-5, 300, NOW)),
            token_count(window(50, True, NOW)),
            token_count(window(50, 10**12, NOW)),
            token_count({"used_percent": 50}, "text"),
            b'{"type":"event_msg","payload":{"type":"token_count","rate_limits":"nope"}}',
            b'[1, 2, 3]\nnull\n"rate_limits"\n',
        ],
        ids=[
            "empty",
            "binary",
            "bad-utf8",
            "truncated",
            "deep-list",
            "deep-object",
            "percent-text",
            "nan",
            "inf",
            "negative",
            "bool-minutes",
            "huge-minutes",
            "wrong-shapes",
            "limits-text",
            "not-objects",
        ],
    )
    def test_hostile_content_gives_no_snapshot_and_no_traceback(self, tmp_path: Path, content: bytes) -> None:
        rollout(tmp_path, content)
        snap = usage.read_headroom(tmp_path, now=NOW)
        if snap is not None:  # only a window with a missing optional field may survive, never a wrong number
            assert all(0 <= w.used_percent <= 1000 for w in snap.windows)
            assert snap.windows == (Window(50.0, None, None),)

    def test_a_huge_file_is_read_by_its_tail_only(self, tmp_path: Path) -> None:
        path = rollout(tmp_path, b"")
        with path.open("wb") as handle:
            handle.write(token_count(window(99, 300, NOW + 10)) + b"\n")
            handle.truncate(64 * 1024 * 1024)  # 64 MiB of zeros after it: sparse, cheap to make
            handle.seek(0, os.SEEK_END)
            handle.write(b"\n" + token_count(window(12, 300, NOW + 10)) + b"\n")
        started = time.perf_counter()
        snap = usage.read_headroom(tmp_path, now=NOW)
        assert snap is not None and snap.windows[0].used_percent == 12
        assert time.perf_counter() - started < 5  # a sanity bound, not a benchmark: never a 64 MiB read

    @pytest.mark.parametrize("kind", ["fifo", "directory", "symlink"])
    def test_a_rollout_that_is_no_regular_file_is_skipped(self, tmp_path: Path, kind: str) -> None:
        folder = tmp_path / "sessions/2026/12/01"
        folder.mkdir(parents=True)
        path = folder / "rollout-z.jsonl"
        if kind == "fifo":
            os.mkfifo(path)
        elif kind == "directory":
            path.mkdir()
        else:
            target = tmp_path / "elsewhere.jsonl"
            target.write_bytes(token_count(window(50, 300, NOW)))
            path.symlink_to(target)
        assert usage.read_headroom(tmp_path, now=NOW) is None

    def test_no_sessions_and_junk_folders_give_none(self, tmp_path: Path) -> None:
        assert usage.read_headroom(tmp_path) is None
        (tmp_path / "sessions/not-a-year/x").mkdir(parents=True)
        (tmp_path / "sessions/2026").mkdir()
        (tmp_path / "sessions/2026/12").write_text("a file where a folder belongs")
        assert usage.read_headroom(tmp_path) is None


class TestMarker:
    def test_a_recorded_limit_reads_back_and_is_bounded(self, tmp_path: Path) -> None:
        limit = usage.limit_for(
            LimitHit("usage", "usage_limit_reached"), Headroom((Window(100, 300, NOW + 90),), NOW), now=NOW
        )
        usage.record(tmp_path, limit)
        assert usage.read(tmp_path, now=NOW) == limit
        absurd = {**limit.to_dict(), "resets_at": NOW + 10**9}
        (tmp_path / usage.LIMIT_FILE).write_text(json.dumps(absurd))
        read = usage.read(tmp_path, now=NOW)
        assert read is not None and read.resets_at == NOW + usage.MAX_WAIT_S

    @pytest.mark.parametrize(
        "content",
        [
            b"",
            b"\x00\xff",
            b"[]",
            b'{"kind": "usage"}',
            b'{"kind": "forever", "error_type": "x", "resets_at": 1, '
            b'"reset_known": true, "window_minutes": null, "detected_at": 1, "run_id": null, "task_id": null, "worker": null}',
            b"{" * 5000,
            b"x" * 10_000,
        ],
        ids=["empty", "binary", "list", "partial", "unknown-kind", "deep", "huge"],
    )
    def test_a_damaged_marker_is_a_short_limit_from_its_mtime(self, tmp_path: Path, content: bytes) -> None:
        path = tmp_path / usage.LIMIT_FILE
        path.write_bytes(content)
        os.utime(path, (NOW, NOW))
        read = usage.read(tmp_path, now=NOW + 1)
        assert read is not None and read.resets_at == NOW + usage.FALLBACK_S["rate"] and not read.reset_known


def _config(home: Path, **env: str) -> Any:
    return load({"HOME": str(home.parent), "CODEX_SHARD_INDEX": "2", "CODEX_VOLUME_NAME": "codex_auth_2", **env})


def _home(tmp_path: Path) -> Path:
    home = tmp_path / ".codex"
    home.mkdir(mode=0o700)
    return home


class TestGateSide:
    def test_e036_is_a_login_error_naming_shard_volume_window_reset_and_what_to_do(self, tmp_path: Path) -> None:
        limit = usage.limit_for(
            LimitHit("usage", "usage_limit_reached"), Headroom((Window(100, 10080, NOW + 90),), NOW), now=NOW
        )
        AgentError.strict_fields = True
        try:
            error = UsageLimitError(shard=2, volume="codex_auth_2", **limit.facts())
        finally:
            AgentError.strict_fields = False
        assert isinstance(error, LoginError) and error.code == "CODEX-E036"
        assert "shard 2" in error.message and "codex_auth_2" in error.message and "weekly" in error.message
        assert usage.utc(NOW + 90) in error.message and "reopens by itself" in error.remediation
        assert "credits" in error.remediation and "add a shard" in error.remediation

    def test_the_login_check_and_preflight_refuse_until_the_reset_then_the_marker_goes(self, tmp_path: Path) -> None:
        home = _home(tmp_path)
        config = _config(home)
        now = time.time()
        usage.record(home, usage.UsageLimit("usage", "usage_limit_reached", now + 60, True, 300, now))
        with pytest.raises(UsageLimitError, match="5-hour"):
            Checker(config).check_not_limited()
        with pytest.raises(UsageLimitError):
            Preflight(config, lambda c, f: None).check_limit()  # type: ignore[arg-type, return-value]
        usage.record(home, usage.UsageLimit("usage", "usage_limit_reached", now - 5, True, 300, now - 100))
        Checker(config).check_not_limited()
        Preflight(config, lambda c, f: None).check_limit()  # type: ignore[arg-type, return-value]
        assert not (home / usage.LIMIT_FILE).exists()

    def test_the_watcher_rechecks_at_the_due_time_not_a_period_later(self, tmp_path: Path) -> None:
        home = _home(tmp_path)
        calls: list[float] = []
        due = [time.time() + 1.0]
        lock = threading.Lock()

        def recheck() -> None:
            with lock:
                calls.append(time.time())

        config = _config(home, AGENT_RECHECK_INTERVAL="300")
        watcher = VolumeWatcher(config, recheck, lambda: False, due=lambda: due[0])
        watcher.start()
        try:
            wait_until(lambda: len(calls) >= 1, timeout=30, what="the re-check at the due time")
            time.sleep(1.0)  # a due time already checked does not wake the watcher again (no busy loop)
            assert len(calls) == 1 and calls[0] >= due[0]
        finally:
            watcher.stop()


class TestGauges:
    def test_headroom_and_limit_become_gauges_per_volume_and_window(self) -> None:
        from agent.telemetry.metrics import exposition, usage_families

        snap = Headroom((Window(42.5, 300, NOW + 100), Window(91.0, 10080, NOW + 900)), NOW)
        limit = usage.UsageLimit("usage", "usage_limit_reached", NOW + 100, True, 300, NOW)
        text = exposition(usage_families([("codex_auth_2", "2", usage.view(snap, limit, now=NOW))]))
        assert 'codex_usage_used_percent{shard="2",volume="codex_auth_2",window="5h"} 42.5' in text
        assert 'codex_usage_used_percent{shard="2",volume="codex_auth_2",window="weekly"} 91.0' in text
        assert 'codex_usage_limited{shard="2",volume="codex_auth_2"} 1.0' in text
        assert (
            'codex_usage_resets_at_timestamp_seconds{shard="2",volume="codex_auth_2",window="5h"} 1.7961601e+09' in text
        )
        idle = exposition(usage_families([("codex_auth_0", "0", usage.view(None, None, now=NOW))]))
        assert (
            'codex_usage_limited{shard="0",volume="codex_auth_0"} 0.0' in idle
            and "codex_usage_used_percent{" not in idle
        )


class TestDrainThresholds:
    @pytest.mark.parametrize(
        ("windows", "until"),
        [
            ((Window(90.0, 300, NOW + 100), Window(10.0, 10080, NOW + 900)), NOW + 100),
            ((Window(84.9, 300, NOW + 100), Window(94.9, 10080, NOW + 900)), None),
            ((Window(10.0, 300, NOW + 100), Window(95.0, 10080, NOW + 900)), NOW + 900),
            ((Window(99.0, 300, NOW + 100), Window(99.0, 10080, NOW + 900)), NOW + 900),
            ((Window(99.0, 10080, NOW + 900),), NOW + 900),  # the weekly window alone, as primary
            ((Window(90.0, 300, NOW - 1),), None),  # already reset
            ((Window(90.0, 300, None),), None),  # no reset time: nothing would say when to resume
        ],
        ids=["5h", "below", "weekly", "both-latest", "weekly-primary", "past", "no-reset"],
    )
    def test_a_window_at_its_threshold_drains_until_its_reset(
        self, windows: tuple[Window, ...], until: float | None
    ) -> None:
        assert usage.DrainThresholds().until(Headroom(windows, NOW), now=NOW) == until

    @pytest.mark.parametrize("raw", ["0", "-5", "101", "nan", "inf", "many"])
    def test_a_bad_threshold_is_a_config_error_naming_the_variable(self, raw: str) -> None:
        from agent.errors import ConfigError

        with pytest.raises(ConfigError, match="CODEX_DRAIN_5H_PERCENT"):
            usage.drain_thresholds({"CODEX_DRAIN_5H_PERCENT": raw})
        assert usage.drain_thresholds({"CODEX_DRAIN_WEEKLY_PERCENT": "90"}) == usage.DrainThresholds(85.0, 90.0)

    def test_volumes_prometheus_says_which_volume_a_limit_holds(self) -> None:
        from agent.login.auth import AuthFacts
        from agent.telemetry.metrics import volumes_exposition
        from agent.volume.inventory import VolumesReport, VolumeStatus

        limit = usage.view(
            None, usage.UsageLimit("usage", "usage_limit_reached", time.time() + 60, True, 300, time.time())
        )
        held = VolumeStatus("codex_auth_1", {}, {"ok": True}, AuthFacts(present=False), None, limited=limit["limit"])
        free = VolumeStatus("codex_auth_2", {}, {"ok": True}, AuthFacts(present=False), None)
        text = volumes_exposition(VolumesReport(volumes=(held, free)))
        assert 'codex_usage_limited{shard="1",volume="codex_auth_1"} 1.0' in text
        assert 'codex_usage_limited{shard="2",volume="codex_auth_2"} 0.0' in text
