"""The OpenAI stand-in's token rules and its HTTP surface (a real server on loopback)."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from openai_standin import Behaviour, StandIn, TokenAuthority
from openai_standin.limits import LIMIT_MESSAGE, WEEK
from openai_standin.responses import sse_events, texts_of
from openai_standin.tokens import RefreshRefused


class TestTokenAuthority:
    def test_a_refresh_rotates_every_token_and_the_old_refresh_token_is_spent(self) -> None:
        """Each refresh token is valid once."""
        authority = TokenAuthority()
        first = authority.mint()
        second = authority.refresh(first.refresh_token)
        assert second.family == first.family
        assert {second.access_token, second.refresh_token}.isdisjoint({first.access_token, first.refresh_token})
        assert authority.stats()[first.family].refreshes == 1

    def test_reuse_answers_reused_and_revokes_the_whole_family(self) -> None:
        """A copy that refreshes after the original kills both."""
        authority = TokenAuthority()
        first = authority.mint()
        newest = authority.refresh(first.refresh_token)
        with pytest.raises(RefreshRefused) as reused:
            authority.refresh(first.refresh_token)
        assert reused.value.code == "refresh_token_reused"
        with pytest.raises(RefreshRefused) as dead:
            authority.refresh(newest.refresh_token)
        assert dead.value.code == "refresh_token_invalidated"
        stats = authority.stats()[first.family]
        assert (stats.reuses, stats.revocations, stats.revoked) == (1, 1, "refresh_token_reused")
        assert authority.authorize(newest.access_token) is None

    def test_an_expired_family_answers_expired(self) -> None:
        authority = TokenAuthority()
        login = authority.mint()
        authority.expire(login.family)
        with pytest.raises(RefreshRefused, match="expired") as refused:
            authority.refresh(login.refresh_token)
        assert refused.value.code == "refresh_token_expired"

    def test_only_the_current_access_token_is_authorized(self) -> None:
        authority = TokenAuthority()
        first = authority.mint()
        assert authority.authorize(first.access_token) == first.family
        authority.refresh(first.refresh_token)
        assert authority.authorize(first.access_token) is None
        assert authority.authorize("not-a-token") is None

    def test_tokens_are_unsigned_jwts_with_the_claims_codex_reads(self) -> None:
        import base64

        login = TokenAuthority(access_ttl=400).mint(account_id="acct-x")
        payload = login.access_token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        assert claims["https://api.openai.com/auth"]["chatgpt_account_id"] == "acct-x"
        assert claims["exp"] - claims["iat"] == 400


class TestStream:
    def test_a_turn_is_created_then_an_assistant_item_then_completed_with_usage(self) -> None:
        events = [e.decode() for e in sse_events(3, "hi there", input_tokens=5)]
        kinds = [e.split("\n", 1)[0] for e in events]
        assert kinds == ["event: response.created", "event: response.output_item.done", "event: response.completed"]
        completed = json.loads(events[-1].split("data: ", 1)[1])
        assert completed["response"]["usage"]["total_tokens"] == 7

    @pytest.mark.parametrize(
        ("body", "texts"),
        [
            ({"input": [{"role": "user", "content": [{"type": "input_text", "text": "a"}]}]}, ("a",)),
            ({"input": [{"role": "user", "content": "plain"}]}, ("plain",)),
            ({"input": "not a list"}, ()),
            ({}, ()),
        ],
        ids=["parts", "string", "not-a-list", "empty"],
    )
    def test_request_texts(self, body: dict[str, Any], texts: tuple[str, ...]) -> None:
        assert texts_of(body) == texts


@pytest.fixture
def server() -> Iterator[StandIn]:
    with StandIn() as standin:
        yield standin


def post(url: str, body: dict[str, Any], token: str | None = None) -> tuple[int, dict[str, Any] | str]:
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            raw = reply.read().decode()
            return reply.status, (json.loads(raw) if reply.headers.get_content_type() == "application/json" else raw)
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


class TestServer:
    def test_the_token_endpoint_rotates_and_then_refuses_reuse_with_401(self, server: StandIn) -> None:
        login = server.authority.mint()
        body = {"grant_type": "refresh_token", "refresh_token": login.refresh_token, "client_id": "x"}
        status, fresh = post(server.refresh_url, body)
        assert status == 200 and isinstance(fresh, dict) and set(fresh) == {"id_token", "access_token", "refresh_token"}
        status, refused = post(server.refresh_url, body)
        assert status == 401 and refused == {
            "error": {"code": "refresh_token_reused", "message": "refresh token already used"}
        }

    def test_a_bad_grant_is_a_400_naming_what_is_needed(self, server: StandIn) -> None:
        status, body = post(server.refresh_url, {"grant_type": "password"})
        assert status == 400 and "grant_type=refresh_token" in str(body)

    def test_the_model_stream_needs_a_live_access_token(self, server: StandIn) -> None:
        login = server.authority.mint()
        status, _ = post(f"{server.url}/v1/responses", {"input": []}, token="nope")
        assert status == 401
        status, stream = post(f"{server.url}/v1/responses", {"input": []}, token=login.access_token)
        assert status == 200 and "response.completed" in str(stream)
        assert server.authority.stats()[login.family].model_calls == 1

    def test_scripted_failures_come_first_then_replies(self, server: StandIn) -> None:
        login = server.authority.mint()
        server.script.push(Behaviour("fail", status=503), Behaviour("reply", text="scripted"))
        assert post(f"{server.url}/v1/responses", {}, token=login.access_token)[0] == 503
        status, stream = post(f"{server.url}/v1/responses", {}, token=login.access_token)
        assert status == 200 and "scripted" in str(stream)

    def test_the_control_api_mints_logins_and_reports_counts(self, server: StandIn) -> None:
        status, minted = post(f"{server.url}/_standin/logins", {"access_ttl": 320})
        assert status == 200 and isinstance(minted, dict)
        with urllib.request.urlopen(f"{server.url}/_standin/stats", timeout=10) as reply:
            stats = json.loads(reply.read())
        assert minted["family"] in stats["families"] and "refresh_token" not in json.dumps(stats)


def answer(url: str, token: str) -> tuple[int, dict[str, str], str]:
    """Status, headers (lower-case names) and body of one Responses request."""
    request = urllib.request.Request(
        f"{url}/v1/responses",
        data=b"{}",
        method="POST",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return reply.status, {k.lower(): v for k, v in reply.headers.items()}, reply.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read().decode()


class TestUsageLimits:
    def test_every_answer_carries_the_rate_limit_headers_of_its_family(self, server: StandIn) -> None:
        login, other = server.authority.mint(), server.authority.mint()
        server.usage.used(login.family, 42.5, 91)
        status, headers, _ = answer(server.url, login.access_token)
        assert status == 200
        assert (headers["x-codex-primary-used-percent"], headers["x-codex-primary-window-minutes"]) == ("42.5", "300")
        assert (headers["x-codex-secondary-used-percent"], headers["x-codex-secondary-window-minutes"]) == (
            "91",
            "10080",
        )
        assert int(headers["x-codex-primary-reset-at"]) > time.time() and "x-codex-credits-has-credits" in headers
        assert answer(server.url, other.access_token)[1]["x-codex-primary-used-percent"] == "1"

    def test_a_limited_family_gets_429_with_its_reset_time_until_then_and_a_fresh_window_after(
        self, server: StandIn
    ) -> None:
        login = server.authority.mint()
        until = time.time() + 2
        server.usage.limit(login.family, until)
        status, headers, body = answer(server.url, login.access_token)
        error = json.loads(body)["error"]
        assert status == 429 and (error["type"], error["resets_at"]) == ("usage_limit_reached", int(until))
        assert (headers["x-codex-primary-used-percent"], headers["x-codex-primary-reset-at"]) == (
            "100",
            str(int(until)),
        )
        assert server.usage.get(login.family, at=until + 1).refused() is False
        assert server.usage.get(login.family, at=until + 1).primary.used_percent == 0.0  # type: ignore[union-attr]
        assert server.usage.refusals[login.family] == 1

    def test_a_limit_without_reset_time_has_no_resets_at_and_lasts_until_cleared(self, server: StandIn) -> None:
        login = server.authority.mint()
        server.usage.limit_without_reset(login.family, error_type="insufficient_quota")
        status, _, body = answer(server.url, login.access_token)
        assert status == 429 and json.loads(body) == {
            "error": {"type": "insufficient_quota", "message": LIMIT_MESSAGE, "plan_type": "plus"}
        }
        server.usage.clear(login.family)
        assert answer(server.url, login.access_token)[0] == 200

    def test_the_weekly_window_can_be_primary_alone(self, server: StandIn) -> None:
        login = server.authority.mint()
        server.usage.used(login.family, 97, None, primary_minutes=WEEK, secondary_minutes=None)
        headers = answer(server.url, login.access_token)[1]
        assert headers["x-codex-primary-window-minutes"] == "10080" and "x-codex-secondary-used-percent" not in headers

    def test_the_control_api_scripts_usage_and_refuses_a_malformed_request(self, server: StandIn) -> None:
        login = server.authority.mint()
        url = f"{server.url}/_standin/families/{login.family}/usage"
        status, reply = post(url, {"limited_until": time.time() + 60})
        assert status == 200 and isinstance(reply, dict) and reply["headers"]["x-codex-primary-used-percent"] == "1"
        assert answer(server.url, login.access_token)[0] == 429
        assert post(url, {"primary": {"used_percent": "many"}})[0] == 400
