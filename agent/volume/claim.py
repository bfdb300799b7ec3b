"""The volume claim: one worker per login, detected at startup.

A claim is an exclusive, non-blocking ``flock`` (filelock) on a lock file inside the volume, held
for the life of the process, plus a JSON marker beside it naming the holder. The kernel releases
the lock when the holder dies, even by ``kill -9``, so a stale marker on the same kernel is simply
replaced. Containers on one Docker host share a kernel, hence the ``boot_id`` in the marker: a
marker written under another ``boot_id`` comes from another host (say, over a network
filesystem where flock is blind) and counts as held while its heartbeat is fresh.

File names start with ``.codex-agent-`` so they never collide with what the Codex CLI keeps there
(``auth.json``, ``auth.json.lock``, ``auth.lock``, ``log/``, ``tmp/``).
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import filelock
import structlog

from agent.errors import ClaimIOError, ClaimLostError, VolumeClaimedError
from agent.settings.config import AgentConfig
from agent.util.atomic import write_json_atomically
from agent.util.host import boot_id, own_container_id, this_process
from agent.util.records import FieldTypes, field_types, parse_record, read_record
from agent.util.services import Heartbeat

__all__ = [
    "LOCK_FILE",
    "MARKER_FILE",
    "Holder",
    "VolumeClaim",
    "read_marker",
    "marker_problem",
]

LOCK_FILE = ".codex-agent-claim.lock"
MARKER_FILE = ".codex-agent-claim.json"

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Holder:
    """Who holds a claim, as written in the marker."""

    claim_id: str
    worker: str
    container_id: str | None
    hostname: str
    boot_id: str
    pid: int
    process_start: float
    shard: int | None
    volume: str | None
    claimed_at: float
    heartbeat: float

    def describe(self) -> str:
        """A one-line, human description for error messages."""
        where = f"container {self.container_id[:12]}" if self.container_id else f"host {self.hostname}"
        return f"worker {self.worker} ({where}, pid {self.pid})"

    def same_kernel(self) -> bool:
        """Whether the holder ran on this kernel, where flock is authoritative."""
        return self.boot_id == boot_id()

    def is_fresh(self, stale_after: float, now: float | None = None) -> bool:
        """Whether the heartbeat is younger than ``stale_after`` seconds."""
        return ((now or time.time()) - self.heartbeat) < stale_after

    @classmethod
    def parse(cls, raw: bytes | str) -> Holder:
        """Build from a marker file's content, any bytes, checking every field's type; raises
        ValueError when it is no marker (anything may write into the volume: a field of the wrong type
        fails here, not later in :meth:`describe` or :meth:`is_fresh`)."""
        return cls(**parse_record(raw, MARKER_FIELDS))


MARKER_FIELDS: FieldTypes = field_types(Holder)
"""What each marker field may hold (JSON types); numbers must also be finite."""


def read_marker(directory: Path) -> Holder | None:
    """The holder named in ``directory``'s marker; None when absent or unreadable (any bytes)."""
    record = read_record(directory / MARKER_FILE, MARKER_FIELDS)
    return None if record is None else Holder(**record)


def marker_problem(directory: Path) -> str:
    """Why ``directory`` has no readable marker, in the words every report uses.

    The worker that lost its claim (E011), ``codex-agent check`` refused beside it (E010) and the
    pre-flight all say the same thing for the same state.
    """
    path = directory / MARKER_FILE
    if not path.exists():
        return "the claim marker is missing"
    return "the claim marker is unreadable: corrupt, or not a holder record"


class VolumeClaim:
    """An exclusive claim on the login volume mounted at ``directory``.

    Use :meth:`acquire` (raises) or :meth:`try_acquire` (says whether it won), keep the object for
    the life of the process, :meth:`heartbeat` now and then, and :meth:`release` at shutdown. It is
    also a context manager.
    """

    def __init__(
        self,
        directory: Path,
        *,
        worker: str,
        shard: int | None,
        volume: str | None,
        stale_after: float = 60.0,
    ) -> None:
        self.directory = Path(directory)
        self.worker = worker
        self.shard = shard
        self.volume = volume
        self.stale_after = stale_after
        self.holder: Holder | None = None
        # thread_local=False: the heartbeat thread must see the lock the main thread took;
        # preserve_lock_file: unlinking a lock file on release races with the next claimant.
        self._lock = filelock.FileLock(
            str(self.directory / LOCK_FILE),
            timeout=0,
            mode=0o600,
            thread_local=False,
            is_singleton=False,
            preserve_lock_file=True,
        )

    @property
    def held(self) -> bool:
        """Whether this object holds the lock right now."""
        return self.holder is not None and self._lock.is_locked

    def _facts(self, **extra: Any) -> dict[str, Any]:
        return {
            "shard": self.shard,
            "volume": self.volume,
            "codex_home": str(self.directory),
            "worker": self.worker,
            "uid": os.getuid(),
            **extra,
        }

    def refused(self, holder: Holder | None) -> VolumeClaimedError:
        """The error that names ``holder`` as the reason this claim was refused.

        It is read by the refused worker, so its fix stops this worker (the extra one), never
        the holder, which is the one serving the shard.
        """
        mine = own_container_id()
        stop_this = f"docker stop {mine[:12]}" if mine else f"stop process {os.getpid()} on {socket.gethostname()}"
        who = (
            holder.describe()
            if holder is not None
            else f"a process that holds its lock ({marker_problem(self.directory)})"
        )
        return VolumeClaimedError(**self._facts(holder=who, stop_this=stop_this))

    def try_acquire(self) -> tuple[bool, Holder | None]:
        """Try once, without waiting.

        Returns:
            ``(True, our holder record)`` when won, else ``(False, the current holder or None)``.

        Raises:
            ClaimIOError: the claim files cannot be created or written.
        """
        if self.held:
            return True, self.holder
        try:
            self._lock.acquire(timeout=0)
        except filelock.Timeout:
            return False, self._wait_for_marker()
        except OSError as e:
            raise ClaimIOError(**self._facts(cause=f"{type(e).__name__}: {e.strerror or e}")) from e

        previous = read_marker(self.directory)
        if previous is not None and not previous.same_kernel() and previous.is_fresh(self.stale_after):
            self._lock.release()
            return False, previous
        try:
            self.holder = self._write_marker(claimed_at=time.time())
        except OSError as e:
            self._lock.release()
            raise ClaimIOError(**self._facts(cause=f"{type(e).__name__}: {e.strerror or e}")) from e
        if previous is not None:
            log.warning(
                "codex.claim.stale_replaced",
                volume=self.volume,
                shard=self.shard,
                previous_holder=previous.describe(),
                previous_heartbeat_age_s=round(time.time() - previous.heartbeat, 1),
            )
        log.info("codex.claim.acquired", volume=self.volume, shard=self.shard, claim_id=self.holder.claim_id)
        return True, self.holder

    def _wait_for_marker(self, patience: float = 1.0) -> Holder | None:
        """The holder's marker; a winner that just took the lock may still be writing it."""
        deadline = time.monotonic() + patience
        while (holder := read_marker(self.directory)) is None and time.monotonic() < deadline:
            time.sleep(0.02)
        return holder

    def acquire(self) -> Holder:
        """Take the claim or raise.

        Raises:
            VolumeClaimedError: another live worker holds it (named in the message).
            ClaimIOError: the claim files cannot be written.
        """
        won, holder = self.try_acquire()
        if not won:
            raise self.refused(holder)
        assert holder is not None
        return holder

    def _write_marker(self, *, claimed_at: float, claim_id: str | None = None) -> Holder:
        holder = Holder(
            claim_id=claim_id or uuid.uuid4().hex,
            worker=self.worker,
            **asdict(this_process()),
            shard=self.shard,
            volume=self.volume,
            claimed_at=claimed_at,
            heartbeat=time.time(),
        )
        write_json_atomically(self.directory / MARKER_FILE, asdict(holder))
        return holder

    def heartbeat(self) -> None:
        """Refresh the marker's heartbeat, so hosts that cannot see our flock know we live.

        Raises:
            ClaimLostError: the marker no longer names us.
        """
        self.verify()
        assert self.holder is not None
        try:
            self.holder = self._write_marker(claimed_at=self.holder.claimed_at, claim_id=self.holder.claim_id)
        except OSError as e:
            raise ClaimLostError(**self._facts(cause=f"heartbeat write failed: {e.strerror or e}")) from e

    def verify(self) -> None:
        """Cheap check that the claim is still ours: lock held and the marker names us.

        Raises:
            ClaimLostError: it is not.
        """
        if not self.held or self.holder is None:
            raise ClaimLostError(**self._facts(cause="this process does not hold the lock"))
        self.verify_marker()

    def verify_marker(self) -> None:
        """The marker still names the claim this process (or its parent, in a pool child) won.

        Raises:
            ClaimLostError: no claim was won, the marker is gone or unreadable, or it names another.
        """
        if self.holder is None:
            raise ClaimLostError(**self._facts(cause="no claim was taken"))
        current = read_marker(self.directory)
        if current is None:
            raise ClaimLostError(**self._facts(cause=marker_problem(self.directory)))
        if current.claim_id != self.holder.claim_id:
            raise ClaimLostError(**self._facts(cause=f"the marker now names {current.describe()}"))

    def beat(self) -> None:
        """One heartbeat tick: refresh the marker while the claim is held, log its loss."""
        if not self.held:
            return
        try:
            self.heartbeat()
        except ClaimLostError as e:
            log.error("codex.claim.lost", code=e.code, error=e.message)

    def heartbeat_service(self, interval: float) -> Heartbeat:
        """The claim's heartbeat as a worker service; its stop releases the claim."""
        return Heartbeat(
            "codex-claim-heartbeat",
            interval,
            self.beat,
            on_stop=self.release,
            on_fork=self.close_inherited,
            error_event="codex.claim.heartbeat_error",
        )

    def close_inherited(self) -> None:
        """In a forked child: close the inherited lock descriptor without unlocking.

        flock belongs to the open file description, shared across fork; a pool child that
        outlived a killed parent would otherwise keep the volume locked. Unlocking here would
        release the parent's lock too, so the descriptor is only closed. The holder record
        stays: the child's pre-flight checks that the marker still names it.
        """
        fd = getattr(getattr(self._lock, "_context", None), "lock_file_fd", None)
        if isinstance(fd, int):
            try:
                os.close(fd)
            except OSError:
                pass
            self._lock._context.lock_file_fd = None
            self._lock._context.lock_counter = 0

    def release(self) -> None:
        """Give the claim up: remove our marker, unlock."""
        if self.held and self.holder is not None:
            current = read_marker(self.directory)
            if current is not None and current.claim_id == self.holder.claim_id:
                try:
                    (self.directory / MARKER_FILE).unlink()
                except OSError:
                    pass
            self._lock.release(force=True)
            log.info("codex.claim.released", volume=self.volume, shard=self.shard)
        self.holder = None

    def __enter__(self) -> VolumeClaim:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


def claim_for(config: AgentConfig) -> VolumeClaim:
    """The claim of the worker's volume at CODEX_HOME (not taken yet)."""
    return VolumeClaim(
        config.codex_home,
        worker=config.worker_name,
        shard=config.shard_index,
        volume=config.volume_name,
        stale_after=config.claim_stale_after,
    )
