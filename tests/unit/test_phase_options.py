"""agent.jobs.phase_options: what a task may choose about a phase (model, Codex arguments, job environment)."""

from __future__ import annotations

from typing import Any

import pytest

from agent.errors import PhaseRequestError
from agent.jobs.launcher import JobPolicy, job_create_args
from agent.jobs.phase_options import (
    CODEX_ARGS_RULE,
    MODEL_RULE,
    RESERVED_ENV,
    RESERVED_ENV_PREFIXES,
    PhaseOptions,
    hide_values,
    phase_options,
)

FACTS = {"shard": 1, "volume": "codex_auth_1", "worker": "w"}
SECRET = "ghp_s3cr3t-value-for-the-test"


def refused(**kwargs: Any) -> PhaseRequestError:
    with pytest.raises(PhaseRequestError) as caught:
        phase_options(FACTS, **kwargs)
    assert caught.value.code == "CODEX-E044"
    return caught.value


class TestModelAndArgs:
    def test_nothing_chosen_adds_nothing(self) -> None:
        assert phase_options(FACTS) == PhaseOptions() and PhaseOptions().argv() == []

    @pytest.mark.parametrize(
        "args",
        [
            ["-m", "gpt-5.1-codex"],
            ["--model", "gpt-5.1-codex"],
            ["--model=gpt-5.1-codex"],
            ["--json", "-m", "gpt-5.1-codex", "--json"],
        ],
    )
    def test_the_model_in_every_spelling_becomes_one_m(self, args: list[str]) -> None:
        assert phase_options(FACTS, codex_args=args).argv() == ["-m", "gpt-5.1-codex"]

    @pytest.mark.parametrize(
        "args",
        [
            ["-c", "model_reasoning_effort=high"],
            ["--config", 'model_reasoning_effort="high"'],
            ["--config=model_reasoning_effort=high"],
        ],
    )
    def test_the_reasoning_effort_is_rebuilt_as_a_toml_string(self, args: list[str]) -> None:
        options = phase_options(FACTS, model="o4", codex_args=args)
        assert options.argv() == ["-m", "o4", "-c", 'model_reasoning_effort="high"']

    @pytest.mark.parametrize(
        "args",
        [
            ["--dangerously-bypass-approvals-and-sandbox"],
            ["-s", "danger-full-access"],
            ["--sandbox=danger-full-access"],
            ["-c", "sandbox_mode=danger-full-access"],
            ["-c", 'approval_policy="never"'],
            ["--profile", "x"],
            ["-p", "x"],
            ["--cd", "/"],
            ["-C", "/"],
            ["--oss"],
            ["--ephemeral"],
            ["--enable", "x"],
            ["-i", "/home/app/.codex/auth.json"],
            ["--add-dir", "/"],
            ["--ignore-rules"],
            ["--skip-git-repo-check"],
            ["-c", "model_reasoning_effort=turbo"],
            ["-m"],
            ["-m", "bad model"],
            ["-m", "--oss"],
            ["resume"],
            "-m x",
        ],
    )
    def test_anything_else_is_refused_naming_the_field(self, args: Any) -> None:
        error = refused(codex_args=args)
        assert error.facts["field"] == "codex_args" and error.facts["accepted"] in (CODEX_ARGS_RULE, MODEL_RULE)

    def test_two_models_that_disagree_are_refused(self) -> None:
        assert refused(model="a", codex_args=["-m", "b"]).facts["value"] == "-m b"

    @pytest.mark.parametrize("model", ["", "-m", "a b", "x" * 129, 3])
    def test_a_bad_model_is_refused(self, model: Any) -> None:
        assert refused(model=model).facts["field"] == "model"


class TestEnv:
    def test_allowed_names_reach_the_job_create_body(self) -> None:
        options = phase_options(FACTS, env={"GITHUB_TOKEN": SECRET, "GIT_AUTHOR_NAME": "bot"})
        policy = JobPolicy(
            volume="codex_auth_1", job_home="/home/app/.codex", job_user="1000:1000", labels={}, facts=FACTS
        )
        body = job_create_args(policy, "job:dev", ["codex"], environment=options.env).body
        assert f"GITHUB_TOKEN={SECRET}" in body["Env"] and "CODEX_HOME=/home/app/.codex" in body["Env"]

    @pytest.mark.parametrize(
        "name",
        sorted(RESERVED_ENV)
        + [p + "X" for p in RESERVED_ENV_PREFIXES]
        + ["CODEX_HOME", "OPENAI_API_KEY", "http_proxy", "lower", "1X", "A-B", "A" * 65, ""],
    )
    def test_reserved_or_odd_names_are_refused_with_the_name_never_the_value(self, name: str) -> None:
        error = refused(env={name: SECRET})
        assert error.facts["field"] == "env" and SECRET not in str(error) and SECRET not in str(error.facts)

    @pytest.mark.parametrize("value", [3, None, "a\x00b", "x" * 40_000])
    def test_a_bad_value_is_refused_without_showing_it(self, value: Any) -> None:
        error = refused(env={"GIT_TOKEN": value})
        assert error.facts["field"] == "env[GIT_TOKEN]" and error.facts["value"] == "<withheld>"

    def test_not_a_mapping_is_refused(self) -> None:
        assert refused(env=["A=b"]).facts["field"] == "env"

    def test_the_summary_names_the_variables_never_their_values(self) -> None:
        options = phase_options(FACTS, env={"GITHUB_TOKEN": SECRET})
        assert options.summary()["env_names"] == ["GITHUB_TOKEN"] and SECRET not in repr(options)
        assert SECRET not in repr(options.summary())

    def test_values_echoed_in_output_are_cut_out(self) -> None:
        text = f'{{"type":"item.completed","item":{{"type":"agent_message","text":"token is {SECRET}"}}}}'
        assert hide_values(text, {"GITHUB_TOKEN": SECRET}).endswith('token is [env:GITHUB_TOKEN]"}}')
        assert hide_values(text, {}) == text  # the unprotected variant keeps it
