"""The skip-to-failure switch: with ``CODEX_AGENT_REQUIRE_ALL=1`` an absent component fails the run.

Tests skip only when a component (Docker, the Codex CLI, a broker) is absent. CI sets the variable
(see ``.ci/run``) so that a skip there means a broken environment, never a silently green build.
Expected failures (``xfail``) are left alone. Load as a plugin: ``-p testkit.require_all``.
"""

from __future__ import annotations

import os
from collections.abc import Generator

import pytest
from _pytest.reports import CollectReport, TestReport

__all__ = [
    "REQUIRE_ALL_ENV",
    "require_all",
    "pytest_runtest_makereport",
    "pytest_make_collect_report",
]

REQUIRE_ALL_ENV = "CODEX_AGENT_REQUIRE_ALL"


def require_all() -> bool:
    """Return whether skips must count as failures."""
    return os.environ.get(REQUIRE_ALL_ENV, "") == "1"


def _skip_reason(report: TestReport | CollectReport) -> str:
    """Return the reason a skipped report carries (``longrepr`` is ``(path, line, reason)``)."""
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


def _fail_skip(report: TestReport | CollectReport) -> None:
    """Turn one skipped report into a failure that names the missing component."""
    if report.skipped and not hasattr(report, "wasxfail") and require_all():
        report.outcome = "failed"
        report.longrepr = (
            f"{REQUIRE_ALL_ENV}=1 turns this skip into a failure; missing component: {_skip_reason(report)}"
        )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, None]:
    """Fail a test that skipped in setup, call or teardown."""
    outcome = yield
    _fail_skip(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(
    collector: pytest.Collector,
) -> Generator[None, pytest.CollectReport, None]:
    """Fail a module that skipped at import (``importorskip``, ``allow_module_level``)."""
    outcome = yield
    _fail_skip(outcome.get_result())
