"""agent.errors: the catalogue of stable codes."""

from __future__ import annotations

import pytest

from agent import errors, problems


class TestCatalogue:
    def test_codes_are_unique(self) -> None:
        """No two error classes or warnings share a code."""
        codes = [cls.code for cls in errors.ERRORS] + [w.code for w in problems.WARNINGS]
        assert len(codes) == len(set(codes))

    @pytest.mark.parametrize("cls", errors.ERRORS, ids=lambda c: c.code)
    def test_every_template_renders_whole_from_its_fields(self, cls: type[errors.AgentError]) -> None:
        """Every error formats from exactly its declared facts, leaving no placeholder, and has a fix."""
        error = cls(**{name: f"<{name}>" for name in cls.fields()})
        assert isinstance(error, errors.AgentError) and str(error).startswith(cls.code + " ")
        assert "{" not in error.message and "{" not in error.remediation
        assert error.remediation != "see runbook.md"
        problem = error.problem(check="login")
        assert (problem.code, problem.severity, problem.check) == (cls.code, "error", "login")

    def test_the_catalogue_is_every_error_class_with_a_code(self) -> None:
        """Derived from the classes: a new error cannot escape the catalogue, runbook or docs tests."""

        def with_codes(cls: type[errors.AgentError]) -> set[type[errors.AgentError]]:
            found = {cls} if "code" in cls.__dict__ else set()
            return found.union(*(with_codes(sub) for sub in cls.__subclasses__()))

        assert set(errors.ERRORS) == with_codes(errors.AgentError) - {errors.AgentError}

    def test_a_missing_fact_fails_in_tests(self) -> None:
        """Tests run strict: a forgotten fact is a TypeError naming it."""
        with pytest.raises(TypeError, match="holder"):
            errors.VolumeClaimedError(shard=0, volume="codex_auth_0", stop_this="x")

    def test_a_missing_fact_stays_visible_in_production(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Outside tests a fact the caller forgot shows as {name} rather than crashing the report."""
        monkeypatch.setattr(errors.AgentError, "strict_fields", False)
        error = errors.VolumeClaimedError(shard=0, volume="codex_auth_0", stop_this="x")
        assert "{holder}" in error.message and error.missing == ["holder"]

    @pytest.mark.parametrize("warning", problems.WARNINGS, ids=lambda w: w.code)
    def test_warnings_are_problems_of_severity_warning(self, warning: problems.Warning_) -> None:
        problem = warning.problem(
            shard=1,
            volume="v",
            age_days=9,
            volumes="a, b",
            fingerprint="f",
            codex_bin="codex",
            installed="0.1.0",
            supported="0.169.0",
            uid=0,
            job_user="1000:1000",
            job_uid=1000,
        )
        assert (
            problem.severity == "warning" and "{" not in problem.message and problem.to_dict()["code"] == warning.code
        )


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


class TestHierarchy:
    """The hierarchy drawn in agent/errors.py's docstring is the code's, and __all__ names all of it."""

    @staticmethod
    def drawn() -> dict[str, tuple[str | None, str | None]]:
        """Class -> (parent, code) as the docstring's tree draws them."""
        import re

        tree: dict[str, tuple[str | None, str | None]] = {}
        stack: list[tuple[int, str]] = []
        for line in (errors.__doc__ or "").splitlines():
            match = re.match(r"^\s+(?:[│ ]*[├└]── )?(\w+Error)\b\s*(CODEX-E\d{3})?", line)
            if not match or "Error" not in match.group(1):
                continue
            depth = line.index(match.group(1))
            while stack and stack[-1][0] >= depth:
                stack.pop()
            tree[match.group(1)] = (stack[-1][1] if stack else None, match.group(2))
            stack.append((depth, match.group(1)))
        return tree

    def test_every_registered_error_is_drawn_under_its_base(self) -> None:
        """Each class with a code stands in the tree, with its code, under the class it derives from."""
        tree = self.drawn()
        for cls in errors.ERRORS:
            assert cls.__name__ in tree, f"{cls.__name__} is not drawn"
            parent, code = tree[cls.__name__]
            assert code == cls.code and parent == cls.__bases__[0].__name__, (cls.__name__, parent, code)

    def test_nothing_is_drawn_that_does_not_exist_and_all_names_everything(self) -> None:
        """No stale row; every drawn class is exported."""
        tree = self.drawn()
        assert set(tree) <= set(errors.__all__) and all(hasattr(errors, name) for name in tree)
        assert {cls.__name__ for cls in errors.ERRORS} <= set(errors.__all__)
