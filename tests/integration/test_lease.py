"""The fleet-wide login lease between real processes, on real RabbitMQ and Redis.

Holders are real processes (``leaser.py``, or ``worker-entry``) with real ``auth.json`` files shaped
like a ChatGPT login; copies are byte-for-byte copies in a second directory or volume, as an
operator copying a login to a second host would make them. Each test uses fresh tokens, so its
fingerprints (and leases) are its own on the shared brokers.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from agent.fleet.lease import HISTORY_FILE
from agent.login.auth import AUTH_FILE
from testkit import make_api_key_login
from testkit.private_brokers import PrivateBroker, PrivateRabbitMQ, PrivateRedis
from testkit.workers import BrokerView, ShardHome, WorkerFactory, agent_status, keys_for_shard, wait_until

LEASER = Path(__file__).with_name("leaser.py")


# -- test logins ----------------------------------------------------------------------------


def _jwt(claims: dict[str, Any]) -> str:
    def part(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}."


def write_chatgpt_login(codex_home: Path, account: str = "acct-test") -> str:
    """Write a ChatGPT-shaped ``auth.json`` with fresh tokens, as Codex writes it (temp file, rename).

    Returns the refresh token, so a test can assert it never leaves the file.
    """
    codex_home.mkdir(mode=0o700, parents=True, exist_ok=True)
    exp = int(time.time()) + 3600
    auth = {"https://api.openai.com/auth": {"chatgpt_account_id": account, "chatgpt_plan_type": "plus"}}
    content = {
        "OPENAI_API_KEY": None,
        "tokens": {
            "id_token": _jwt({"exp": exp, "email": "test@example.invalid", **auth}),
            "access_token": _jwt({"exp": exp, **auth}),
            "refresh_token": (refresh := f"rt_{secrets.token_urlsafe(32)}"),
            "account_id": account,
        },
        "last_refresh": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
    }
    staged = codex_home / f".{AUTH_FILE}.tmp"
    staged.write_text(json.dumps(content))
    os.chmod(staged, 0o600)
    os.replace(staged, codex_home / AUTH_FILE)
    return refresh


def copy_login(source: Path, target: Path) -> None:
    """A copy of ``source``'s login in a new ``target`` (what copying a volume to a second host does)."""
    target.mkdir(mode=0o700, parents=True, exist_ok=True)
    shutil.copy2(source / AUTH_FILE, target / AUTH_FILE)


# -- holder processes -----------------------------------------------------------------------


class Leaser:
    """A running ``leaser.py``; commands on stdin, answers on stdout, JSON logs in a file."""

    def __init__(self, home: Path, worker: str, url: str, log: Path, *extra: str) -> None:
        self.worker, self.log = worker, log
        with log.open("w") as err:
            self.process = subprocess.Popen(
                [sys.executable, str(LEASER), str(home), worker, url, *extra],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
            )

    def check(self) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write("check\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        assert line, f"{self.worker} answered nothing:\n{self.log.read_text()[-2000:]}"
        answer: dict[str, Any] = json.loads(line)
        return answer

    def events(self, name: str) -> list[dict[str, Any]]:
        lines = [json.loads(raw) for raw in self.log.read_text().splitlines() if raw.startswith("{")]
        return [line for line in lines if line.get("event") == name]

    def quit(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(timeout=20)

    def kill9(self) -> None:
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)


@pytest.fixture
def leasers(tmp_path: Path) -> Iterator[Callable[..., Leaser]]:
    """``leasers(home, worker, url, *extra)`` starts a holder process; all are killed at teardown."""
    started: list[Leaser] = []

    def start(home: Path, worker: str, url: str, *extra: str) -> Leaser:
        leaser = Leaser(home, worker, url, tmp_path / f"{worker}.log", *extra)
        started.append(leaser)
        return leaser

    yield start
    for leaser in started:
        if leaser.process.poll() is None:
            leaser.process.kill()
        leaser.process.wait(timeout=10)


def _holder_and_copy(leasers: Callable[..., Leaser], url: str, tmp_path: Path, *extra: str) -> tuple[Leaser, Path]:
    """A process holding the lease of a fresh login in ``vol-a``, and a copy of that login in ``vol-b``."""
    original, copy = tmp_path / "vol-a", tmp_path / "vol-b"
    write_chatgpt_login(original)
    copy_login(original, copy)
    first = leasers(original, "holder-a", url, *extra)
    assert first.check() == {"status": "held", "reachable": True, "fingerprints": 1}
    return first, copy


def _refused_by(answer: dict[str, Any], holder: Leaser, volume: str) -> None:
    assert answer.get("error") == "CODEX-E013", answer
    message = answer["message"]
    assert f"worker {holder.worker} on host {socket.gethostname()}" in message, message
    assert f"volume {volume}" in message and f"pid {holder.process.pid}" in message, message


# -- between holder processes ---------------------------------------------------------------


class TestSecondHolder:
    def test_a_copy_is_refused_naming_the_first_holder(
        self, leasers: Callable[..., Leaser], broker_url: str, tmp_path: Path
    ) -> None:
        """Two directories, one login: the second holder gets CODEX-E013 naming the first's worker, host and volume."""
        first, copy = _holder_and_copy(leasers, broker_url, tmp_path)
        token = json.loads((copy / AUTH_FILE).read_text())["tokens"]["refresh_token"]
        second = leasers(copy, "holder-b", broker_url)
        _refused_by(second.check(), first, "vol-a")
        assert second.events("codex.lease.refused")
        for text in (first.log.read_text(), second.log.read_text(), (copy / HISTORY_FILE).read_text()):
            assert token not in text  # only fingerprints leave auth.json

    def test_a_clean_stop_frees_the_login_at_once(
        self, leasers: Callable[..., Leaser], broker_url: str, tmp_path: Path
    ) -> None:
        """After the holder stops cleanly, the copy's very next check wins (no TTL to wait out)."""
        first, copy = _holder_and_copy(leasers, broker_url, tmp_path)
        second = leasers(copy, "holder-b", broker_url)
        assert second.check()["error"] == "CODEX-E013"
        first.quit()
        assert first.events("codex.lease.released")
        assert second.check()["status"] == "held"


class TestRefreshedOriginal:
    def test_a_copy_made_before_a_refresh_is_still_refused(
        self, leasers: Callable[..., Leaser], broker_url: str, tmp_path: Path
    ) -> None:
        """The original refreshes (new refresh token) after the copy was made: the copy is still refused."""
        first, stale_copy = _holder_and_copy(leasers, broker_url, tmp_path)
        original, fresh_copy = tmp_path / "vol-a", tmp_path / "vol-c"
        write_chatgpt_login(original)  # the refresh: Codex renames a new auth.json into place
        copy_login(original, fresh_copy)
        assert first.check() == {"status": "held", "reachable": True, "fingerprints": 2}
        assert first.events("codex.lease.added")
        _refused_by(leasers(stale_copy, "holder-b", broker_url).check(), first, "vol-a")
        _refused_by(leasers(fresh_copy, "holder-c", broker_url).check(), first, "vol-a")

    def test_without_the_fingerprint_history_the_stale_copy_gets_through(
        self, leasers: Callable[..., Leaser], broker_url: str, tmp_path: Path
    ) -> None:
        """The test of the test: an identity of only the newest fingerprint (keep 1) lets the pre-refresh copy run."""
        first, stale_copy = _holder_and_copy(leasers, broker_url, tmp_path, "--keep", "1")
        write_chatgpt_login(tmp_path / "vol-a")
        assert first.check()["fingerprints"] == 1
        assert leasers(stale_copy, "holder-b", broker_url).check()["status"] == "held"  # two places: unsafe

    def test_a_refused_volume_logged_in_afresh_is_let_through(
        self, leasers: Callable[..., Leaser], broker_url: str, tmp_path: Path
    ) -> None:
        """The remediation works: the refused copy gets a login of its own, and its next check holds."""
        first, copy = _holder_and_copy(leasers, broker_url, tmp_path)
        second = leasers(copy, "holder-b", broker_url)
        assert second.check()["error"] == "CODEX-E013"
        write_chatgpt_login(copy, account="acct-other")  # log this volume in afresh
        assert second.check() == {"status": "held", "reachable": True, "fingerprints": 1}
        assert first.check()["status"] == "held"


class TestUndoneCopy:
    """An operator copies another volume's live login over this volume's own by mistake (E013), then
    restores this volume's own earlier auth.json: the gate reopens; a live copy never does."""

    @staticmethod
    def _own_then_copy(
        leasers: Callable[..., Leaser], url: str, tmp_path: Path, *extra: str
    ) -> tuple[Leaser, Leaser, bytes]:
        first, _ = _holder_and_copy(leasers, url, tmp_path)
        own = tmp_path / "vol-b"
        write_chatgpt_login(own, account="acct-b")  # vol-b's login of its own
        second = leasers(own, "holder-b", url, *extra)
        assert second.check()["status"] == "held"
        earlier = (own / AUTH_FILE).read_bytes()
        copy_login(tmp_path / "vol-a", own)  # the mistake
        _refused_by(second.check(), first, "vol-a")
        return first, second, earlier

    @pytest.mark.parametrize("undo", [True, False], ids=["reopens", "without-the-undo-stays-refused"])
    def test_restoring_the_volumes_own_earlier_login_reopens_it(
        self,
        leasers: Callable[..., Leaser],
        broker_url: str,
        tmp_path: Path,
        undo: bool,
    ) -> None:
        first, second, earlier = self._own_then_copy(
            leasers, broker_url, tmp_path, *([] if undo else ["--without-undo"])
        )
        restore(tmp_path / "vol-b", earlier)
        answer = second.check()
        if not undo:
            _refused_by(answer, first, "vol-a")  # the stale E013 of the soak: only a new login reopened it
            return
        assert answer == {"status": "held", "reachable": True, "fingerprints": 1}
        assert second.events("codex.lease.copy_seen") and second.events("codex.lease.copy_undone")
        assert first.check()["status"] == "held"
        history = json.loads((tmp_path / "vol-b" / HISTORY_FILE).read_text())
        assert (len(history["fingerprints"]), history["copies"], history["refused"]) == (1, [], False)

    def test_a_live_copy_is_still_refused(
        self,
        leasers: Callable[..., Leaser],
        broker_url: str,
        tmp_path: Path,
    ) -> None:
        """While the copy stays, after its undo when it comes back, and a copy of the holder's older
        (refreshed-away) login: each is refused, naming the holder."""
        first, second, earlier = self._own_then_copy(leasers, broker_url, tmp_path)
        _refused_by(second.check(), first, "vol-a")  # the copy still in place: no reopening
        restore(tmp_path / "vol-b", earlier)
        assert second.check()["status"] == "held"
        copy_login(tmp_path / "vol-a", tmp_path / "vol-b")  # copied again
        _refused_by(second.check(), first, "vol-a")
        older = (tmp_path / "vol-a" / AUTH_FILE).read_bytes()
        write_chatgpt_login(tmp_path / "vol-a")  # the holder refreshes; its older login is still leased
        assert first.check()["fingerprints"] == 2
        restore(tmp_path / "vol-b", older)  # "restoring" the holder's older login is no undo
        _refused_by(second.check(), first, "vol-a")
        restore(tmp_path / "vol-b", earlier)  # vol-b's own login was forgotten after the refused new one
        assert second.check()["status"] == "held"


def restore(home: Path, content: bytes) -> None:
    """Put an earlier auth.json back, as an operator restoring a backup would (temp file, rename)."""
    staged = home / f".{AUTH_FILE}.restore"
    staged.write_bytes(content)
    os.chmod(staged, 0o600)
    os.replace(staged, home / AUTH_FILE)


class TestKilledHolder:
    def test_kill_9_frees_the_lease_and_a_new_holder_wins(
        self, leasers: Callable[..., Leaser], broker_url: str, tmp_path: Path
    ) -> None:
        """kill -9 of the holder: the waiting copy wins within the lease's TTL (2 s here), with no release."""
        first, copy = _holder_and_copy(leasers, broker_url, tmp_path, "--ttl", "2")
        second = leasers(copy, "holder-b", broker_url, "--ttl", "2")
        assert second.check()["error"] == "CODEX-E013"
        first.kill9()
        answer = wait_until(
            lambda: (a := second.check()).get("status") == "held" and a, 20, 0.2, what="the copy to win the freed lease"
        )
        assert answer["reachable"] is True
        assert not first.events("codex.lease.released")  # freed by the broker, not by a goodbye


# -- the broker going away --------------------------------------------------------------------


@pytest.fixture(params=["redis", "rabbitmq"])
def private_broker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[PrivateBroker]:
    """A broker of this test's own (the shared ones must never restart), on each kind."""
    server: PrivateBroker = PrivateRedis(tmp_path) if request.param == "redis" else PrivateRabbitMQ()
    server.start()
    yield server
    server.close()


class TestBrokerOutage:
    def test_a_broker_restart_brings_no_false_alarm_and_no_split_claim(
        self, leasers: Callable[..., Leaser], private_broker: PrivateBroker, tmp_path: Path
    ) -> None:
        """The broker restarts (its leases gone) while a copy waits: the holder keeps its verdict, logs once,
        takes its leases again first, and the copy is refused."""
        first, copy = _holder_and_copy(leasers, private_broker.url, tmp_path, "--ttl", "2")

        private_broker.stop()
        wait_until(lambda: first.events("codex.lease.unreachable"), 10, what="the holder to notice")
        second = leasers(copy, "holder-b", private_broker.url)  # starts during the outage
        pending = second.check()
        assert pending["status"] == "pending" and pending["reachable"] is False  # no verdict yet, not a failure
        assert first.check() == {"status": "held", "reachable": False, "fingerprints": 1}  # the gate stays as it was
        time.sleep(1.0)  # bounded: more heartbeats while the broker is down
        assert len(first.events("codex.lease.unreachable")) == 1  # once per change, not per heartbeat

        private_broker.start()
        wait_until(lambda: first.events("codex.lease.reachable"), 15, what="the holder to take its leases again")
        assert first.check() == {"status": "held", "reachable": True, "fingerprints": 1}
        refused = wait_until(lambda: (a := second.check()).get("error") and a, 10, what="the copy's verdict")
        _refused_by(refused, first, "vol-a")  # no split claim
        assert not first.events("codex.lease.lost") and not first.events("codex.lease.refused")
        assert first.check()["status"] == "held"

    def test_rabbitmq_dropping_the_connection_brings_no_false_alarm(
        self, leasers: Callable[..., Leaser], rabbitmq_url: str, tmp_path: Path
    ) -> None:
        """RabbitMQ closes the holder's lease connection (its exclusive queues go): the holder declares them again."""
        first, copy = _holder_and_copy(leasers, rabbitmq_url, tmp_path, "--ttl", "2")
        _close_rabbitmq_connection("codex-agent lease holder-a")
        wait_until(
            lambda: first.check() == {"status": "held", "reachable": True, "fingerprints": 1},
            10,
            what="the holder to hold again",
        )
        time.sleep(1.0)  # bounded: two heartbeats on the new connection
        _refused_by(leasers(copy, "holder-b", rabbitmq_url).check(), first, "vol-a")  # no split claim
        assert not first.events("codex.lease.lost") and not first.events("codex.lease.refused")


def _close_rabbitmq_connection(name: str) -> None:
    """Have the broker close the connection whose client-provided name is ``name``."""
    if shutil.which("rabbitmqctl") is None:
        pytest.skip("RabbitMQ absent: no rabbitmqctl to close a connection")
    listing = subprocess.run(
        ["rabbitmqctl", "list_connections", "pid", "client_properties", "-q"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    pids = [line.split("\t", 1)[0] for line in listing.splitlines() if f'"{name}"' in line]
    assert len(pids) == 1, listing
    subprocess.run(
        ["rabbitmqctl", "close_connection", pids[0], "lease test"], capture_output=True, timeout=60, check=True
    )


# -- real workers ---------------------------------------------------------------------------


def _copied_api_key_login(codex_bin: str, first: ShardHome, second: ShardHome) -> None:
    make_api_key_login(codex_bin, first.codex_home)
    shutil.copy2(first.codex_home / AUTH_FILE, second.codex_home / AUTH_FILE)


class TestWorkersOnCopiedLogins:
    def test_the_second_worker_is_refused_and_the_first_keeps_consuming(
        self,
        workers: WorkerFactory,
        shard_homes: Callable[..., ShardHome],
        codex_bin: str,
        publisher: Celery,
        broker: BrokerView,
    ) -> None:
        """Two volumes, one login: the second worker's gate stays closed with CODEX-E013; kill -9 of the first frees it."""
        home_a, home_b = shard_homes(), shard_homes()
        _copied_api_key_login(codex_bin, home_a, home_b)
        first = workers(shard=0, home=home_a)
        first.wait_for("codex.gate.consuming", timeout=30)
        second = workers(shard=0, home=home_b)
        refused = second.wait_for("codex.check.failed", timeout=30, code="CODEX-E013")[0]
        assert f"worker {first.env['AGENT_WORKER_NAME']} on host " in refused["error"]
        assert f"volume {home_a.volume}" in refused["error"]
        second.wait_for("codex.gate.closed", timeout=10)

        runs = [
            publisher.send_task("codex.phase", kwargs={"affinity_key": k, "run_id": f"run-{k}", "phase": "plan"})
            for k in keys_for_shard(0, 3)
        ]
        assert {r.get(timeout=30)["worker"] for r in runs} == {first.env["AGENT_WORKER_NAME"]}
        assert not second.events("codex.gate.consuming") and not second.events("codex.run.audit")
        status = agent_status(second)
        assert status["healthy"] is False and [r["code"] for r in status["state"]["reason"]] == ["CODEX-E013"]

        first.kill9()  # the main process only: its pool child must not keep the lease alive
        second.wait_for("codex.gate.consuming", timeout=40)
        key = keys_for_shard(0, 1, prefix="late")[0]
        late = publisher.send_task("codex.phase", kwargs={"affinity_key": key, "run_id": "run-late", "phase": "plan"})
        assert late.get(timeout=30)["worker"] == second.env["AGENT_WORKER_NAME"]

    @pytest.mark.parametrize("broker_url", ["rabbitmq"], indirect=True)
    def test_with_the_lease_off_both_copies_consume(
        self,
        workers: WorkerFactory,
        shard_homes: Callable[..., ShardHome],
        codex_bin: str,
        broker: BrokerView,
    ) -> None:
        """The test of the test: AGENT_FLEET_LEASE=off, and both workers open their gates on one login."""
        home_a, home_b = shard_homes(), shard_homes()
        _copied_api_key_login(codex_bin, home_a, home_b)
        first = workers(shard=0, home=home_a, AGENT_FLEET_LEASE="off")
        second = workers(shard=0, home=home_b, AGENT_FLEET_LEASE="off")
        for worker in (first, second):
            worker.wait_for("codex.gate.consuming", timeout=30)
            assert not worker.events("codex.lease.acquired")
