"""Fuzz: any string in any variable of the environment contract gives a config or a ConfigError.

The variables are the worker's rows of the one table (:data:`agent.settings.variables.VARIABLES`, all but the
guard's), so a variable added later is fuzzed without touching this file.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from agent.errors import ConfigError
from agent.settings import variables
from agent.settings.config import AgentConfig, load
from testkit.fuzz import any_text, budget
from worker_entry.app import create_app

VARIABLES = sorted(
    name for name in variables.VARIABLES if not name.startswith("CODEX_GUARD_") and name != "CELERY_VISIBILITY_TIMEOUT"
)
"""What :func:`agent.settings.config.load` reads (the visibility timeout is the worker settings', fuzzed below)."""

_values = st.one_of(
    any_text,
    st.sampled_from(
        [
            "0",
            "-1",
            "1e999",
            "nan",
            "inf",
            "9" * 5000,
            "1_000",
            "٣",
            " 2 ",
            "amqp://[",
            "amqp://h:99999/",
            "/rel/../..",
            "relative/path",
            "none",
            "ON",
            "0:0",
            "1000:0",
            "/a\x00b",
        ]
    ),
)

_BASE = {"CODEX_SHARD_INDEX": "0", "HOME": "/home/app"}

environments = st.one_of(
    st.tuples(st.sampled_from(VARIABLES), _values).map(lambda pair: {**_BASE, pair[0]: pair[1]}),
    st.dictionaries(st.sampled_from(VARIABLES), _values, max_size=4).map(lambda env: {**_BASE, **env}),
)
"""One variable of any value (the others valid), or several at once."""


def _paths(config: AgentConfig) -> list[Path]:
    return [config.codex_home, config.state_dir, Path(config.job_home)]


class TestEnvironment:
    def test_the_variables_were_found(self) -> None:
        assert {"CODEX_SHARD_INDEX", "CODEX_HOME", "CELERY_BROKER_URL", "AGENT_RECHECK_INTERVAL"} <= set(VARIABLES)

    @budget(500)
    @given(env=environments)
    def test_any_values_give_a_config_or_a_config_error(self, env: dict[str, str]) -> None:
        """Any strings (lone surrogates, NUL, huge numbers, bad URLs), in one variable or several at once."""
        try:
            config = load(env)
        except ConfigError as e:
            event("ConfigError")
            assert e.facts["variable"] in VARIABLES and e.code == "CODEX-E001"
            return
        event("config")
        for path in _paths(config):
            assert path.is_absolute() and "\x00" not in str(path)
        assert 0 < config.recheck_interval < float("inf") and 0 < config.login_timeout < float("inf")

    @pytest.mark.parametrize("variable", VARIABLES)
    def test_every_variable_alone_survives_garbage(self, variable: str) -> None:
        for value in ("\udc80\udcff", "\x00", "1e999", "amqp://[", "relative"):
            try:
                load({"CODEX_SHARD_INDEX": "0", "HOME": "/home/app", variable: value})
            except ConfigError as e:
                assert e.facts["variable"] == variable

    @pytest.mark.parametrize("url", ["amqp://[", "amqp://guest@rabbit:99999//", "redis://h:port/0"])
    def test_an_unparsable_broker_url_is_refused_at_startup(self, url: str) -> None:
        """Not later, as a traceback in the drain or in kombu."""
        with pytest.raises(ConfigError, match="CELERY_BROKER_URL"):
            load({"CELERY_BROKER_URL": url})

    def test_a_relative_home_does_not_make_a_relative_codex_home(self) -> None:
        with pytest.raises(ConfigError, match="HOME"):
            load({"HOME": "relative", "CODEX_SHARD_INDEX": "0"})
        assert load({"HOME": "relative", "CODEX_HOME": "/v/.codex"}).codex_home == Path("/v/.codex")


class TestVisibilityTimeout:
    """``CELERY_VISIBILITY_TIMEOUT`` is read through the one table of variables, like every other."""

    @budget(200)
    @given(raw=_values)
    def test_any_value_gives_seconds_or_a_config_error_naming_it(self, raw: str) -> None:
        try:
            seconds = variables.read({"CELERY_VISIBILITY_TIMEOUT": raw}, "CELERY_VISIBILITY_TIMEOUT")
        except ConfigError as e:
            assert e.facts["variable"] == "CELERY_VISIBILITY_TIMEOUT"
            return
        assert seconds is None or 0 < seconds < float("inf")

    def test_a_bad_value_is_blamed_on_the_variable_not_on_the_app(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """It raised a bare ValueError, which worker-entry reported as an unimportable --app."""
        monkeypatch.setenv("CELERY_VISIBILITY_TIMEOUT", "six hours")
        with pytest.raises(ConfigError, match="CELERY_VISIBILITY_TIMEOUT='six hours'"):
            create_app(load({"CELERY_BROKER_URL": "memory://"}))
