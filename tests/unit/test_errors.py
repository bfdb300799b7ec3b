"""agent.errors: the catalogue of stable codes."""

from __future__ import annotations

import pytest

from agent import errors


class TestCatalogue:
    def test_codes_are_unique(self) -> None:
        """No two error classes or warnings share a code."""
        codes = [cls.code for cls in errors.ERRORS] + [w.code for w in errors.WARNINGS]
        assert len(codes) == len(set(codes))

    @pytest.mark.parametrize("cls", errors.ERRORS, ids=lambda c: c.code)
    def test_every_error_roots_at_agent_error_and_has_a_fix(self, cls: type[errors.AgentError]) -> None:
        """Every error subclasses AgentError, formats from facts and carries a remediation."""
        error = cls(shard=1, volume="codex_auth_1", codex_home="/home/app/.codex", cause="x")
        assert isinstance(error, errors.AgentError)
        assert str(error).startswith(cls.code + " ")
        assert error.remediation and error.remediation != "see runbook.md"
        assert error.to_dict()["code"] == cls.code

    def test_missing_facts_stay_visible(self) -> None:
        """A fact the caller forgot shows as {name} rather than crashing the report."""
        error = errors.VolumeClaimedError(shard=0, volume="codex_auth_0")
        assert "{holder}" in error.message
