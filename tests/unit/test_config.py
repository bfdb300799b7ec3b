"""agent.settings.config: the environment contract, validated."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.errors import ConfigError
from agent.settings.config import load


class TestDefaults:
    def test_non_codex_worker_when_index_unset(self) -> None:
        """Without CODEX_SHARD_INDEX the worker has no Codex queue or volume."""
        config = load({"HOME": "/home/app"})
        assert config.is_codex_worker is False
        assert config.codex_queue is None
        assert config.volume_name is None
        assert config.codex_home == Path("/home/app/.codex")

    def test_shard_derives_queue_and_volume(self) -> None:
        """Shard 2 gets queue codex-2 and volume codex_auth_2."""
        config = load({"CODEX_SHARD_INDEX": "2", "HOME": "/home/app"})
        assert (config.codex_queue, config.volume_name) == ("codex-2", "codex_auth_2")
        assert config.shards == 3
        assert config.login_timeout == 20.0
        assert config.recheck_interval == 15.0
        assert config.fail_fast is False

    def test_single_mode_uses_one_queue(self) -> None:
        """Single mode puts every shard on the durable queue `codex`."""
        config = load({"CODEX_SHARD_INDEX": "1", "CODEX_QUEUE_MODE": "single"})
        assert config.codex_queue == "codex"

    def test_explicit_overrides_win(self) -> None:
        """CODEX_QUEUE and CODEX_VOLUME_NAME override what the index derives."""
        config = load(
            {
                "CODEX_SHARD_INDEX": "0",
                "CODEX_QUEUE": "codex-special",
                "CODEX_VOLUME_NAME": "team_a_auth",
                "AGENT_FAIL_FAST": "1",
            }
        )
        assert (config.codex_queue, config.volume_name, config.fail_fast) == (
            "codex-special",
            "team_a_auth",
            True,
        )

    def test_codex_endpoint_overrides_are_read_once_with_the_rest(self) -> None:
        """The phases' jobs get the overrides set when the worker started; blank ones are unset."""
        config = load(
            {
                "HOME": "/h",
                "CODEX_REFRESH_TOKEN_URL_OVERRIDE": " http://127.0.0.1:9/oauth/token ",
                "CODEX_REVOKE_TOKEN_URL_OVERRIDE": " ",
            }
        )
        assert config.codex_endpoints == (("CODEX_REFRESH_TOKEN_URL_OVERRIDE", "http://127.0.0.1:9/oauth/token"),)
        assert load({"HOME": "/h"}).codex_endpoints == ()

    def test_config_is_frozen(self) -> None:
        """The configuration cannot be changed once loaded."""
        config = load({})
        with pytest.raises(AttributeError):
            config.shards = 4  # type: ignore[misc]


INVALID = [
    ({"CODEX_SHARD_INDEX": "-1"}, "CODEX_SHARD_INDEX", "'-1'", "an integer from 0 to 2"),
    ({"CODEX_SHARD_INDEX": "3"}, "CODEX_SHARD_INDEX", "'3'", "an integer from 0 to 2"),
    ({"CODEX_SHARD_INDEX": "one"}, "CODEX_SHARD_INDEX", "'one'", "an integer from 0 to 2"),
    ({"CODEX_SHARDS": "0"}, "CODEX_SHARDS", "'0'", "an integer >= 1"),
    ({"CODEX_QUEUE_MODE": "fanout"}, "CODEX_QUEUE_MODE", "'fanout'", "sharded or single"),
    ({"CODEX_LOGIN_TIMEOUT": "soon"}, "CODEX_LOGIN_TIMEOUT", "'soon'", "a positive number of seconds"),
    ({"CODEX_LOGIN_TIMEOUT": "-5"}, "CODEX_LOGIN_TIMEOUT", "'-5'", "a positive number of seconds"),
    ({"AGENT_RECHECK_INTERVAL": "nan"}, "AGENT_RECHECK_INTERVAL", "'nan'", "a positive number of seconds"),
    ({"AGENT_FAIL_FAST": "maybe"}, "AGENT_FAIL_FAST", "'maybe'", "0 or 1"),
    ({"CODEX_LOGIN_CHECK": "remote"}, "CODEX_LOGIN_CHECK", "'remote'", "local or container"),
    ({"CODEX_JOB_USER": "0:0"}, "CODEX_JOB_USER", "'0:0'", "other than root"),
    ({"CODEX_JOB_USER": "app"}, "CODEX_JOB_USER", "'app'", "numeric uid:gid"),
    ({"CODEX_HOME": "relative/.codex"}, "CODEX_HOME", "'relative/.codex'", "an absolute path"),
    ({"CODEX_JOB_HOME": "~/.codex"}, "CODEX_JOB_HOME", "'~/.codex'", "an absolute path"),
    ({"CODEX_VOLUME_NAME": "bad name"}, "CODEX_VOLUME_NAME", "'bad name'", "a Docker volume name"),
    ({"CODEX_QUEUE": "codex 1"}, "CODEX_QUEUE", "'codex 1'", "a queue name"),
    ({"CELERY_BROKER_URL": "http://broker"}, "CELERY_BROKER_URL", "'http://broker'", "amqp"),
    ({"AGENT_STATE_DIR": "state"}, "AGENT_STATE_DIR", "'state'", "an absolute path"),
]


class TestInvalidValues:
    @pytest.mark.parametrize(
        ("environ", "variable", "value", "accepted"),
        INVALID,
        ids=[f"{next(iter(env))}={next(iter(env.values()))}" for env, *_ in INVALID],
    )
    def test_names_variable_value_and_accepted(
        self, environ: dict[str, str], variable: str, value: str, accepted: str
    ) -> None:
        """Each bad value is a CODEX-E001 naming the variable, the value and what is accepted."""
        with pytest.raises(ConfigError) as info:
            load(environ)
        error = info.value
        assert error.code == "CODEX-E001"
        assert error.exit_code == 2
        assert error.message.startswith(f"{variable}={value} is invalid")
        assert accepted in error.message
        assert variable in error.remediation
