"""CODEX_HOME's identity in two syscalls, and the per-task guard built on it.

The full mount check (:mod:`agent.volume.mount`) reads the mount table or asks the engine. A task's
pre-flight cannot afford that every time, yet must not start a phase on a volume that was
chmod-ed, chown-ed, remounted read-only or replaced since the last check. :class:`HomeStat` is
what ``stat`` and ``statvfs`` say about the directory (device, inode, mode, owner, read-only
flag): a different volume, or the directory underneath an unmounted one, has another inode.
:class:`VolumeIdentityCheck` compares it with the last stat a full check vouched for, and runs the mount
check again only when they differ.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from agent.login.auth import AUTH_FILE
from agent.settings.config import AgentConfig
from agent.volume import mount as mount_mod

__all__ = ["AuthSignature", "auth_signature", "HomeStat", "stat_home", "VolumeIdentityCheck"]

AuthSignature = tuple[int, int, int] | None


def auth_signature(codex_home: Path) -> AuthSignature:
    """Identity of ``auth.json`` right now (inode, size, mtime); None when absent."""
    try:
        st = os.stat(Path(codex_home) / AUTH_FILE)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


@dataclass(frozen=True)
class HomeStat:
    """What the kernel says about the directory at CODEX_HOME right now."""

    device: int
    inode: int
    mode: int
    uid: int
    read_only: bool


def stat_home(codex_home: Path) -> HomeStat | None:
    """The identity of ``codex_home`` (symlinks followed), None when it cannot be stat-ed."""
    try:
        st = os.stat(codex_home)
        read_only = bool(os.statvfs(codex_home).f_flag & os.ST_RDONLY)
    except OSError:
        return None
    return HomeStat(st.st_dev, st.st_ino, stat.S_IMODE(st.st_mode), st.st_uid, read_only)


class VolumeIdentityCheck:
    """Refuses a task when CODEX_HOME is no longer the private, writable volume last verified.

    The worker's main process vouches for the stat taken just before each passing mount check;
    a pool child inherits that at fork. A stat that differs (or one taken in a child that forked
    before the fix) re-runs the mount check here, from ``/proc/self/mountinfo``, and only its
    verdict decides.

    Args:
        config: the worker's configuration (CODEX_HOME, the expected volume).
    """

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self._vouched: HomeStat | None = None

    def vouch(self, home: HomeStat | None) -> None:
        """A full mount check passed on the directory that had this stat (None: forget)."""
        self._vouched = home

    def check(self) -> None:
        """Raise the mount check's error unless CODEX_HOME is as vouched for, or passes it now.

        Raises:
            MountError: CODEX-E020..E023, what the mount check finds wrong.
        """
        now = stat_home(self.config.codex_home)
        if now is not None and now == self._vouched:
            return
        observation = mount_mod.observe(self.config.codex_home)
        error = mount_mod.judge(
            observation, expected_volume=self.config.volume_name, uid=os.getuid(), facts=self.config.facts()
        )
        if error is not None:
            raise error
        self._vouched = now
