"""The OpenAI stand-in's token rules and its HTTP surface (a real server on loopback)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from openai_standin import Behaviour, StandIn, TokenAuthority
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
        assert status == 401 and refused == {"error": {"code": "refresh_token_reused", "message": "refresh token already used"}}

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
