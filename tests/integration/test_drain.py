"""``codex-agent drain`` on real RabbitMQ and Redis: a removed shard's tasks move, none lost, none doubled.

Each test gets a broker namespace of its own (a fresh RabbitMQ vhost, or an empty Redis database
claimed for the test), so the usual ``codex-N`` queue names never touch another test's queues.
Tasks are published by the real Celery publisher app with a 4-shard configuration.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kombu import Connection, Queue

import worker_entry.tasks  # noqa: F401  (registers the shared tasks with the publisher app)
from agent.errors import DrainError
from agent.routing.drain import Move, drain, task_kinds_from_app
from agent.settings.config import load
from testkit.rabbit import rabbitmqctl
from testkit.workers import BrokerView, keys_for_shard
from worker_entry.app import create_app

pytestmark = [pytest.mark.broker, pytest.mark.timeout(120)]

QUEUES = ("default", "codex-0", "codex-1", "codex-2", "codex-3")
CODEX_AGENT = str(Path(sys.executable).parent / "codex-agent")


@pytest.fixture
def redis_db(redis_url: str) -> Iterator[str]:
    """An empty Redis database (4..15) claimed with a marker key; flushed afterwards."""
    import redis

    base = redis_url.rsplit("/", 1)[0]
    for db in range(15, 3, -1):
        client = redis.Redis.from_url(f"{base}/{db}")
        if client.dbsize() == 0 and client.set("cwa_drain_claim", "1", nx=True):
            try:
                yield f"{base}/{db}"
            finally:
                client.flushdb()
            return
    pytest.fail("no empty Redis database in 4..15 for the drain test")


@pytest.fixture(params=["rabbitmq", "redis"])
def broker_url(request: pytest.FixtureRequest) -> str:
    """Every drain test runs once on RabbitMQ and once on Redis, in a private namespace."""
    url: str = request.getfixturevalue("rabbitmq_vhost" if request.param == "rabbitmq" else "redis_db")
    return url


@pytest.fixture
def broker(broker_url: str) -> BrokerView:
    view = BrokerView(broker_url, queues=QUEUES)
    view.purge()
    return view


def counts(broker: BrokerView) -> dict[str, int]:
    return {name: broker.count(name) for name in QUEUES}


def task_ids(broker_url: str) -> Counter[str]:
    """Every task id waiting in the test's queues (consumes them)."""
    seen: Counter[str] = Counter()
    with Connection(broker_url, connect_timeout=5) as connection:
        for name in QUEUES:
            queue = Queue(name, durable=True)(connection.default_channel)
            while (message := queue.get(no_ack=True)) is not None:
                seen[message.headers["id"]] += 1
    return seen


def publish_to_removed_shard(broker_url: str, count: int) -> tuple[list[str], dict[str, str]]:
    """``count`` Codex phases routed to codex-3 with 4 shards, one pinned to shard 3, one plain task.

    Returns the task ids and, per id, the queue it must reach with 3 shards.
    """
    publisher = create_app(load({"CELERY_BROKER_URL": broker_url, "CODEX_SHARDS": "4"}))
    from agent.settings.topology import shard_for

    expected: dict[str, str] = {}
    for key in keys_for_shard(3, count, shards=4, prefix=f"drain-{secrets.token_hex(2)}"):
        result = publisher.send_task(
            "codex.phase", kwargs={"affinity_key": key, "run_id": f"run-{key}", "phase": "plan"}
        )
        expected[result.id] = f"codex-{shard_for(key, 3)}"
    pinned_key = keys_for_shard(1, 1, shards=3, prefix="drain-pinned")[0]
    pinned = publisher.send_task(
        "codex.phase", kwargs={"affinity_key": pinned_key, "run_id": "run-pinned", "phase": "review", "codex_shard": 3}
    )
    expected[pinned.id] = "codex-1"  # shard 3 is gone: routed by its key
    plain = publisher.send_task("housekeeping", kwargs={"label": "stray"}, queue="codex-3")
    expected[plain.id] = "default"
    publisher.close()
    return list(expected), expected


class TestDrain:
    def test_moves_every_task_once_to_its_new_queue(self, broker_url: str, broker: BrokerView, tmp_path: Path) -> None:
        """12 tasks in codex-3, drained to 3 shards: each lands once, where the router sends it now."""
        ids, expected = publish_to_removed_shard(broker_url, 10)
        before = counts(broker)
        assert before == {"default": 0, "codex-0": 0, "codex-1": 0, "codex-2": 0, "codex-3": len(ids)}

        app = create_app(load({"CELERY_BROKER_URL": broker_url, "CODEX_SHARDS": "3", "AGENT_STATE_DIR": str(tmp_path)}))
        report = drain(broker_url, "codex-3", shards=3, kinds=task_kinds_from_app(app), state_dir=tmp_path)

        assert report.ok, report.error
        assert {m.task_id: m.to for m in report.moves} == expected
        after = counts(broker)
        wanted = Counter(expected.values())
        assert after == {q: wanted.get(q, 0) for q in QUEUES} and report.left == 0
        assert task_ids(broker_url) == Counter(ids)  # every id exactly once

    def test_dry_run_moves_nothing(self, broker_url: str, broker: BrokerView, tmp_path: Path) -> None:
        """--dry-run reports the plan and leaves every task where it was."""
        ids, expected = publish_to_removed_shard(broker_url, 4)
        report = drain(broker_url, "codex-3", shards=3, dry_run=True, state_dir=tmp_path)
        assert report.ok, report.error
        assert {m.task_id: m.to for m in report.moves} == expected
        assert counts(broker)["codex-3"] == len(ids) == report.left
        assert task_ids(broker_url) == Counter(ids)

    def test_limit_stops_midway_and_a_second_run_finishes(
        self, broker_url: str, broker: BrokerView, tmp_path: Path
    ) -> None:
        """The CLI moves K with --limit, the rest stay queued; running it again moves the rest, none doubled."""
        ids, _ = publish_to_removed_shard(broker_url, 6)
        env = {
            "PATH": str(Path(sys.executable).parent),
            "CELERY_BROKER_URL": broker_url,
            "CODEX_SHARDS": "3",
            "AGENT_STATE_DIR": str(tmp_path),
        }
        first = subprocess.run(
            [CODEX_AGENT, "drain", "codex-3", "--limit", "3", "--json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert first.returncode == 0, first.stderr
        assert json.loads(first.stdout)["moved"] == 3
        assert broker.count("codex-3") == len(ids) - 3
        second = subprocess.run([CODEX_AGENT, "drain", "codex-3"], env=env, capture_output=True, text=True, timeout=60)
        assert second.returncode == 0, second.stderr
        assert f"moved {len(ids) - 3} task(s), 0 left in codex-3" in second.stdout
        assert task_ids(broker_url) == Counter(ids)

    def test_a_failing_target_stops_the_drain_and_loses_nothing(
        self, broker_url: str, broker: BrokerView, tmp_path: Path
    ) -> None:
        """When the broker refuses a copy, the drain stops with E060: moved stay moved, the rest stay queued."""
        ids, expected = publish_to_removed_shard(broker_url, 10)
        order = list(expected.values())  # both brokers hand messages out in publish order
        broken = next(q for q in order if q.startswith("codex-") and order.index(q) > 0)
        undo = _refuse_publishes_to(broker_url, broken)
        try:
            report = drain(broker_url, "codex-3", shards=3, state_dir=tmp_path)
        finally:
            undo()
        assert report.error is not None and report.error.code == "CODEX-E060"
        assert 0 < len(report.moves) < len(ids)
        assert all(m.to != broken for m in report.moves)
        assert broker.count("codex-3") == len(ids) - len(report.moves)

        again = drain(broker_url, "codex-3", shards=3, state_dir=tmp_path)
        assert again.ok, again.error
        assert {m.task_id: m.to for m in report.moves + again.moves} == expected
        assert task_ids(broker_url) == Counter(ids)

    def test_an_interrupted_drain_resumes_without_a_second_copy(
        self, broker_url: str, broker: BrokerView, tmp_path: Path
    ) -> None:
        """Ctrl-C after a copy is confirmed but before its original is acked: the next drain drops that original.

        The broker hands the unacknowledged original back to codex-3 when the connection closes; the
        journal tells the second run that its copy already waits in the new queue.
        """
        ids, expected = publish_to_removed_shard(broker_url, 6)
        copied: list[Move] = []

        def interrupt_at_third(move: Move) -> None:
            copied.append(move)
            if len(copied) == 3:
                raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            drain(broker_url, "codex-3", shards=3, state_dir=tmp_path, on_copied=interrupt_at_third)
        interrupted = copied[-1]
        assert broker.count(interrupted.to) >= 1
        assert broker.count("codex-3") == len(ids) - 2  # the third original came back

        again = drain(broker_url, "codex-3", shards=3, state_dir=tmp_path)
        assert again.ok, again.error
        assert [m.task_id for m in again.already_moved] == [interrupted.task_id]
        assert len(again.moves) == len(ids) - 3 and again.left == 0
        assert not list((tmp_path / "drain").glob("*.jsonl"))  # an empty queue: the journal is done
        assert task_ids(broker_url) == Counter(ids)  # every id exactly once

    def test_a_second_drain_of_the_same_queue_is_refused(
        self, broker_url: str, broker: BrokerView, tmp_path: Path
    ) -> None:
        """While one drain runs, another of the same queue stops at once and touches nothing."""
        ids, _ = publish_to_removed_shard(broker_url, 3)
        outcome: dict[str, Any] = {}

        def try_another(move: Move) -> None:
            if not outcome:
                with pytest.raises(DrainError, match="another drain of codex-3") as refused:
                    drain(broker_url, "codex-3", shards=3, state_dir=tmp_path)
                outcome["error"] = refused.value

        report = drain(broker_url, "codex-3", shards=3, state_dir=tmp_path, on_copied=try_another)
        assert report.ok, report.error
        assert outcome["error"].code == "CODEX-E060"
        assert task_ids(broker_url) == Counter(ids)

    def test_refuses_a_live_queue(self, broker_url: str, broker: BrokerView, tmp_path: Path) -> None:
        """Draining a queue that still has a shard is refused before anything is touched."""
        env = {
            "PATH": str(Path(sys.executable).parent),
            "CELERY_BROKER_URL": broker_url,
            "AGENT_STATE_DIR": str(tmp_path),
        }
        done = subprocess.run(
            [CODEX_AGENT, "drain", "codex-2", "--shards", "3"], env=env, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 1 and "CODEX-E060" in done.stderr and "still a live queue" in done.stderr


def _refuse_publishes_to(broker_url: str, queue: str) -> Any:
    """Make the real broker refuse new messages for ``queue``; returns the undo.

    RabbitMQ: a policy of max-length 0 with ``reject-publish`` (confirms turn it into a nack).
    Redis: the queue's key holds a string, so LPUSH fails with WRONGTYPE.
    """
    if broker_url.startswith("amqp"):
        vhost = broker_url.rsplit("/", 1)[1]
        rabbitmqctl(
            "set_policy",
            "-p",
            vhost,
            "--apply-to",
            "queues",
            "cwa-refuse",
            f"^{queue}$",
            '{"max-length": 0, "overflow": "reject-publish"}',
        )
        return lambda: rabbitmqctl("clear_policy", "-p", vhost, "cwa-refuse")
    import redis

    client = redis.Redis.from_url(broker_url)
    client.delete(queue)
    client.set(queue, "not a list")
    return lambda: client.delete(queue)


ADOPTER_APP = """
from celery import Celery

import agent

config = agent.load_config()
app = Celery("myproj", broker=config.broker_url)
app.conf.task_default_queue = "myproj-default"
agent.add_router(app, config)


@app.task(base=agent.CodexTask, bind=True, name="myproj.review_pr", affinity_arg="repo")
def review_pr(self, repo, pr, codex_shard=None):
    return pr


@app.task(name="myproj.notify")
def notify(text):
    return text
"""
ADOPTER_QUEUES = (*QUEUES, "myproj-default", "celery")


class TestDrainWithTheAdoptersApp:
    """An adopter's phases (``myproj.review_pr``, routed by ``repo``) in a removed shard's queue."""

    def _publish(self, project: Path, broker_url: str) -> dict[str, str]:
        """Phases routed to codex-3 with 4 shards by the adopter's own app, a pinned one and a plain
        task; per id, the queue it must reach with 3 shards."""
        from agent.settings.topology import shard_for

        code = (
            "import json, sys\n"
            "from myproj_celery import review_pr, notify\n"
            "keys, pinned = json.loads(sys.argv[1])\n"
            "ids = {review_pr.apply_async(kwargs={'repo': k, 'pr': 1}).id: k for k in keys}\n"
            "ids[review_pr.apply_async(kwargs={'repo': pinned, 'pr': 2, 'codex_shard': 3}).id] = pinned\n"
            "ids[notify.apply_async(args=('stray',), queue='codex-3').id] = None\n"
            "print(json.dumps(ids))\n"
        )
        keys = keys_for_shard(3, 4, shards=4, prefix=f"adopt-{secrets.token_hex(2)}")
        pinned = keys_for_shard(1, 1, shards=3, prefix="adopt-pinned")[0]
        env = {
            "PATH": str(Path(sys.executable).parent),
            "CELERY_BROKER_URL": broker_url,
            "CODEX_SHARDS": "4",
            "PYTHONPATH": f"{project}:{Path(__file__).resolve().parents[2]}",
        }
        done = subprocess.run(
            [sys.executable, "-c", code, json.dumps([keys, pinned])],
            env=env,
            cwd=project,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return {
            i: ("myproj-default" if k is None else f"codex-{shard_for(k, 3)}")
            for i, k in json.loads(done.stdout).items()
        }

    def _drain(self, project: Path, broker_url: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
        env = {
            "PATH": str(Path(sys.executable).parent),
            "CELERY_BROKER_URL": broker_url,
            "CODEX_SHARDS": "3",
            "AGENT_STATE_DIR": str(tmp_path / "state"),
            "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
        }
        return subprocess.run(
            [CODEX_AGENT, "drain", "codex-3", "--json", *args],
            env=env,
            cwd=project,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def test_the_apps_tasks_reach_their_queues_and_the_default_app_leaves_them_queued(
        self,
        broker_url: str,
        tmp_path: Path,
    ) -> None:
        project = tmp_path / "project"
        project.mkdir()
        (project / "myproj_celery.py").write_text(ADOPTER_APP)
        broker = BrokerView(broker_url, queues=ADOPTER_QUEUES)
        broker.purge()
        expected = self._publish(project, broker_url)
        assert broker.count("codex-3") == len(expected) == 6

        # Without the adopter's app: the first unknown task stops the drain, nothing goes to default.
        refused = self._drain(project, broker_url, tmp_path)
        assert refused.returncode == 1, refused.stderr
        report = json.loads(refused.stdout)
        assert report["error"]["code"] == "CODEX-E051" and "myproj.review_pr" in report["error"]["message"]
        assert report["moved"] == 0 and broker.count("codex-3") == 6 and broker.count("default") == 0

        # With it (imported from the working directory): each task where the app routes it now.
        moved = self._drain(project, broker_url, tmp_path, "--app", "myproj_celery:app")
        assert moved.returncode == 0, moved.stderr
        report = json.loads(moved.stdout)
        assert {t["task_id"]: t["to"] for t in report["tasks"]} == expected and report["left"] == 0
        assert broker.count("default") == 0 and broker.count("celery") == 0
        assert {q: broker.count(q) for q in ADOPTER_QUEUES} == {
            q: Counter(expected.values()).get(q, 0) for q in ADOPTER_QUEUES
        }
        assert task_ids_in(broker_url, ADOPTER_QUEUES) == Counter(list(expected))  # every id exactly once

    def test_unprotected_variant_guesses_and_lands_in_default(self, broker_url: str, tmp_path: Path) -> None:
        """The old classification (no app: a task without ``affinity_key`` or a pin is not a Codex task)
        sends the adopter's phases to ``default``, where no Codex worker runs them (then stops at the
        pinned one, whose dead pin it cannot reroute without the task's affinity argument)."""
        project = tmp_path / "project"
        project.mkdir()
        (project / "myproj_celery.py").write_text(ADOPTER_APP)
        broker = BrokerView(broker_url, queues=ADOPTER_QUEUES)
        broker.purge()
        expected = self._publish(project, broker_url)
        report = drain(broker_url, "codex-3", shards=3, state_dir=tmp_path)  # kinds guessed, default queue 'default'
        phases = list(expected)[:4]  # published first, handed out first
        assert [m.task_id for m in report.moves] == phases
        assert {m.to for m in report.moves} == {"default"} and all(expected[i].startswith("codex-") for i in phases)
        assert broker.count("default") == 4
        assert report.error is not None and report.error.code == "CODEX-E060"


def task_ids_in(broker_url: str, queues: tuple[str, ...]) -> Counter[str]:
    """Every task id waiting in ``queues`` (consumes them)."""
    seen: Counter[str] = Counter()
    with Connection(broker_url, connect_timeout=5) as connection:
        for name in queues:
            queue = Queue(name, durable=True)(connection.default_channel)
            while (message := queue.get(no_ack=True)) is not None:
                seen[message.headers["id"]] += 1
    return seen
