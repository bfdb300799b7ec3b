"""The fleet-wide login lease: one login runs in one place, across every host of the fleet.

The volume claim (:mod:`agent.volume.claim`) sees one kernel. A login copied into a volume on another
host is invisible to it until both copies refresh and the token family dies. So, once it holds the
claim, a worker also leases its login's *identity* in the broker the fleet already shares.

The identity is the set of one-way fingerprints of every refresh token (or API key) this volume
has held while its lease was ours, newest last, at most :data:`LEASE_KEEP`. A copy made before the
original refreshed still carries an old fingerprint, which the original still leases, so it is
refused. The set is kept in the volume (:data:`HISTORY_FILE`, fingerprints only) so a restart
forgets nothing. A volume that was refused and then gets a new login (the operator logged it in
afresh) starts a new set, so the fix works.

A mistaken copy can also be undone. A fingerprint refused at its first lease, which this volume
never held, came from another volume's live lease: the history marks it a *copy*. Once the volume
holds one of its own earlier logins again (a fingerprint of its set that is no copy), the copies
are dropped from the set and the next round leases the rest. Nothing else changes: the restored
login is leased like any other, so a login held elsewhere is still refused, and a fingerprint this
volume once held is never dropped this way (a copy of *its* old login elsewhere stays refused).
One narrow case the lease cannot tell from a mistaken copy: this volume's own Codex refreshes, and
a copy of the new file is leased elsewhere before this volume's next round (its watcher re-checks
within a second of the write); an operator who then restores an *older* auth.json of this volume
gets it through beside the copy; that older token was rotated away, so its first refresh is a reuse
that revokes the family (the copy's login with it).

Fingerprints are leased in sorted order and a round stops at the first one held elsewhere: two
copies started together cannot each win half. A lease whose record names this same volume on
this same kernel, under another claim, belongs to a dead worker (we hold the volume's flock) and
is taken over at once.

While the broker cannot be reached the last verdict stands: the gate stays as it was and
``codex.lease.unreachable`` is logged once. When the broker is back, the heartbeat takes the
leases again; a refusal then is real (another copy started meanwhile) and closes the gate.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, NoReturn

import structlog

from agent.errors import FleetDuplicateError
from agent.fleet.lease_store import BrokerUnreachable, LeaseStore, describe_broker, store_for, supports
from agent.login.auth import inspect_auth_file
from agent.settings.config import AgentConfig
from agent.util.atomic import write_json_atomically
from agent.util.host import this_process
from agent.util.records import FieldTypes, field_defaults, field_types, parse_record, read_record
from agent.util.services import Heartbeat

__all__ = [
    "HISTORY_FILE",
    "LEASE_KEEP",
    "LEASE_TTL",
    "RETURN_GRACE",
    "FingerprintHistory",
    "LeaseHolder",
    "LeaseState",
    "LoginLease",
    "lease_for",
]

LEASE_TTL = 8.0
"""Seconds a Redis lease outlives its last renewal (a ``kill -9``'d holder frees it by then);
also the AMQP heartbeat. The heartbeat renews every quarter of it."""

LEASE_KEEP = 16
"""How many fingerprints a volume's identity keeps (the newest)."""

RETURN_GRACE = 0.5
"""After the broker comes back, a worker that held nothing waits this fraction of the TTL before
taking: the previous holder's heartbeat (every quarter of the TTL) takes its leases again first."""

HISTORY_FILE = ".codex-agent-lease.json"
"""The volume's identity: its fingerprints (never a token) and whether its last lease was refused."""

log = structlog.get_logger(__name__)

Verdict = Literal["held", "refused"]


def _volume_id(directory: Path) -> str:
    """Device and inode of the volume's directory: equal for two processes on one kernel."""
    try:
        st = os.stat(directory)
    except OSError:
        return "unknown"
    return f"{st.st_dev}:{st.st_ino}"


@dataclass(frozen=True)
class LeaseHolder:
    """Who holds a lease, as stored in the broker (no secret: names, ids, times)."""

    worker: str
    host: str
    shard: int | None
    volume: str | None
    claim_id: str
    since: float
    pid: int = 0
    boot_id: str = ""
    volume_id: str = ""

    def to_json(self) -> str:
        """The record stored in the broker; the same string for the life of the lease."""
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: bytes | str) -> LeaseHolder | None:
        """Parse a broker record, any bytes; None when it is not one of ours."""
        try:
            return cls(**parse_record(text, HOLDER_FIELDS, defaults=field_defaults(LeaseHolder)))
        except ValueError:
            return None

    def describe(self) -> str:
        """A one-line description for error messages."""
        since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.since))
        return (
            f"worker {self.worker} on host {self.host} "
            f"(shard {self.shard}, volume {self.volume}, pid {self.pid}, since {since})"
        )

    def is_dead_copy_of(self, ours: LeaseHolder) -> bool:
        """Whether this holder worked on our very volume, on our kernel, under another claim.

        Only asked while we hold the volume's flock, which a live holder there would hold.
        """
        return (
            self.boot_id == ours.boot_id
            and self.volume_id == ours.volume_id != "unknown"
            and self.claim_id != ours.claim_id
        )


HOLDER_FIELDS: FieldTypes = field_types(LeaseHolder)
"""What each field of a lease record may hold (the broker is shared: anything may write there)."""


@dataclass
class FingerprintHistory:
    """The fingerprints a volume's lease covers, oldest first; pure, saved by the caller.

    ``held`` are those whose lease this volume has held (None: an older agent's file, all count
    as held); ``copies`` those refused without ever being held here (another volume's login).
    """

    fingerprints: list[str] = field(default_factory=list)
    refused: bool = False
    keep: int = LEASE_KEEP
    held: list[str] | None = None
    copies: list[str] = field(default_factory=list)

    def observe(self, current: str | None) -> list[str]:
        """Take in the volume's current fingerprint; returns the fingerprints dropped.

        A new fingerprint joins the set (a refresh, or a login changed while nobody watched),
        except after a refusal: then the volume was logged in afresh, and the old set, which
        belongs to the other copy, is dropped. A refused volume back on one of its own
        fingerprints (a copy undone) drops the copies only.
        """
        if current is None:
            return []
        if current in self.fingerprints:
            if not (self.refused and self.copies and current not in self.copies):
                return []
            dropped = [f for f in self.fingerprints if f in self.copies]
            self.fingerprints = [f for f in self.fingerprints if f not in self.copies]
            self.copies = []
            return dropped
        if self.refused:
            dropped, self.fingerprints = self.fingerprints, [current]
            self.held, self.copies = [], []
            return dropped
        if self.held is None:  # an older agent's file: what it had, it held
            self.held = list(self.fingerprints)
        self.fingerprints.append(current)
        dropped = self.fingerprints[: -self.keep]
        self.fingerprints = self.fingerprints[-self.keep :]
        self._prune()
        return dropped

    def mark_held(self) -> bool:
        """Every fingerprint's lease is ours now; returns whether anything changed."""
        before = (self.held, self.copies)
        self.held, self.copies = list(self.fingerprints), []
        return before != (self.held, self.copies)

    def mark_copy(self, fingerprint: str) -> bool:
        """``fingerprint`` was refused: a copy when this volume never held it; returns whether marked."""
        held = self.fingerprints if self.held is None else self.held
        if fingerprint in held or fingerprint in self.copies or fingerprint not in self.fingerprints:
            return False
        self.copies.append(fingerprint)
        return True

    def _prune(self) -> None:
        if self.held is not None:
            self.held = [f for f in self.held if f in self.fingerprints]
        self.copies = [f for f in self.copies if f in self.fingerprints]

    def to_dict(self) -> dict[str, Any]:
        """What the history file holds."""
        data: dict[str, Any] = {
            "fingerprints": list(self.fingerprints),
            "refused": self.refused,
            "copies": list(self.copies),
        }
        if self.held is not None:
            data["held"] = list(self.held)
        return data

    @classmethod
    def load(cls, directory: Path, keep: int = LEASE_KEEP) -> FingerprintHistory:
        """The history saved in ``directory``; empty when absent or unreadable."""
        data = read_record(
            directory / HISTORY_FILE,
            {"fingerprints": (list,), "refused": (bool,), "held": (list, type(None)), "copies": (list,)},
            defaults={"refused": False, "held": None, "copies": []},
        )
        if data is None:
            return cls(keep=keep)
        prints = [f for f in data["fingerprints"] if isinstance(f, str)]
        held = None if data["held"] is None else [f for f in data["held"] if isinstance(f, str)]
        history = cls(
            fingerprints=prints[-keep:],
            refused=data["refused"],
            keep=keep,
            held=held,
            copies=[f for f in data["copies"] if isinstance(f, str)],
        )
        history._prune()
        return history


@dataclass(frozen=True)
class LeaseState:
    """The outcome of a lease round that was not a refusal."""

    status: Literal["held", "pending", "no-login"]
    reachable: bool
    fingerprints: int
    broker: str
    cause: str | None = None

    def describe(self) -> str:
        """A one-line message for the check report."""
        where = f"{self.broker} broker"
        if self.status == "no-login":
            return f"nothing to lease: the volume holds no credential ({where})"
        if self.status == "pending":
            return f"not leased yet: the {where} is unreachable ({self.cause}); the gate stays as it is"
        held = f"login leased fleet-wide in the {where} ({self.fingerprints} fingerprint(s))"
        return held if self.reachable else f"{held}; broker unreachable now ({self.cause}), the lease is kept"

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe view."""
        return asdict(self)


class LoginLease:
    """The fleet-wide lease on one volume's login, for one worker process.

    Call :meth:`check` while holding the volume's claim (it raises
    :class:`~agent.errors.FleetDuplicateError` when another holder has the login), keep it
    alive with :meth:`start_heartbeat`, and :meth:`release` it on a clean stop.

    Args:
        store: the broker side (:func:`agent.fleet.lease_store.store_for`).
        codex_home: the volume's directory.
        worker, shard, volume: who we are, for the record others read.
        broker: the broker, without credentials, for messages.
        ttl: seconds a lease lives without renewal.
        keep: how many fingerprints the identity keeps.
    """

    def __init__(
        self,
        store: LeaseStore,
        *,
        codex_home: Path,
        worker: str,
        shard: int | None,
        volume: str | None,
        broker: str,
        ttl: float = LEASE_TTL,
        keep: int = LEASE_KEEP,
    ) -> None:
        self.store = store
        self.codex_home = Path(codex_home)
        self.worker = worker
        self.shard = shard
        self.volume = volume
        self.broker = broker
        self.ttl = ttl
        self.keep = keep
        self.changes = 0
        """Bumped whenever the verdict or reachability changes; watchers re-check on it."""
        self.record: LeaseHolder | None = None
        self._history: FingerprintHistory | None = None
        self._held: set[str] = set()
        self._verdict: Verdict | None = None
        self._refusal: FleetDuplicateError | None = None
        self._reachable = True
        self._defer_until = 0.0
        self._lock = threading.Lock()
        self._facts = dict(shard=shard, volume=volume, codex_home=str(codex_home), worker=worker, uid=os.getuid())

    # -- facts ----------------------------------------------------------------------------

    def refused(self, holder: LeaseHolder | None) -> FleetDuplicateError:
        """The error naming ``holder`` as the one who has this login."""
        if holder is None:
            return FleetDuplicateError(
                **self._facts,
                holder="another worker (its record is unreadable)",
                holder_worker="<unknown>",
                holder_host="<unknown>",
                broker=self.broker,
            )
        return FleetDuplicateError(
            **self._facts,
            holder=holder.describe(),
            holder_worker=holder.worker,
            holder_host=holder.host,
            holder_shard=holder.shard,
            holder_volume=holder.volume,
            broker=self.broker,
        )

    @property
    def fingerprints(self) -> tuple[str, ...]:
        """The identity as it stands (one-way fingerprints)."""
        return tuple(self._history.fingerprints) if self._history is not None else ()

    # -- rounds ---------------------------------------------------------------------------

    def check(self, claim_id: str) -> LeaseState:
        """Take in the volume's current login and take or renew every lease of its identity.

        Args:
            claim_id: the id of the volume claim this process holds (it must hold it).

        Returns:
            The state: held, or the last verdict kept while the broker is unreachable.

        Raises:
            FleetDuplicateError: another holder has one of the fingerprints (also kept while the
                broker is unreachable after such a refusal).
        """
        with self._lock:
            if self.record is None:
                process = this_process()
                self.record = LeaseHolder(
                    worker=self.worker,
                    host=process.hostname,
                    shard=self.shard,
                    volume=self.volume,
                    claim_id=claim_id,
                    since=time.time(),
                    pid=process.pid,
                    boot_id=process.boot_id,
                    volume_id=_volume_id(self.codex_home),
                )
            self._observe()
            return self._round()

    def renew(self) -> None:
        """One heartbeat: renew what we hold, take it again after a broker restart."""
        with self._lock:
            if self.record is None or self._history is None:
                return
            try:
                self._round()
            except FleetDuplicateError:
                pass  # recorded and logged by the round; the watcher re-checks on self.changes

    def _observe(self) -> None:
        if self._history is None:
            self._history = FingerprintHistory.load(self.codex_home, self.keep)
        before = self._history.to_dict()
        copies, known = bool(self._history.copies), list(self._history.fingerprints)
        current = inspect_auth_file(self.codex_home).fingerprint
        dropped = self._history.observe(current)
        if copies and dropped and current in known:
            log.info(
                "codex.lease.copy_undone",
                volume=self.volume,
                shard=self.shard,
                dropped=len(dropped),
                fingerprints=len(self._history.fingerprints),
                note="the volume holds one of its own earlier logins again; the copied one is forgotten",
            )
        for fingerprint in dropped:
            if fingerprint in self._held:
                self._held.discard(fingerprint)
                self.store.release(fingerprint, self._record_json())
        if dropped or self._history.to_dict() != before:
            if self._verdict == "held" and not dropped:
                log.info(
                    "codex.lease.added",
                    volume=self.volume,
                    shard=self.shard,
                    fingerprints=len(self._history.fingerprints),
                )
            self._save()

    def _save(self) -> None:
        assert self._history is not None
        try:
            write_json_atomically(self.codex_home / HISTORY_FILE, self._history.to_dict())
        except OSError as e:
            log.warning("codex.lease.history_unwritable", volume=self.volume, error=str(e))

    def _record_json(self) -> str:
        assert self.record is not None
        return self.record.to_json()

    def _round(self) -> LeaseState:
        """Take or renew each fingerprint in sorted order; stop at the first held elsewhere."""
        assert self._history is not None and self.record is not None
        record = self._record_json()
        if not self._history.fingerprints:
            return LeaseState("no-login", True, 0, self.broker)
        if self._verdict != "held" and (not self._reachable or time.monotonic() < self._defer_until):
            return self._look(record)
        taken_now: list[str] = []
        try:
            for fingerprint in sorted(self._history.fingerprints):
                other = self.store.take(fingerprint, record)
                if other:
                    other = self._replace_dead(fingerprint, record, other)
                if other:
                    for mine in taken_now:  # never keep half of a set we could not win
                        self.store.release(mine, record)
                        self._held.discard(mine)
                    self._refuse(other, fingerprint)
                if fingerprint not in self._held:
                    taken_now.append(fingerprint)
                    self._held.add(fingerprint)
        except BrokerUnreachable as e:
            return self._unreachable(str(e))
        if self._history.mark_held():
            self._save()
        self._judge("held", None)
        return LeaseState("held", True, len(self._held), self.broker)

    def _look(self, record: str) -> LeaseState:
        """A worker that holds nothing, while the broker is away or just back: look, take nothing.

        A broker that lost its keys (a restart) must give the lease back to the worker that held
        it, which takes it again on its next heartbeat; so a refused or waiting copy lets
        :data:`RETURN_GRACE` of the TTL pass first.
        """
        assert self._history is not None and self.record is not None
        try:
            for fingerprint in sorted(self._history.fingerprints):
                other = self.store.peek(fingerprint)
                holder = LeaseHolder.from_json(other) if other else None
                if other and other != record and not (holder is not None and holder.is_dead_copy_of(self.record)):
                    self._refuse(other, fingerprint)
        except BrokerUnreachable as e:
            return self._unreachable(str(e))
        if not self._reachable:
            self._reachable, self.changes = True, self.changes + 1
            self._defer_until = time.monotonic() + self.ttl * RETURN_GRACE
            log.info(
                "codex.lease.reachable",
                broker=self.broker,
                verdict="waiting",
                volume=self.volume,
                wait_s=round(self.ttl * RETURN_GRACE, 2),
            )
        if self._refusal is not None:
            raise self._refusal  # free now, but the gate stays closed until we hold the lease
        return LeaseState("pending", True, 0, self.broker, "broker back; its previous holder goes first")

    def _refuse(self, other: str, fingerprint: str) -> NoReturn:
        assert self._history is not None
        if self._history.mark_copy(fingerprint):
            log.warning(
                "codex.lease.copy_seen",
                volume=self.volume,
                shard=self.shard,
                note="a login this volume never held, leased elsewhere: forgotten once the volume "
                "holds one of its own earlier logins again",
            )
            self._save()
        self._judge("refused", self.refused(LeaseHolder.from_json(other)))
        assert self._refusal is not None
        raise self._refusal

    def _replace_dead(self, fingerprint: str, record: str, other: str) -> str:
        """Take a lease over from a dead worker of this same volume; returns who holds it now."""
        assert self.record is not None
        holder = LeaseHolder.from_json(other)
        if holder is None or not holder.is_dead_copy_of(self.record):
            return other
        now = self.store.take(fingerprint, record, replace=other)
        if not now:
            log.warning(
                "codex.lease.stale_replaced", volume=self.volume, shard=self.shard, previous_holder=holder.describe()
            )
        return now

    def _judge(self, verdict: Verdict, refusal: FleetDuplicateError | None) -> None:
        """Record a verdict reached through the broker; log and count what changed."""
        assert self._history is not None
        came_back = not self._reachable
        changed = (
            verdict != self._verdict
            or came_back
            or (refusal is not None and self._refusal is not None and refusal.message != self._refusal.message)
        )
        previous, self._verdict, self._refusal, self._reachable = self._verdict, verdict, refusal, True
        refused = verdict == "refused"
        if self._history.refused != refused:
            self._history.refused = refused
            self._save()
        if not changed:
            return
        self.changes += 1
        if came_back:
            log.info("codex.lease.reachable", broker=self.broker, verdict=verdict, volume=self.volume)
        if verdict == "held" and previous != "held":
            log.info(
                "codex.lease.acquired",
                broker=self.broker,
                volume=self.volume,
                shard=self.shard,
                fingerprints=len(self._held),
            )
        elif refusal is not None:
            event = "codex.lease.lost" if previous == "held" else "codex.lease.refused"
            log.error(
                event,
                code=refusal.code,
                error=refusal.message,
                remediation=refusal.remediation,
                volume=self.volume,
                shard=self.shard,
            )

    def _unreachable(self, cause: str) -> LeaseState:
        """Keep the last verdict; log once that the broker is gone."""
        if self._reachable:
            self._reachable, self.changes = False, self.changes + 1
            log.warning(
                "codex.lease.unreachable",
                broker=self.broker,
                cause=cause,
                volume=self.volume,
                kept="none" if self._verdict is None else self._verdict,
            )
        if self._refusal is not None:
            raise self._refusal
        status: Literal["held", "pending"] = "held" if self._verdict == "held" else "pending"
        return LeaseState(status, False, len(self._held), self.broker, cause)

    # -- heartbeat and release ------------------------------------------------------------

    def heartbeat_service(self, interval: float | None = None) -> Heartbeat:
        """Renewal every ``interval`` seconds (a quarter of the TTL by default) as a worker
        service; its stop gives every lease up."""
        return Heartbeat(
            "codex-lease-heartbeat",
            interval if interval is not None else self.ttl / 4,
            self.renew,
            on_stop=self.release,
            on_fork=self.close_inherited,
            error_event="codex.lease.heartbeat_error",
        )

    def release(self) -> None:
        """Give every lease up (clean stop); never raises."""
        with self._lock:
            if self.record is not None:
                record = self._record_json()
                for fingerprint in list(self._held):
                    self.store.release(fingerprint, record)
                if self._held:
                    log.info(
                        "codex.lease.released", broker=self.broker, volume=self.volume, fingerprints=len(self._held)
                    )
            self._held.clear()
            self._verdict = None
            self.record = None  # a heartbeat already past its wait must not take anything again
            self.store.close()

    def close_inherited(self) -> None:
        """In a forked pool child: drop the parent's broker connection without touching it.

        Takes no lock: the parent's heartbeat may have held it at the fork.
        """
        self.store.close_inherited()
        self._held = set()
        self.record = None
        self._lock = threading.Lock()


def lease_for(config: AgentConfig) -> LoginLease | None:
    """The worker's lease, or None: not a Codex worker, ``AGENT_FLEET_LEASE=off``, or a broker
    that cannot hold leases (memory, sentinel), which is logged."""
    if not config.is_codex_worker or not config.fleet_lease:
        return None
    broker = describe_broker(config.broker_url)
    if not supports(config.broker_url):
        log.warning(
            "codex.lease.unsupported",
            broker=broker,
            volume=config.volume_name,
            note="no fleet-wide lease: the claim still guards this host",
        )
        return None
    return LoginLease(
        store_for(config.broker_url, ttl=LEASE_TTL, name=config.worker_name),
        codex_home=config.codex_home,
        worker=config.worker_name,
        shard=config.shard_index,
        volume=config.volume_name,
        broker=broker,
    )
