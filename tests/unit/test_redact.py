"""agent.util.redact: secrets never leave in text."""

from __future__ import annotations

import pytest

from agent.util.redact import REDACTED, scrub

SECRETS = [
    "API key configured - sk-test-***bc123",
    "sk-proj-AbCdEf0123456789",
    "eyJhbGciOiJub25lIn0.eyJleHAiOjF9.sig",
    "rt-SECRET-refresh-token-xyz",
    "token 9f8A7b6C5d4E3f2G1h0IjKlMnOpQrStUvWxYz0123456789",
]


class TestScrub:
    @pytest.mark.parametrize("text", SECRETS, ids=["masked-key", "api-key", "jwt", "refresh", "opaque"])
    def test_secret_shapes_are_redacted(self, text: str) -> None:
        """Key, JWT, refresh-token and long opaque shapes are replaced."""
        out = scrub(text)
        assert REDACTED in out
        assert "bc123" not in out and "AbCdEf" not in out and "SECRET" not in out and "9f8A7b" not in out

    def test_ids_and_prose_are_kept(self) -> None:
        """Container ids (hex), volume names and prose pass unchanged."""
        text = "container " + "a" * 64 + " on volume codex_auth_1: Not logged in"
        assert scrub(text) == text
