"""Fuzz: any bytes in auth.json, any shape of its JSON and of its JWTs, any CLI output.

``auth.json`` is outside input: a worker reads whatever the volume holds. The readers must give
facts (or a coded login error), never a traceback; an unreadable file must never pass as a login;
and no credential may come back out in the facts.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.errors import LoginCheckError, LoginError, NotLoggedInError
from agent.login.auth import AUTH_FILE, facts_from_text, inspect_auth_file, judge_status_output
from testkit.fuzz import any_bytes, any_text, budget, is_strict_json, json_values

FACTS = {"shard": 0, "volume": "codex_auth_0", "codex_home": "/x", "uid": 1000}


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _jwt_with(payload: bytes) -> str:
    return f"{_b64(b'{}')}.{_b64(payload)}.sig"


_payloads = st.one_of(
    json_values.map(lambda v: json.dumps(v).encode("utf-8", "surrogatepass")),
    st.fixed_dictionaries({"exp": json_values}).map(lambda v: json.dumps(v).encode("utf-8", "surrogatepass")),
    st.binary(max_size=40),
)
_tokens = st.one_of(json_values, _payloads.map(_jwt_with), any_text)
_secrets = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=12, max_size=30)

auth_documents = st.fixed_dictionaries(
    {},
    optional={
        "auth_mode": st.one_of(st.sampled_from(["chatgpt", "apikey", "ChatGPT"]), json_values),
        "OPENAI_API_KEY": st.one_of(_secrets, json_values),
        "tokens": st.one_of(
            json_values,
            st.fixed_dictionaries(
                {},
                optional={
                    "access_token": _tokens,
                    "id_token": _tokens,
                    "refresh_token": st.one_of(_secrets, json_values),
                    "account_id": json_values,
                },
            ),
        ),
        "last_refresh": st.one_of(
            json_values,
            st.datetimes().map(lambda d: d.isoformat()),
            st.datetimes().map(lambda d: d.isoformat() + "Z"),
            st.sampled_from(["0001-01-01T00:00:00+23:59", "9999-12-31T23:59:59-23:59", "2024-02-30T00:00:00Z"]),
        ),
    },
)
"""auth.json documents shaped like Codex's, with every field allowed to be of any type."""


def _credentials(document: dict[str, Any]) -> list[str]:
    tokens = document.get("tokens")
    found = [document.get("OPENAI_API_KEY")]
    if isinstance(tokens, dict):
        found += [tokens.get("refresh_token"), tokens.get("access_token"), tokens.get("id_token")]
    return [s for s in found if isinstance(s, str) and len(s) >= 12]


class TestAuthFileBytes:
    @budget(200)
    @given(content=any_bytes)
    def test_any_bytes_give_facts_never_an_exception(self, tmp_path: Path, content: bytes) -> None:
        """Garbage, JSON of any shape, torn JSON, nesting bombs: a verdict, JSON-safe, never a traceback."""
        home = tmp_path
        (home / AUTH_FILE).write_bytes(content)
        facts = inspect_auth_file(home)
        assert facts.present
        assert is_strict_json(facts.to_dict())
        if facts.unreadable is None:
            assert isinstance(json.loads(content.decode("utf-8")), dict)

    @pytest.mark.parametrize(
        "content, cause",
        [
            (b"\x89PNG\r\n\x1a\n\xff\xfe\x00garbage", "not UTF-8"),
            (b'{"OPENAI_API_KEY": "sk-\xff\xfe"}', "not UTF-8"),
            (b"", "empty"),
            (b"{not json", "not JSON"),
            (b"[" * 100_000, "not JSON"),
            (b'["chatgpt"]', "not a JSON object"),
            (b'{"a": 1}', "holds no credential"),
            (b'{"tokens": {}, "OPENAI_API_KEY": null}', "holds no credential"),
        ],
        ids=[
            "binary",
            "invalid-utf8-in-string",
            "empty",
            "torn",
            "nesting-bomb",
            "array",
            "no-credential",
            "empty-tokens",
        ],
    )
    def test_unreadable_content_names_its_cause(self, tmp_path: Path, content: bytes, cause: str) -> None:
        """Each kind of unreadable auth.json is said plainly (what the operator sees in E030)."""
        (tmp_path / AUTH_FILE).write_bytes(content)
        facts = inspect_auth_file(tmp_path)
        assert facts.unreadable is not None and cause in facts.unreadable
        assert facts.auth_mode == "unreadable" and facts.fingerprint is None

    def test_invalid_utf8_is_not_repaired_into_a_login(self) -> None:
        """Bytes read through a container are judged as bytes: no replacement character makes them valid."""
        facts = facts_from_text(b'{"OPENAI_API_KEY": "sk-\xff\xfeabcdefgh"}', None)
        assert facts.unreadable == "not UTF-8" and facts.fingerprint is None

    def test_a_readable_login_is_not_flagged(self, tmp_path: Path) -> None:
        (tmp_path / AUTH_FILE).write_text(json.dumps({"OPENAI_API_KEY": "sk-test-abcdefghijkl"}))
        facts = inspect_auth_file(tmp_path)
        assert facts.unreadable is None and facts.auth_mode == "apikey" and facts.fingerprint


class TestAuthFileShapes:
    @budget(250)
    @given(document=auth_documents)
    def test_any_field_of_any_type_gives_facts_without_secrets(self, document: dict[str, Any]) -> None:
        """Every field of any type, JWT payloads of any shape: facts, strict JSON, no credential in them."""
        facts = facts_from_text(json.dumps(document), 1.0)
        view = facts.to_dict()
        assert is_strict_json(view)
        rendered = json.dumps(view)
        for secret in _credentials(document):
            assert secret not in rendered
        assert facts.auth_mode is None or (facts.auth_mode.isascii() and len(facts.auth_mode) <= 32)
        if facts.access_token_expires_at is not None:
            assert facts.access_token_expired(now=0.0) in (True, False)

    @budget(200)
    @given(payload=_payloads)
    def test_any_jwt_payload_gives_an_expiry_or_none(self, payload: bytes) -> None:
        """The access token's payload of any shape: a finite expiry or none."""
        document = {"tokens": {"access_token": _jwt_with(payload), "refresh_token": "rt-abcdefghijklmnop"}}
        expires = facts_from_text(json.dumps(document), None).access_token_expires_at
        assert expires is None or expires == expires and abs(expires) != float("inf")


_outputs = st.one_of(
    any_text,
    st.sampled_from(
        [
            "Logged in using ChatGPT",
            "API key configured - sk-***abc\nAuthentication is checked when you send a request.",
            "Not logged in",
            "Error checking login status: stream did not contain valid UTF-8",
            "Error checking login status: failed to deserialize CLI auth from file: invalid credential JSON",
        ]
    ),
)


class TestStatusOutput:
    @budget(300)
    @given(returncode=st.integers(min_value=-(2**31), max_value=2**31), stdout=_outputs, stderr=_outputs)
    def test_any_output_gives_a_method_or_a_login_error(self, returncode: int, stdout: str, stderr: str) -> None:
        """Any exit code and output: a method only on exit 0, a coded LoginError otherwise."""
        try:
            method = judge_status_output(returncode, stdout, stderr, facts=FACTS)
        except LoginError as e:
            assert e.code.startswith("CODEX-E03") and "sk-" not in e.message.replace("sk-***", "")
            return
        assert returncode == 0 and method in ("chatgpt", "apikey", "unknown")

    @pytest.mark.parametrize(
        "output",
        [
            "Error checking login status: stream did not contain valid UTF-8",
            "Error checking login status: failed to deserialize CLI auth from file: invalid credential JSON (Data at line 1 column 2)",
        ],
        ids=["not-utf8", "not-credential-json"],
    )
    def test_an_unreadable_auth_file_is_not_logged_in(self, output: str) -> None:
        """The CLI's own words for an unreadable auth.json give E030, as the agent's own reading does."""
        with pytest.raises(NotLoggedInError, match="auth.json is unreadable"):
            judge_status_output(1, "", output, facts=FACTS)

    def test_other_cli_failures_stay_check_errors(self) -> None:
        with pytest.raises(LoginCheckError, match="Permission denied"):
            judge_status_output(1, "", "Error checking login status: Permission denied (os error 13)", facts=FACTS)
