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


class TestTransport:
    def test_pickles_with_its_facts(self) -> None:
        """Pool children pickle errors to the main process: code, message and fix survive."""
        import pickle

        error = errors.JobFailedError(shard=0, container_id="abc", image="job:dev", exit_code=3, worker="w")
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is errors.JobFailedError
        assert (copy.message, copy.remediation, copy.facts) == (error.message, error.remediation, error.facts)

    def test_rebuilds_from_its_text(self) -> None:
        """Celery's result backend rebuilds exceptions as cls(*args): the message survives."""
        error = errors.NotLoggedInError(shard=1, volume="codex_auth_1", cause="x")
        copy = errors.NotLoggedInError(*error.args)
        assert copy.message == error.message and str(copy) == str(error)
