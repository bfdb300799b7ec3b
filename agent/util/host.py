"""Facts about the host and container this process runs in, from ``/proc``.

The claim marker and the fleet lease name their holder by them; the mount check finds its own
container by them.
"""

from __future__ import annotations

import re
from pathlib import Path

__all__ = ["boot_id", "own_container_id"]

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
