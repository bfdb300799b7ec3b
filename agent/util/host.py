"""Facts about the host and container this process runs in, from ``/proc``.

The claim marker and the fleet lease name their holder by them; the mount check finds its own
container by them.
"""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path

import psutil

__all__ = ["ProcessFacts", "boot_id", "own_container_id", "start_ticks", "this_process"]

_CONTAINER_ID = re.compile(r"/(?:docker/)?containers/([0-9a-f]{64})/")


def boot_id() -> str:
    """The kernel's boot id: shared by every container on one host, new after each reboot."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown"


def own_container_id() -> str | None:
    """This container's full id from ``/proc/self/mountinfo``, or None outside Docker."""
    try:
        text = Path("/proc/self/mountinfo").read_text()
    except OSError:
        return None
    match = _CONTAINER_ID.search(text)
    return match.group(1) if match else None


def start_ticks(pid: int) -> int | None:
    """When process ``pid`` started, in clock ticks since boot; None when there is no such process.

    Another process tells a live writer from a reused pid by it. A wall-clock start time (psutil's
    ``create_time``: the boot time plus these ticks) moves whenever the clock is stepped or slewed,
    as on a machine that has just booted (psutil issue 2526); these ticks never do.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except (OSError, ValueError):
        return None
    # Field 22 of proc_pid_stat(5); the command name before it is in parentheses and may hold spaces.
    after_name = stat.rpartition(b")")[2].split()
    try:
        return int(after_name[19])
    except (IndexError, ValueError):
        return None


@dataclass(frozen=True)
class ProcessFacts:
    """Where this process runs: what a claim marker and a lease record name their holder by."""

    hostname: str
    boot_id: str
    container_id: str | None
    pid: int
    process_start: float


def this_process() -> ProcessFacts:
    """The facts of the calling process, read now (a forked child gets its own)."""
    return ProcessFacts(
        hostname=socket.gethostname(),
        boot_id=boot_id(),
        container_id=own_container_id(),
        pid=os.getpid(),
        process_start=psutil.Process().create_time(),
    )
