"""Publishing a Codex phase lands on its shard queue whatever was imported first, on a real broker.

Issue 10 item 4: ``import worker_entry.tasks`` then ``codex_phase.apply_async(...)``, with no app
imported first, published to a queue named ``celery`` that nothing consumes. Each publisher runs in
a fresh interpreter (pytest itself has long imported ``worker_entry.app``). Each test takes its own
message back off the broker by task id and leaves everyone else's alone (the broker is shared).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
from kombu import Connection, Queue

from agent.settings.topology import shard_for

KEY = "github.com/org/publish-probe"
SHARDS = 3


def _publish(broker_url: str, code: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter with only the publisher's environment."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/root"),
        "CELERY_BROKER_URL": broker_url,
        "CODEX_SHARDS": str(SHARDS),
    }
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True, timeout=60
    )


def _take(broker_url: str, queue: str, task_id: str) -> bool:
    """Remove the message of ``task_id`` from ``queue`` if it is there; others go back unacked."""
    with Connection(broker_url, connect_timeout=5) as connection:
        channel = connection.channel()
        bound = Queue(queue, durable=True)(channel)
        bound.declare()
        found = False
        while (message := bound.get(no_ack=False)) is not None:
            if message.headers.get("id") == task_id:
                message.ack()
                found = True
                break
        channel.close()  # every message taken and not acked returns to the queue
    return found


PUBLISH_WITHOUT_APP = f"""
    import json, sys
    from worker_entry.tasks import codex_phase  # nothing else imported first: no app of ours
    result = codex_phase.apply_async(kwargs={{"affinity_key": {KEY!r}, "run_id": "r-1", "phase": "plan"}})
    print(json.dumps({{"id": result.id, "app_modules": sorted(m for m in sys.modules if m == "worker_entry.app")}}))
"""


class TestPublishWithoutTheApp:
    def test_apply_async_lands_on_the_shard_queue(self, broker_url: str) -> None:
        """``import worker_entry.tasks`` then ``apply_async``: the message is in codex-N, not in ``celery``."""
        done = _publish(broker_url, PUBLISH_WITHOUT_APP)
        assert done.returncode == 0, done.stderr[-2000:]
        sent = json.loads(done.stdout)
        assert sent["app_modules"] == []  # the app really was never imported
        assert not _take(broker_url, "celery", sent["id"])
        assert _take(broker_url, f"codex-{shard_for(KEY, SHARDS)}", sent["id"])

    def test_without_the_task_level_routing_it_goes_to_celery(self, broker_url: str) -> None:
        """The same publish through Celery's plain ``Task.apply_async`` (the old behaviour) lands in ``celery``."""
        done = _publish(
            broker_url,
            PUBLISH_WITHOUT_APP.replace(
                "result = codex_phase.apply_async(",
                "from celery import Task\n    result = Task.apply_async(codex_phase, ",
            ),
        )
        assert done.returncode == 0, done.stderr[-2000:]
        task_id = json.loads(done.stdout)["id"]
        assert _take(broker_url, "celery", task_id)

    def test_no_affinity_key_fails_loudly_and_sends_nothing(self, broker_url: str) -> None:
        """An unroutable publish is CODEX-E050 in the publisher, not a message in a dead queue."""
        done = _publish(
            broker_url,
            """
            from worker_entry.tasks import codex_phase
            codex_phase.apply_async(kwargs={"run_id": "r-1", "phase": "plan"}, task_id="unroutable-probe")
        """,
        )
        assert done.returncode != 0 and "CODEX-E050" in done.stderr
        assert not _take(broker_url, "celery", "unroutable-probe")

    @pytest.mark.parametrize("how", ["delay", "signature"])
    def test_delay_and_signatures_route_too(self, broker_url: str, how: str) -> None:
        call = {
            "delay": f"codex_phase.delay(affinity_key={KEY!r}, run_id='r-1', phase='plan')",
            "signature": f"codex_phase.s(affinity_key={KEY!r}, run_id='r-1', phase='plan').apply_async()",
        }[how]
        done = _publish(
            broker_url,
            f"""
            from worker_entry.tasks import codex_phase
            print({call}.id)
        """,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        assert _take(broker_url, f"codex-{shard_for(KEY, SHARDS)}", done.stdout.strip())


SEND_BY_NAME = f"""
    import json
    from worker_entry.app import app  # the app alone: its include (worker_entry.tasks) is not imported yet
    known_before = "codex.phase" in app.tasks
    result = app.send_task("codex.phase", kwargs={{"affinity_key": {KEY!r}, "run_id": "r-1", "phase": "plan"}})
    print(json.dumps({{"id": result.id, "known_before": known_before}}))
"""


class TestPublishByName:
    def test_send_task_by_name_lands_on_the_shard_queue(self, broker_url: str) -> None:
        """``app.send_task("codex.phase", ...)`` from a publisher that never imported the task module."""
        done = _publish(broker_url, SEND_BY_NAME)
        assert done.returncode == 0, done.stderr[-2000:]
        sent = json.loads(done.stdout)
        assert sent["known_before"] is False  # the router had to import the app's include itself
        assert not _take(broker_url, "default", sent["id"])
        assert _take(broker_url, f"codex-{shard_for(KEY, SHARDS)}", sent["id"])

    def test_without_importing_the_include_it_went_to_default(self, broker_url: str) -> None:
        """The same publish with the router's import of ``include`` undone (the old behaviour): ``default``."""
        done = _publish(
            broker_url,
            SEND_BY_NAME.replace(
                "known_before =", "app.loader.import_default_modules = lambda: None\n    known_before ="
            ),
        )
        assert done.returncode == 0, done.stderr[-2000:]
        assert _take(broker_url, "default", json.loads(done.stdout)["id"])

    def test_celery_call_lands_on_the_shard_queue(self, broker_url: str) -> None:
        """The ``celery call`` command the runbook uses, with no ``--queue``."""
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": os.environ.get("HOME", "/root"),
            "CELERY_BROKER_URL": broker_url,
            "CODEX_SHARDS": str(SHARDS),
        }
        done = subprocess.run(
            [
                os.path.join(os.path.dirname(sys.executable), "celery"),
                "-A",
                "worker_entry.app:app",
                "call",
                "codex.phase",
                "--kwargs",
                json.dumps({"affinity_key": KEY, "run_id": "r-1", "phase": "plan"}),
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        task_id = done.stdout.strip().splitlines()[-1]
        assert _take(broker_url, f"codex-{shard_for(KEY, SHARDS)}", task_id)
