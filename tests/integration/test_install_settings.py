"""``agent.install(app)`` makes any app safe: the worker settings read back from a running worker.

A bare app (``Celery("bare_app")``, no configuration at all) run by ``worker-entry --app`` as a Codex
shard on Redis: the running worker reports late acks, reject on worker lost, prefetch 1, task events
and a visibility timeout longer than ``CODEX_PHASE_TIMEOUT`` (remote control ``inspect conf`` and
``stats``). The unprotected variant (``apply_worker_settings`` replaced by a no-op via sitecustomize)
runs with Celery's defaults. An app that sets ``task_acks_late=False`` is refused with CODEX-E003.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from testkit import make_api_key_login
from testkit.workers import ShardHome, WorkerFactory

ROOT = Path(__file__).resolve().parents[2]
ENTRY = str(Path(sys.executable).parent / "worker-entry")

pytestmark = [pytest.mark.broker, pytest.mark.codex]

BARE_APP = 'from celery import Celery\n\napp = Celery("bare_app")  # broker from CELERY_BROKER_URL, nothing else\n'
UNSAFE_APP = 'from celery import Celery\n\napp = Celery("unsafe_app")\napp.conf.update(task_acks_late=False)\n'
UNPROTECTED_SITE = """
import agent.worker.settings as settings

settings.apply_worker_settings = lambda app, config, environ=None: {"broker_transport_options": {"visibility_timeout": None}}
"""


def _pythonpath(*dirs: Path) -> str:
    """The test's modules, then this checkout (not whichever one the venv was installed from)."""
    return os.pathsep.join([*(str(d) for d in dirs), str(ROOT)])


def _read_back(broker_url: str, hostname: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The running worker's configuration and stats, over Celery's remote control.

    Asked again until it answers (up to 60 s): on Redis a broadcast is pub/sub, lost when it is sent
    before the worker's control consumer has subscribed, which may come after its queue consumer.
    """
    client = Celery("probe", broker=broker_url)
    conf = stats = None
    deadline = time.monotonic() + 60
    try:
        while (conf is None or stats is None) and time.monotonic() < deadline:
            inspect = client.control.inspect(destination=[hostname], timeout=3)
            conf = conf or (inspect.conf(with_defaults=True) or {}).get(hostname)
            stats = stats or (inspect.stats() or {}).get(hostname)
    finally:
        client.close()
    assert conf is not None and stats is not None, f"no remote-control answer from {hostname}"
    return conf, stats


@pytest.mark.parametrize("broker_url", ["redis"], indirect=True)
@pytest.mark.parametrize("protected", [True, False], ids=["install", "unprotected"])
def test_a_bare_apps_worker_runs_with_the_safe_settings(
    protected: bool,
    workers: WorkerFactory,
    shard_homes: Callable[..., ShardHome],
    codex_bin: str,
    broker_url: str,
    tmp_path: Path,
) -> None:
    (tmp_path / "bare_app.py").write_text(BARE_APP)
    dirs = [tmp_path]
    if not protected:
        site = tmp_path / "unprotected-site"
        site.mkdir()
        (site / "sitecustomize.py").write_text(UNPROTECTED_SITE)
        dirs.insert(0, site)
    home = shard_homes()
    make_api_key_login(codex_bin, home.codex_home)
    worker = workers(
        shard=0, home=home, app="bare_app:app", PYTHONPATH=_pythonpath(*dirs), CELERY_VISIBILITY_TIMEOUT=""
    )
    worker.wait_for("codex.gate.consuming", timeout=60)
    conf, stats = _read_back(broker_url, f"codex-0@{worker.env['AGENT_WORKER_NAME']}")
    in_force = {
        "task_acks_late": conf.get("task_acks_late"),
        "task_reject_on_worker_lost": conf.get("task_reject_on_worker_lost"),
        "worker_prefetch_multiplier": conf.get("worker_prefetch_multiplier"),
        "worker_send_task_events": conf.get("worker_send_task_events"),
        "visibility_timeout": (conf.get("broker_transport_options") or {}).get("visibility_timeout"),
    }
    if protected:
        assert in_force == {
            "task_acks_late": True,
            "task_reject_on_worker_lost": True,
            "worker_prefetch_multiplier": 1,
            "worker_send_task_events": True,
            "visibility_timeout": 21600.0,
        }
        assert stats["prefetch_count"] == 1
        applied = worker.events("codex.settings.applied")[0]
        assert applied["app"] == "bare_app" and applied["visibility_timeout"] > 3600  # CODEX_PHASE_TIMEOUT
    else:  # Celery's own defaults: a killed worker's phase acknowledged, Redis redelivers at 1 h
        assert in_force["task_acks_late"] is False and in_force["worker_send_task_events"] is False
        assert in_force["task_reject_on_worker_lost"] is None and in_force["visibility_timeout"] is None


def test_an_app_that_turns_late_acks_off_is_refused(tmp_path: Path, redis_url: str) -> None:
    """``task_acks_late=False`` on a Codex worker: exit 2 with CODEX-E003, nothing started."""
    (tmp_path / "unsafe_app.py").write_text(UNSAFE_APP)
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "PYTHONPATH": _pythonpath(tmp_path),
        "CODEX_SHARD_INDEX": "0",
        "CELERY_BROKER_URL": redis_url,
        "AGENT_STATE_DIR": str(tmp_path / "state"),
    }
    done = subprocess.run([ENTRY, "--app", "unsafe_app:app"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert "error CODEX-E003: Celery app 'unsafe_app' sets task_acks_late=False" in done.stderr
    assert "set it to True" in done.stderr
    line = json.loads(done.stdout.strip().splitlines()[-1])
    assert line["event"] == "codex.agent.startup_failed" and line["code"] == "CODEX-E003"
    assert not any(
        json.loads(raw).get("event") == "codex.agent.starting"
        for raw in done.stdout.splitlines()
        if raw.startswith("{")
    )


@pytest.mark.parametrize("broker_url", ["redis"], indirect=True)
@pytest.mark.parametrize("jobs", [True, False], ids=["jobs", "no-jobs"])
def test_a_worker_whose_uid_is_not_the_job_user_is_warned_at_start(
    jobs: bool,
    workers: WorkerFactory,
    shard_homes: Callable[..., ShardHome],
    codex_bin: str,
) -> None:
    """This root-run test worker owns its 0700 volume; jobs as uid 1000 could not read it: CODEX-W002
    at start (a warning: the gate opens). With no job image nothing would read it, so no warning."""
    assert os.getuid() != 1000
    home = shard_homes()
    make_api_key_login(codex_bin, home.codex_home)
    image = {"CODEX_JOB_IMAGE": "codex-worker-agent/job:dev"} if jobs else {}
    worker = workers(shard=0, home=home, **image)
    worker.wait_for("codex.gate.consuming", timeout=60)
    warned = worker.events("codex.check.warning", code="CODEX-W002")
    if jobs:
        assert len(warned) == 1 and warned[0]["check"] == "mount"
        assert (
            f"runs as uid {os.getuid()}" in warned[0]["message"] and "CODEX_JOB_USER=1000:1000" in warned[0]["message"]
        )
    else:
        assert warned == []
