"""The Celery settings a Codex worker's guarantees rest on, in one place, applied to any app.

:func:`apply_worker_settings` runs inside :func:`agent.install` on a Codex worker, whoever wrote the
app; the default app (:mod:`worker_entry.app`) takes the same values from here. An app that leaves a
setting alone gets the safe value; an app that sets one explicitly to a value that breaks a guarantee
is refused with CODEX-E003 before the worker starts, naming the setting, its value and what is
accepted. No Celery or Docker import: the benchmarks' bare app and publishers read these constants too.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import structlog

from agent.errors import UnsafeSettingError
from agent.settings import variables
from agent.worker.run_failures import retry_policy

if TYPE_CHECKING:
    from agent.settings.config import AgentConfig

__all__ = [
    "GUARANTEED",
    "SETTINGS",
    "VISIBILITY_TIMEOUT",
    "apply_worker_settings",
    "explicit_settings",
    "transport_options",
]

log = structlog.get_logger(__name__)

VISIBILITY_TIMEOUT = 6 * 3600.0
"""Redis only: seconds before an unacked task is redelivered, unless the phase limit needs longer."""


@dataclass(frozen=True)
class Setting:
    """One worker setting: the safe value, which values keep the guarantee, and why it matters."""

    name: str
    value: Any
    accepts: Callable[[Any], bool]
    accepted: str
    why: str


SETTINGS: tuple[Setting, ...] = (
    Setting(
        "task_acks_late",
        True,
        lambda v: v is True,
        "True",
        "a phase is acknowledged after it ran, so a worker killed mid-phase leaves it queued",
    ),
    Setting(
        "task_reject_on_worker_lost",
        True,
        lambda v: v is True,
        "True",
        "a phase whose pool process died goes back to its queue instead of being acknowledged",
    ),
    Setting(
        "worker_prefetch_multiplier",
        1,
        lambda v: v == 1 and not isinstance(v, bool),
        "1",
        "a closed gate holds no reserved phases: one login, one Codex task at a time",
    ),
    Setting(
        "worker_send_task_events",
        True,
        lambda v: isinstance(v, bool),
        "True or False",
        "Flower and celery-exporter see Codex tasks; off is your choice, it breaks no guarantee",
    ),
)
"""The settings :func:`apply_worker_settings` enforces, in order."""

GUARANTEED: dict[str, Any] = {s.name: s.value for s in SETTINGS}
"""The safe values, for apps built here (``worker_entry.app``) and the benchmarks' bare app."""

_REDELIVERING = ("redis", "rediss", "sentinel", "sqs")
"""Brokers that redeliver an unacknowledged task after ``visibility_timeout`` (AMQP never does)."""


def must_outlast(config: AgentConfig) -> float:
    """What Redis's visibility timeout must outlast: a running phase (``CODEX_PHASE_TIMEOUT``) and the
    longest retry countdown, since a retry waits in the worker as an unacknowledged message with an
    ETA (Celery's Redis caveat), and a shorter timeout hands it to a second worker meanwhile."""
    return max(config.phase_timeout, retry_policy(config).longest_countdown)


def default_visibility(config: AgentConfig) -> float:
    """Six hours, or twice :func:`must_outlast` when that is longer."""
    return max(VISIBILITY_TIMEOUT, 2 * must_outlast(config))


def transport_options(
    config: AgentConfig, environ: Mapping[str, str] | None = None, given: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """``broker_transport_options`` for a Codex worker: ``given`` plus a safe visibility timeout.

    ``CELERY_VISIBILITY_TIMEOUT``, when set, is the operator's and wins; else the app's own value
    stays (checked by :func:`apply_worker_settings`); else :func:`default_visibility`. Redis scans for
    unacked tasks to restore every second (``unacked_restore_throttle``) rather than kombu's default.

    Raises:
        ConfigError: ``CELERY_VISIBILITY_TIMEOUT`` is not a positive number (CODEX-E001).
    """
    env = os.environ if environ is None else environ
    options = dict(given or {})
    operator: float | None = variables.read(env, "CELERY_VISIBILITY_TIMEOUT")
    if operator is not None:
        options["visibility_timeout"] = operator
    else:
        options.setdefault("visibility_timeout", default_visibility(config))
    options.setdefault("unacked_restore_throttle", 1)
    return options


def explicit_settings(app: Any) -> dict[str, Any]:
    """The settings the app itself gave (``conf.update``, ``config_from_object``, keyword), not Celery's defaults."""
    conf = app.conf
    conf.task_acks_late  # noqa: B018  (finalizes a pending configuration, so its sources are merged)
    given: dict[str, Any] = {}
    for source in reversed(conf.maps[:-1]):  # the last map is Celery's defaults; earlier ones win
        given.update({k: source[k] for k in source.keys() if isinstance(k, str)})
    return given


def _seconds(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _redelivers(app: Any, config: AgentConfig) -> bool:
    url = str(app.conf.broker_url or config.broker_url).split(";", 1)[0]
    return urlsplit(url).scheme.split("+", 1)[0] in _REDELIVERING


def apply_worker_settings(app: Any, config: AgentConfig, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Give ``app`` the settings a Codex worker needs; returns what is now in force.

    Raises:
        UnsafeSettingError: the app explicitly set one to a value that breaks a guarantee (CODEX-E003).
        ConfigError: ``CELERY_VISIBILITY_TIMEOUT`` is invalid (CODEX-E001).
    """
    given = explicit_settings(app)
    applied: dict[str, Any] = {}
    for setting in SETTINGS:
        if setting.name in given:
            if not setting.accepts(given[setting.name]):
                raise UnsafeSettingError(
                    app=app.main,
                    setting=setting.name,
                    value=given[setting.name],
                    accepted=setting.accepted,
                    why=setting.why,
                )
            applied[setting.name] = given[setting.name]
        else:
            app.conf[setting.name] = applied[setting.name] = setting.value
    own = dict(given.get("broker_transport_options") or {})
    options = transport_options(config, environ, own)
    visibility = options["visibility_timeout"]
    operator = variables.raw(os.environ if environ is None else environ, "CELERY_VISIBILITY_TIMEOUT") is not None
    if _redelivers(app, config) and not (_seconds(visibility) and visibility > must_outlast(config)):
        countdown = retry_policy(config).longest_countdown
        if not operator:  # the app's own value: refused, it would run a phase twice at once
            raise UnsafeSettingError(
                app=app.main,
                setting="broker_transport_options['visibility_timeout']",
                value=visibility,
                accepted=(
                    f"more seconds than CODEX_PHASE_TIMEOUT ({config.phase_timeout:g}) and than the longest "
                    f"retry countdown ({countdown:g}), e.g. {default_visibility(config):g}"
                ),
                why="Redis hands an unacknowledged phase, or a retry waiting for its countdown, to another "
                "worker after it, while the first still holds it",
            )
        log.warning(
            "codex.settings.visibility_short",
            visibility_timeout=visibility,
            phase_timeout=config.phase_timeout,
            retry_countdown=countdown,
            variable="CELERY_VISIBILITY_TIMEOUT",
        )
    app.conf.broker_transport_options = applied["broker_transport_options"] = options
    return applied
