"""agent.worker.settings: the settings a Codex worker's guarantees rest on, applied to any app."""

from __future__ import annotations

from typing import Any

import pytest
from celery import Celery
from structlog.testing import capture_logs

from agent.errors import ConfigError, UnsafeSettingError
from agent.settings.config import load
from agent.worker.settings import GUARANTEED, VISIBILITY_TIMEOUT, apply_worker_settings, explicit_settings

REDIS = "redis://localhost:6379/0"
AMQP = "amqp://guest:guest@localhost:5672//"


def codex_config(broker: str = REDIS, **env: str) -> Any:
    return load({"CODEX_SHARD_INDEX": "0", "CELERY_BROKER_URL": broker, **env})


def test_a_bare_app_gets_every_safe_value() -> None:
    app = Celery("bare", broker=REDIS)
    applied = apply_worker_settings(app, codex_config(), environ={})
    for name, value in GUARANTEED.items():
        assert app.conf[name] == value == applied[name], name
    assert app.conf.broker_transport_options["visibility_timeout"] == VISIBILITY_TIMEOUT > 3600


def test_the_visibility_timeout_outlives_a_long_phase_limit() -> None:
    app = Celery("bare", broker=REDIS)
    apply_worker_settings(app, codex_config(CODEX_PHASE_TIMEOUT="30000"), environ={})
    assert app.conf.broker_transport_options["visibility_timeout"] > 30000


def test_settings_the_app_chose_well_are_kept() -> None:
    app = Celery("mine", broker=REDIS)
    app.conf.update(worker_send_task_events=False, broker_transport_options={"visibility_timeout": 43200, "x": 1})
    apply_worker_settings(app, codex_config(), environ={})
    assert app.conf.worker_send_task_events is False  # no guarantee rests on events
    assert (
        app.conf.broker_transport_options["visibility_timeout"] == 43200 and app.conf.broker_transport_options["x"] == 1
    )


@pytest.mark.parametrize(
    ("name", "value", "accepted"),
    [
        ("task_acks_late", False, "True"),
        ("task_reject_on_worker_lost", False, "True"),
        ("worker_prefetch_multiplier", 4, "1"),
        ("worker_prefetch_multiplier", 0, "1"),
    ],
)
def test_an_explicit_breaking_value_is_refused(name: str, value: Any, accepted: str) -> None:
    """CODEX-E003 naming the setting, its value and what is accepted; the app is left as it was."""
    app = Celery("mine", broker=AMQP)
    app.conf.update({name: value})
    with pytest.raises(UnsafeSettingError) as info:
        apply_worker_settings(app, codex_config(AMQP), environ={})
    error = info.value
    assert error.code == "CODEX-E003" and error.exit_code == 2
    assert f"{name}={value!r}" in error.message and f"set it to {accepted}" in error.remediation
    assert "'mine'" in error.message


def test_config_from_object_counts_as_explicit() -> None:
    class Settings:
        task_acks_late = False

    app = Celery("mine", broker=AMQP)
    app.config_from_object(Settings)
    assert explicit_settings(app)["task_acks_late"] is False
    with pytest.raises(UnsafeSettingError, match="task_acks_late=False"):
        apply_worker_settings(app, codex_config(AMQP), environ={})


def test_a_short_visibility_timeout_of_the_app_is_refused_on_redis_only() -> None:
    app = Celery("mine", broker=REDIS)
    app.conf.broker_transport_options = {"visibility_timeout": 3600}  # equal to the phase limit: too short
    with pytest.raises(UnsafeSettingError, match=r"visibility_timeout'\]=3600") as info:
        apply_worker_settings(app, codex_config(), environ={})
    assert "CODEX_PHASE_TIMEOUT (3600)" in info.value.remediation
    amqp = Celery("mine", broker=AMQP)
    amqp.conf.broker_transport_options = {"visibility_timeout": 3600}  # AMQP never redelivers by time
    apply_worker_settings(amqp, codex_config(AMQP), environ={})


def test_the_visibility_timeout_also_outlasts_the_longest_retry_countdown() -> None:
    """A retry waits in the worker as an unacked message with an ETA: on Redis a visibility timeout
    shorter than its countdown hands it to a second worker (seen with bench.limit_hold: a 30 s timeout
    against a 60 s countdown ran each last retry twice)."""
    slow_retries = {"CODEX_JOB_RETRIES": "3", "CODEX_JOB_RETRY_BACKOFF": "3000"}  # the last waits 12000 s
    app = Celery("mine", broker=REDIS)
    app.conf.broker_transport_options = {"visibility_timeout": 7200}  # outlasts the phase, not the retry
    with pytest.raises(UnsafeSettingError) as info:
        apply_worker_settings(app, codex_config(**slow_retries), environ={})
    assert "longest retry countdown (12000)" in info.value.remediation
    kept = Celery("mine", broker=REDIS)
    kept.conf.broker_transport_options = {"visibility_timeout": 7200}
    apply_worker_settings(kept, codex_config(CODEX_JOB_RETRIES="2", CODEX_JOB_RETRY_BACKOFF="3000"), environ={})
    bare = Celery("bare", broker=REDIS)
    apply_worker_settings(bare, codex_config(**slow_retries), environ={})
    assert bare.conf.broker_transport_options["visibility_timeout"] == 24000  # twice the longest wait
    with capture_logs() as logs:
        apply_worker_settings(Celery("x", broker=REDIS), codex_config(), environ={"CELERY_VISIBILITY_TIMEOUT": "45"})
    (short,) = [line for line in logs if line["event"] == "codex.settings.visibility_short"]
    assert (short["retry_countdown"], short["phase_timeout"]) == (60.0, 3600.0)


def test_the_operators_variable_wins_and_is_only_warned_about() -> None:
    app = Celery("mine", broker=REDIS)
    app.conf.broker_transport_options = {"visibility_timeout": 43200}
    apply_worker_settings(app, codex_config(), environ={"CELERY_VISIBILITY_TIMEOUT": "8"})
    assert app.conf.broker_transport_options["visibility_timeout"] == 8.0
    with pytest.raises(ConfigError, match="CELERY_VISIBILITY_TIMEOUT='soon'"):
        apply_worker_settings(Celery("x", broker=REDIS), codex_config(), environ={"CELERY_VISIBILITY_TIMEOUT": "soon"})


def test_the_default_app_passes_its_own_check() -> None:
    from worker_entry.app import create_app

    config = codex_config()
    app = create_app(config)
    apply_worker_settings(app, config, environ={})
    assert app.conf.task_acks_late is True and app.conf.worker_send_task_events is True
