"""The re-check thread: the gate follows the volume within a second, not within a re-check period.

In ``events`` mode (``AGENT_WATCH``, the default) the thread sleeps in ``poll(2)`` on

* an inotify watch on CODEX_HOME (through asyncinotify): auth.json written, renamed or removed,
  the claim marker replaced, and ``IN_ATTRIB`` on the directory itself, which is how a chmod or
  chown of the volume shows;
* ``/proc/self/mountinfo``, which the kernel marks ``POLLPRI`` whenever this mount namespace
  changes: a volume mounted over CODEX_HOME, unmounted, or remounted read-only. The inotify
  watch then moves to whatever directory CODEX_HOME now is.

Each wake-up takes a cheap :class:`Snapshot` (a few stats, the marker's claim id, the mount
entry) and runs the full checks only when it differs from the one taken before the last check,
so the claim heartbeat and the files the checks themselves touch cost nothing. Full re-checks
still run every ``AGENT_RECHECK_INTERVAL`` while the gate is closed, and four times that while
it is open. inotify sees only this kernel's writes: on a network filesystem (NFS, CIFS, FUSE…)
the snapshot is also taken every 0.5 s.

``poll`` mode (``AGENT_WATCH=poll``, and the fallback when inotify is unavailable) is the stat
loop: auth.json and the marker every 0.5 s; permissions, owner and mount wait for the next full
re-check. In both modes the per-task pre-flight refuses a volume that changed
(:class:`~agent.volume.identity.VolumeIdentityCheck`).
"""

from __future__ import annotations

import os
import select
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path

import structlog
from asyncinotify import Inotify, Mask, Watch

from agent.settings.config import AgentConfig
from agent.settings.defaults import OPEN_RECHECK_FACTOR, WATCH_INTERVAL, WATCH_SETTLE
from agent.volume.claim import read_marker
from agent.volume.identity import AuthSignature, HomeStat, auth_signature, stat_home
from agent.volume.mount import parse_mountinfo

__all__ = ["Snapshot", "VolumeWatcher", "MountEntry", "take_snapshot", "mount_entry"]

log = structlog.get_logger(__name__)

MOUNTINFO = "/proc/self/mountinfo"

_FILE_EVENTS = (
    Mask.ATTRIB
    | Mask.CREATE
    | Mask.DELETE
    | Mask.CLOSE_WRITE
    | Mask.MOVED_FROM
    | Mask.MOVED_TO
    | Mask.DELETE_SELF
    | Mask.MOVE_SELF
    | Mask.ONLYDIR
)
"""Writes land as CLOSE_WRITE (never a half-written file); IN_MODIFY and reads are not wanted."""

_WATCH_GONE = Mask.IGNORED | Mask.DELETE_SELF | Mask.MOVE_SELF | Mask.UNMOUNT

_SETTLE_MAX = 0.1
"""Longest wait for file events to go quiet (a Codex run appending to files in the volume)."""

_REMOTE_FS = ("nfs", "nfs4", "cifs", "smb3", "9p", "ceph", "glusterfs", "lustre", "fuse")
"""Filesystem types where other hosts write without inotify seeing it (``fuse.*`` included)."""

MountEntry = tuple[str, str, tuple[str, ...], tuple[str, ...]]
"""The mount at CODEX_HOME: root, fstype, mount options, superblock options."""


def mount_entry(codex_home: Path) -> MountEntry | None:
    """The top mount at ``codex_home`` in this namespace, None when nothing is mounted there."""
    path = os.path.realpath(codex_home)
    try:
        text = Path(MOUNTINFO).read_bytes().decode("utf-8", "replace")
    except OSError:
        return None
    entry = next((e for e in reversed(parse_mountinfo(text)) if e.mount_point == path), None)
    return None if entry is None else (entry.root, entry.fstype, entry.options, entry.super_options)


@dataclass(frozen=True)
class Snapshot:
    """What the watcher compares between wake-ups; any difference runs the full checks.

    ``auth`` is auth.json's (inode, size, mtime), ``claim_id`` the marker's, ``home`` the stat of
    CODEX_HOME and ``mount`` its mount entry (events mode only), ``extra`` whatever the runtime adds
    from outside the volume (the fleet lease's change counter).
    """

    auth: AuthSignature
    claim_id: str | None
    home: HomeStat | None = None
    mount: MountEntry | None = None
    extra: object = None

    def changes(self, other: Snapshot) -> list[str]:
        """Names of the fields that differ from ``other``."""
        return [f.name for f in fields(self) if getattr(self, f.name) != getattr(other, f.name)]


def take_snapshot(codex_home: Path, *, deep: bool, mount: MountEntry | None = None, extra: object = None) -> Snapshot:
    """auth.json's signature and the marker's claim id; with ``deep``, the directory and mount too."""
    holder = read_marker(codex_home)
    claim_id = holder.claim_id if holder is not None else None
    if not deep:
        return Snapshot(auth_signature(codex_home), claim_id, extra=extra)
    return Snapshot(auth_signature(codex_home), claim_id, stat_home(codex_home), mount, extra)


@dataclass
class _Wake:
    stop: bool = False
    files: bool = False
    mounts: bool = False
    lost: bool = False


class _EventSources:
    """inotify on CODEX_HOME, the mount table and a stop pipe, waited on together.

    Raises at construction (OSError, RuntimeError) when inotify is unavailable, e.g. when
    ``fs.inotify.max_user_instances`` is exhausted; the watcher then polls.
    """

    def __init__(self, codex_home: Path) -> None:
        self.codex_home = codex_home
        self._inotify = Inotify(sync_timeout=0)
        os.set_blocking(self._inotify.fd, False)
        self._mounts = os.open(MOUNTINFO, os.O_RDONLY | os.O_CLOEXEC)
        self._stop_r, self._stop_w = os.pipe()
        self._all = select.poll()
        self._all.register(self._inotify.fd, select.POLLIN)
        self._all.register(self._mounts, select.POLLPRI)
        self._all.register(self._stop_r, select.POLLIN)
        self._files = select.poll()
        self._files.register(self._inotify.fd, select.POLLIN)
        self._watch: Watch | None = None
        self._watched: tuple[int, int] | None = None
        self.arm()

    @property
    def armed(self) -> bool:
        """Whether a directory at CODEX_HOME is watched."""
        return self._watch is not None

    def arm(self, *, lost: bool = False) -> None:
        """Watch whatever directory CODEX_HOME is now; ``lost``: the old watch is gone."""
        home = stat_home(self.codex_home)
        key = None if home is None else (home.device, home.inode)
        if self._watch is not None and key == self._watched and not lost:
            return
        if self._watch is not None and not lost:
            try:
                self._inotify.rm_watch(self._watch)
            except OSError:
                pass
        self._watch, self._watched = None, None
        if key is None:
            return
        try:
            self._watch = self._inotify.add_watch(self.codex_home, _FILE_EVENTS)
            self._watched = key
        except OSError as e:
            log.warning("codex.watch.unarmed", codex_home=str(self.codex_home), error=str(e))

    def wait(self, timeout: float) -> _Wake:
        """Sleep until a source fires or ``timeout`` seconds pass; file events are read to quiet."""
        wake = _Wake()
        for fd, _ in self._all.poll(max(0, int(timeout * 1000))):
            if fd == self._stop_r:
                wake.stop = True
            elif fd == self._mounts:
                wake.mounts = True
            else:
                wake.files = True
        if wake.files:
            wake.lost = self._settle()
        return wake

    def _drain(self) -> bool:
        """Read the pending events; whether our watch went away."""
        lost = False
        while (event := self._inotify.sync_get()) is not None:
            if event.mask & _WATCH_GONE and self._watch is not None and event.watch is self._watch:
                lost = True
        return lost

    def _settle(self) -> bool:
        lost = self._drain()
        deadline = time.monotonic() + _SETTLE_MAX
        while time.monotonic() < deadline and self._files.poll(int(WATCH_SETTLE * 1000)):
            lost |= self._drain()
        return lost

    def wake(self) -> None:
        """Make :meth:`wait` return with ``stop`` (from any thread)."""
        try:
            os.write(self._stop_w, b"x")
        except OSError:
            pass

    def close(self) -> None:
        """Release the descriptors (the watch goes with the inotify instance)."""
        self._inotify.close()
        for fd in (self._mounts, self._stop_r, self._stop_w):
            try:
                os.close(fd)
            except OSError:
                pass


class VolumeWatcher:
    """Runs the worker's full checks when its volume changes, and on the re-check timer.

    Args:
        config: the worker's configuration (CODEX_HOME, AGENT_WATCH, AGENT_RECHECK_INTERVAL).
        recheck: runs every check and sets the gate (``Agent.run_checks``).
        is_open: whether the gate is open now (open gates re-check less often).
        extra: more state to compare, outside the volume (e.g. the fleet lease's change
            counter); nothing wakes the thread on it, so it is read on the 0.5 s timer.
        due: when a re-check is due whatever else happens (epoch seconds, or None): a usage
            limit's reset time, so the gate reopens at that moment and not a re-check period later.
    """

    def __init__(
        self,
        config: AgentConfig,
        recheck: Callable[[], object],
        is_open: Callable[[], bool],
        extra: Callable[[], object] | None = None,
        due: Callable[[], float | None] | None = None,
    ) -> None:
        self.config = config
        self._recheck = recheck
        self._is_open = is_open
        self._extra = extra
        self._due = due
        self.mode = config.watch_mode
        self._sources: _EventSources | None = None
        self._mount: MountEntry | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the thread (once); ``events`` falls back to ``poll`` when inotify is unavailable."""
        if self._thread is not None:
            return
        if self.config.watch_mode == "events":
            try:
                self._sources = _EventSources(self.config.codex_home)
                self._mount = mount_entry(self.config.codex_home)
            except (OSError, RuntimeError) as e:
                log.warning(
                    "codex.watch.polling",
                    cause=f"inotify unavailable: {e}",
                    remediation="raise the limit: sysctl fs.inotify.max_user_instances=512",
                )
        self.mode = "events" if self._sources is not None else "poll"
        log.info("codex.watch.started", mode=self.mode, codex_home=str(self.config.codex_home))
        seen = self._snapshot()  # the state the last checks saw: anything after it is a change
        self._thread = threading.Thread(target=self._run, args=(seen,), name=self.name, daemon=True)
        self._thread.start()

    name = "codex-agent-watch"

    def close_inherited(self) -> None:
        """In a forked pool child (no thread there): close the inherited descriptors."""
        self.stop()

    def stop(self) -> None:
        """Stop watching; in a forked pool child (no thread there) just close the descriptors."""
        self._stop.set()
        sources = self._sources
        if sources is None:
            return
        if self._thread is not None and self._thread.is_alive():
            sources.wake()  # the thread closes them on its way out
        else:
            self._sources = None
            sources.close()

    def _snapshot(self) -> Snapshot:
        extra = self._extra() if self._extra is not None else None
        return take_snapshot(self.config.codex_home, deep=self._sources is not None, mount=self._mount, extra=extra)

    def _interval(self) -> float:
        return self.config.recheck_interval * (OPEN_RECHECK_FACTOR if self._is_open() else 1)

    def _polls_too(self) -> bool:
        """Whether snapshots are also taken on the 0.5 s timer (no watch, remote filesystem, extra)."""
        if self._sources is None or not self._sources.armed or self._extra is not None:
            return True
        fstype = self._mount[1] if self._mount is not None else ""
        return fstype.split(".")[0] in _REMOTE_FS

    def _wait(self, timeout: float) -> _Wake:
        if self._polls_too():
            timeout = min(timeout, WATCH_INTERVAL)
        if self._sources is None:
            return _Wake(stop=self._stop.wait(timeout))
        wake = self._sources.wait(timeout)
        wake.stop = wake.stop or self._stop.is_set()
        if wake.mounts:
            self._mount = mount_entry(self.config.codex_home)
        if wake.mounts or wake.lost or not self._sources.armed:
            self._sources.arm(lost=wake.lost)
        return wake

    def _run(self, seen: Snapshot) -> None:
        try:
            self._loop(seen)
        finally:
            sources, self._sources = self._sources, None
            if sources is not None:
                sources.close()

    def _due_after(self, checked_at: float) -> float | None:
        """The next due time later than the last check (one already checked never wakes us again)."""
        try:
            due = self._due() if self._due is not None else None
        except Exception:  # the watcher must survive anything
            log.exception("codex.watch.error")
            return None
        return due if due is not None and due > checked_at else None

    def _loop(self, seen: Snapshot) -> None:
        last_check = time.monotonic()
        checked_at = time.time()
        while not self._stop.is_set():
            timeout = max(0.0, last_check + self._interval() - time.monotonic())
            due = self._due_after(checked_at)
            if due is not None:
                timeout = min(timeout, max(0.0, due - time.time()))
            wake = self._wait(timeout)
            if wake.stop:
                return
            current = self._snapshot()
            due = self._due_after(checked_at)
            is_due = due is not None and time.time() >= due
            if current == seen and time.monotonic() - last_check < self._interval() and not is_due:
                continue
            if current != seen:
                log.info("codex.watch.changed", what=seen.changes(current), mode=self.mode)
            elif is_due:
                log.info("codex.watch.due", due_at=due, mode=self.mode)
            seen = current  # taken before the check: a change during it is seen next round
            checked_at = time.time()
            try:
                self._recheck()
            except Exception:  # the watcher must survive anything; the next round retries
                log.exception("codex.watch.error")
            last_check = time.monotonic()
