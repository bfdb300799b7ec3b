"""Read many login volumes in one throwaway container: ``codex login status`` and a few small files each.

``codex-agent volumes`` used to start one container per volume (7.8-8.5 s for 34 volumes). Here one
container of the job image mounts every volume READ-ONLY (and ``nocopy``: the image's files are
never copied into an empty volume, a listing changes nothing) at its own path (the first at
``CODEX_JOB_HOME``, where the Docker API guard imposes the shard's own volume; the others at
``/inspect/<i>``) and runs, for every volume at once, one POSIX ``sh`` step under ``timeout``:

* ``codex login status`` with ``CODEX_HOME`` at that mount (the pinned CLI needs no write for it: it
  only warns that it cannot create its PATH aliases under ``tmp/``, and answers as usual; that one
  warning line, :data:`READ_ONLY_WARNING`, is dropped);
* bounded copies of ``auth.json``, the claim, revocation and usage-limit markers (``head -c``
  limit+1: a larger file is reported as too large, never parsed), and the tail of the newest
  rollout (:data:`agent.login.usage.TAIL_BYTES`, chosen as :func:`agent.login.usage.newest_rollout` does: the
  newest mtime in the two newest day folders). Shell builtins do the choosing, so a step starts a
  handful of processes only (34 volumes share two cores).

Symbolic links are never followed (``auth.json``, ``sessions``, a day folder or a rollout pointing
into another volume would put that volume's facts on this one's row), FIFOs and directories are
never opened. Every step writes to its own file; once all ended, the files are printed in order,
each payload base64-encoded between ``@@ <i> begin``/``end`` lines, so no byte of a volume can
forge another volume's frame. A step that does not end in time is killed and reported on its own
volume (CODEX-E032); the others' rows are unaffected. Nothing here logs content: the frames hold
secrets (``auth.json``) and are parsed in memory only.
"""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import docker

from agent.engine.client import EngineCreate, run_container
from agent.login.auth import AUTH_FILE
from agent.login.container import CONTAINER_CODEX_BIN, PURPOSE_LABEL
from agent.login.revocation import REVOKED_FILE
from agent.login.usage import LIMIT_FILE, MARKER_LIMIT, TAIL_BYTES
from agent.volume.claim import MARKER_FILE

__all__ = [
    "MAX_VOLUMES_PER_CONTAINER",
    "READ_ONLY_WARNING",
    "INSPECT_ROOT",
    "FILE_LIMITS",
    "FileRead",
    "VolumeReading",
    "inspect_batch",
    "parse_frames",
    "overall_timeout",
    "mount_points",
]

MAX_VOLUMES_PER_CONTAINER = 64
"""Mounts per inspection container; more volumes are read in several containers."""
INSPECT_ROOT = "/inspect"
STEP_EXIT_TIMEOUT = frozenset({124, 137, 143})
"""``timeout``'s exit when it had to stop the step (coreutils 124/137, busybox 143)."""

AUTH_LIMIT = 1 << 20
"""As :func:`agent.login.auth.inspect_auth_file`: past 1 MiB it is no auth.json."""
SMALL_LIMIT = 64 * 1024

FILE_LIMITS: dict[str, tuple[str, int]] = {
    "auth": (AUTH_FILE, AUTH_LIMIT),
    "claim": (MARKER_FILE, SMALL_LIMIT),
    "revoked": (REVOKED_FILE, SMALL_LIMIT),
    "limited": (LIMIT_FILE, MARKER_LIMIT),
}
"""Frame kind -> file in the volume and the most bytes it may have."""

_STEP = r"""
i=$1; d=$2; out=/tmp/codex-inspect/$i.login
note() { echo "@@ $i note $1 $2"; }
grab() {
  f="$d/$2"
  if [ -L "$f" ]; then note "$1" symlink; return 1; fi
  [ -e "$f" ] || return 0
  if [ ! -f "$f" ]; then note "$1" notfile; return 1; fi
  if [ ! -r "$f" ]; then note "$1" unreadable; return 1; fi
  stat -c "@@ $i begin $1 %Y" "$f" || { note "$1" unreadable; return 1; }
  head -c $(($3 + 1)) "$f" | base64; echo "@@ $i end $1"
}
grab claim "$CLAIM" "$SMALL"; grab revoked "$REVOKED" "$SMALL"; grab limited "$LIMITED" "$MARKER"
if grab auth "$AUTH" "$AUTHMAX"; then
  CODEX_HOME="$d" "$CODEX" login status > "$out" 2>&1 < /dev/null
  echo "@@ $i begin login $?"; base64 < "$out"; echo "@@ $i end login"
fi
s="$d/sessions"; best=""; newest=""; second=""
if [ -d "$s" ] && [ ! -L "$s" ]; then
  for day in "$s"/[0-9]*/[0-9]*/[0-9]*; do
    month=${day%/*}; year=${month%/*}
    if [ -d "$day" ] && [ ! -L "$day" ] && [ ! -L "$month" ] && [ ! -L "$year" ]; then
      second=$newest; newest=$day
    fi
  done
  for day in $second $newest; do
    n=0
    for p in "$day"/rollout-*.jsonl; do
      n=$((n + 1)); [ "$n" -gt 4096 ] && break
      if [ -f "$p" ] && [ ! -L "$p" ] && { [ -z "$best" ] || ! [ "$best" -nt "$p" ]; }; then best=$p; fi
    done
  done
fi
if [ -n "$best" ] && [ -r "$best" ]; then
  stat -c "@@ $i begin rollout %Y:%s" "$best" && tail -c "$TAIL" "$best" | base64 && echo "@@ $i end rollout"
fi
"""
"""One volume's step: ``sh -c STEP step INDEX MOUNT`` (file names and limits in the environment)."""

_MAIN = r"""
exec 2>/dev/null
step=$1; t=$2; shift 2
for tool in timeout base64 head tail stat "$CODEX"; do
  command -v "$tool" > /dev/null || { echo "@@ - missing $tool"; exit 3; }
done
mkdir -p /tmp/codex-inspect || { echo "@@ - missing writable-tmp"; exit 3; }
i=0
for d in "$@"; do
  ( timeout -s KILL "$t" sh -c "$step" step "$i" "$d"; echo "@@ $i done $?" ) > "/tmp/codex-inspect/$i" &
  i=$((i + 1))
done
wait
i=0
for d in "$@"; do cat "/tmp/codex-inspect/$i"; i=$((i + 1)); done
"""
"""The container's command: every step at once, then every step's frames in order."""


@dataclass(frozen=True)
class FileRead:
    """One small file of a volume as the step saw it: its content, or why it was not read."""

    content: bytes | None = None
    modified: float | None = None
    problem: str | None = None
    """``symlink``, ``notfile``, ``unreadable``, ``toolarge`` (then ``content`` is None)."""
    size: int | None = None


@dataclass
class VolumeReading:
    """What the inspection container found in one volume (raw: the callers parse it)."""

    files: dict[str, FileRead] = field(default_factory=dict)
    login: tuple[int, str] | None = None
    """``codex login status``'s exit code and output; None when it did not run or not to the end."""
    step_exit: int | None = None
    """The step's exit (``timeout``'s); None when the container ended before the step did."""
    failure: str | None = None
    """Why the whole container gave nothing for this volume (a missing tool); None otherwise."""

    @property
    def timed_out(self) -> bool:
        """The step was stopped by its timeout before ``codex login status`` answered."""
        return self.login is None and self.step_exit in STEP_EXIT_TIMEOUT


def overall_timeout(per_volume: float, count: int) -> float:
    """The container's limit: every step runs at once, so one step's limit plus a share per volume."""
    return per_volume + 10.0 + 0.5 * count


def mount_points(job_home: str, count: int) -> list[str]:
    """Where each volume of a batch is mounted: the first at ``job_home``, the others ``/inspect/<i>``."""
    return [job_home if i == 0 else f"{INSPECT_ROOT}/{i}" for i in range(count)]


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _frames(output: str) -> Iterator[tuple[str, list[str], list[str]]]:
    """(index, header words, base64 lines) per complete frame; notes and ends come with no lines.

    A frame cut short (its step was killed mid-write) is dropped whole; the line that cut it is
    read as what it is.
    """
    lines = output.splitlines()
    at = 0
    while at < len(lines):
        words = lines[at].split()
        at += 1
        if len(words) < 3 or words[0] != "@@":
            continue
        if words[2] != "begin" or len(words) < 4:
            yield words[1], words[2:], []
            continue
        end = ["@@", words[1], "end", words[3]]
        body: list[str] = []
        while at < len(lines) and not lines[at].startswith("@@"):
            body.append(lines[at])
            at += 1
        if at < len(lines) and lines[at].split() == end:
            at += 1
            yield words[1], words[2:], body


READ_ONLY_WARNING = "WARNING: proceeding, even though we could not create PATH aliases"
"""What the CLI (0.169, 0.171) prints on a read-only ``CODEX_HOME``: it cannot place its
``apply_patch`` aliases under ``tmp/``, which ``login status`` never uses. Dropped from the output."""


def _without_alias_warning(content: bytes) -> str:
    text = content.decode("utf-8", "replace")
    return "".join(line for line in text.splitlines(keepends=True) if not line.startswith(READ_ONLY_WARNING))


def parse_frames(output: str, count: int) -> list[VolumeReading]:
    """Each volume's reading from the container's output (frames of volumes ``0..count-1``)."""
    readings = [VolumeReading() for _ in range(count)]
    for index, words, body in _frames(output):
        if index == "-":  # the whole container: a tool missing in the image
            for reading in readings:
                reading.failure = " ".join(words)
            continue
        if not index.isdigit() or int(index) >= count:
            continue
        reading, kind = readings[int(index)], words[1] if len(words) > 1 else ""
        if words[0] == "done":
            reading.step_exit = int(kind) if kind.isdigit() else None
        elif words[0] == "note" and kind in (*FILE_LIMITS, "rollout") and len(words) > 2:
            reading.files[kind] = FileRead(problem=words[2])
        elif words[0] == "begin" and (kind in FILE_LIMITS or kind in ("login", "rollout")):
            try:
                content = base64.b64decode("".join(body), validate=True)
            except (binascii.Error, ValueError):
                continue
            extra = words[2] if len(words) > 2 else "-"
            if kind == "login":
                reading.login = (int(extra), _without_alias_warning(content)) if extra.isdigit() else None
            elif kind in FILE_LIMITS and len(content) > FILE_LIMITS[kind][1]:
                reading.files[kind] = FileRead(problem="toolarge")
            else:
                stamp, _, size = extra.partition(":")
                reading.files[kind] = FileRead(content, _number(stamp), size=int(size) if size.isdigit() else None)
    return readings


def inspect_batch(
    client: docker.DockerClient,
    *,
    image: str,
    volumes: Sequence[str],
    job_home: str,
    user: str,
    timeout: float,
    facts: dict[str, Any],
) -> list[VolumeReading]:
    """Read up to :data:`MAX_VOLUMES_PER_CONTAINER` volumes in one container (removed afterwards).

    Raises:
        ContainerTimeout: the container as a whole outlived :func:`overall_timeout` (killed, removed).
        DockerUnavailableError: the engine failed (CODEX-E040).
        ValueError: more volumes than one container may mount.
    """
    if not volumes:
        return []
    if len(volumes) > MAX_VOLUMES_PER_CONTAINER:
        raise ValueError(f"{len(volumes)} volumes: at most {MAX_VOLUMES_PER_CONTAINER} per container")
    points = mount_points(job_home, len(volumes))
    env = {
        "CODEX_HOME": job_home,
        "NO_COLOR": "1",
        "LANG": "C.UTF-8",
        "CODEX": CONTAINER_CODEX_BIN,
        "TAIL": str(TAIL_BYTES),
        "SMALL": str(SMALL_LIMIT),
        "MARKER": str(MARKER_LIMIT),
        "AUTHMAX": str(AUTH_LIMIT),
        "AUTH": AUTH_FILE,
        "CLAIM": MARKER_FILE,
        "REVOKED": REVOKED_FILE,
        "LIMITED": LIMIT_FILE,
    }
    # The Engine body itself, not docker-py's create(): its ``volumes`` turns a bind mode "ro,nocopy"
    # into a bogus Config.Volumes path (an anonymous volume per mount), and the Docker API guard
    # takes the shard's own volume at CODEX_JOB_HOME as a bind only (it re-mounts it there).
    body = {
        "Image": image,
        "Cmd": ["sh", "-c", _MAIN, "inspect", _STEP, f"{timeout:g}", *points],
        "Entrypoint": [],
        "User": user,
        "Env": [f"{key}={value}" for key, value in env.items()],
        "Labels": {PURPOSE_LABEL: "inspect", "codex.volume": volumes[0]},
        "HostConfig": {
            "Binds": [f"{name}:{point}:ro,nocopy" for name, point in zip(volumes, points, strict=True)],
            "NetworkMode": "none",
        },
    }
    run = run_container(
        client,
        EngineCreate(body),
        operation="inspect container",
        facts=facts,
        timeout=overall_timeout(timeout, len(volumes)),
    )
    return parse_frames(run.output, len(volumes))
