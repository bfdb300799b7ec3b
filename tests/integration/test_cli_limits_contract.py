"""Contract of the pinned Codex CLI with agent.login.usage: what ``codex exec --json`` prints, and what it
writes into the session rollout, for each answer the stand-in gives (the real CLI on this host, a
real CODEX_HOME, the stand-in on loopback; no container, ~1 s per case).

A CLI upgrade that changes a phrase or the rollout's ``rate_limits`` shows here at once, by name.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agent.jobs.codex_output import summarize
from agent.login import usage
from openai_standin import StandIn, login_files

pytestmark = [pytest.mark.codex]


def run_codex(codex_bin: str, standin: StandIn, home: Path) -> tuple[int, str]:
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(home.parent),
        "CODEX_HOME": str(home),
        "CODEX_REFRESH_TOKEN_URL_OVERRIDE": standin.refresh_url,
    }
    done = subprocess.run(
        [codex_bin, "exec", "--json", "--skip-git-repo-check", "-C", str(home), "hello"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    return done.returncode, done.stdout + "\n" + done.stderr


Script = Callable[[StandIn, str, float], None]
CASES: dict[str, tuple[Script, str | None, str | None]] = {
    "usage_limit_reached": (lambda s, f, t: s.usage.limit(f, t), "usage", "usage_limit_reached"),
    "no_reset_time": (lambda s, f, t: s.usage.limit_without_reset(f), "usage", "usage_limit_reached"),
    "insufficient_quota": (
        lambda s, f, t: s.usage.limit_without_reset(f, error_type="insufficient_quota"),
        "quota",
        "insufficient_quota",
    ),
    "usage_not_included": (
        lambda s, f, t: s.usage.limit(f, t, error_type="usage_not_included"),
        "quota",
        "usage_not_included",
    ),
    "rate_limit_exceeded": (
        lambda s, f, t: s.usage.limit(f, t, error_type="rate_limit_exceeded"),
        "rate",
        "rate_limit_exceeded",
    ),
    "quota_exceeded": (lambda s, f, t: s.usage.limit(f, t, error_type="quota_exceeded"), "rate", "rate_limit_exceeded"),
}
"""Stand-in script -> what the classifier must make of the CLI's output (0.169: ``quota_exceeded``
prints the same generic "last status: 429" as a rate limit)."""


@pytest.mark.parametrize("case", list(CASES))
def test_each_429_is_classified_from_what_the_cli_prints(codex_bin: str, tmp_path: Path, case: str) -> None:
    script, kind, error_type = CASES[case]
    with StandIn() as standin:
        tokens = standin.authority.mint()
        home = tmp_path / ".codex"
        login_files(tokens, standin.url).write(home)
        reset = time.time() + 600
        script(standin, tokens.family, reset)
        started = time.time()
        code, output = run_codex(codex_bin, standin, home)
    assert code != 0, output[-2000:]
    summary = summarize(output)
    other = "\n".join(line for line in output.splitlines() if not line.startswith("{"))
    snapshot = usage.read_headroom(home)
    hit = usage.classify(summary.failure, other, snapshot, started=started)
    assert hit is not None and (hit.kind, hit.error_type) == (kind, error_type), summary.failure
    limit = usage.limit_for(hit, snapshot)
    if case == "usage_limit_reached":  # the rollout gives the exhausted window and its reset time
        assert "You’ve hit your usage limit" in (summary.failure or "")
        assert (limit.resets_at, limit.reset_known, limit.window) == (int(reset), True, "5-hour")
    else:
        assert not limit.reset_known and limit.resets_at <= time.time() + usage.FALLBACK_S[limit.kind]


def test_a_successful_run_records_the_headers_in_the_rollout_by_window_length(codex_bin: str, tmp_path: Path) -> None:
    """42.5 % of the 5-hour window, 91 % weekly; then the weekly window alone as ``primary``."""
    with StandIn() as standin:
        tokens = standin.authority.mint()
        home = tmp_path / ".codex"
        login_files(tokens, standin.url).write(home)
        standin.usage.used(tokens.family, 42.5, 91.0)
        assert run_codex(codex_bin, standin, home)[0] == 0
        snapshot = usage.read_headroom(home)
        assert snapshot is not None
        five, weekly = snapshot.window("5h"), snapshot.window("weekly")
        assert five is not None and weekly is not None and (five.used_percent, weekly.used_percent) == (42.5, 91.0)
        standin.usage.used(tokens.family, 97.0, None, primary_minutes=10080, secondary_minutes=None)
        time.sleep(0.01)
        assert run_codex(codex_bin, standin, home)[0] == 0
        snapshot = usage.read_headroom(home)
        assert snapshot is not None and snapshot.window("5h") is None
        weekly = snapshot.window("weekly")
        assert weekly is not None and weekly.used_percent == 97.0


LoginScript = Callable[[StandIn, Any], None]
LOGIN_CASES: dict[str, tuple[float | None, LoginScript, set[str]]] = {
    "refresh_token_reused": (0.0, lambda s, t: s.authority.refresh(t.refresh_token), {"refresh_token_reused"}),
    "refresh_token_expired": (0.0, lambda s, t: s.authority.expire(t.family), {"refresh_token_expired"}),
    "refresh_token_invalidated": (0.0, lambda s, t: s.authority.revoke(t.family), {"refresh_token_invalidated"}),
    "unauthorized": (
        None,
        lambda s, t: s.authority.revoke(t.family),
        {"unauthorized", "refresh_token_invalidated", "sign_in_again"},
    ),
}
"""Stand-in script (with the access token's lifetime: 0 makes the CLI refresh first) -> the reasons
agent.jobs.phase.auth_failure may name. A 401 on a dead family may make the CLI refresh, which the family
then refuses: either reason is a dead login."""


@pytest.mark.parametrize("case", list(LOGIN_CASES))
def test_each_dead_login_is_classified_from_what_the_cli_prints(codex_bin: str, tmp_path: Path, case: str) -> None:
    """Reused, expired and invalidated refresh tokens and a 401: the real CLI's words name the reason."""
    from agent.jobs.codex_output import auth_failure

    ttl, script, reasons = LOGIN_CASES[case]
    with StandIn() as standin:
        tokens = standin.authority.mint(access_ttl=ttl) if ttl is not None else standin.authority.mint()
        home = tmp_path / ".codex"
        login_files(tokens, standin.url).write(home)
        script(standin, tokens)
        code, output = run_codex(codex_bin, standin, home)
    # 0.171 goes on with a still-accepted access token after an expired refresh (exit 0): what matters
    # is that its words, whenever a run does fail, name the reason.
    assert code != 0 or case == "refresh_token_expired", output[-2000:]
    assert auth_failure(output) in reasons, output[-2000:]
