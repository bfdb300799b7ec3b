"""A run's workspace seeded from a source on the worker, before the run's first phase.

The source is a directory, or a ``.tar``/``.tar.gz``/``.tgz`` file, under ``CODEX_SEED_ROOT``, the
one place the operator lets tasks seed from (unset: seeding is off). The worker packs it into a
fresh tar holding only directories and regular files with plain relative names (no links, devices,
owners or ``..``), and a seed job (the job image, through the same job launcher and job policy
as a phase) unpacks it from its stdin into the run's workspace volume. It happens once per run,
while the workspace is new: :data:`SEED_FILE` in the run's artifacts marks it done.
"""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Iterator, Mapping
from pathlib import Path, PurePosixPath
from typing import IO, Any

from agent.errors import PhaseRequestError

__all__ = ["SEED_COMMAND", "SEED_FILE", "SEED_LIMIT", "seed_archive", "seed_path", "seed_workspace"]

SEED_FILE = "seed.json"
SEED_LIMIT = 64 * 1024 * 1024
"""Bytes a seed's tar may have (it is built in memory and written to the seed job's stdin)."""

SEED_COMMAND = ["tar", "-x", "-f", "-", "-C", "/workspace", "--no-same-owner", "--no-same-permissions"]
"""What the seed job runs (the job image needs ``tar``); the workspace is its working directory."""

_TARS = (".tar", ".tar.gz", ".tgz")


def _refuse(facts: Mapping[str, Any], value: str, cause: str, root: Path | None) -> PhaseRequestError:
    accepted = (
        f"a directory or a {'/'.join(_TARS)} file under CODEX_SEED_ROOT={root}"
        if root is not None
        else "no seed (CODEX_SEED_ROOT is unset on this worker)"
    )
    return PhaseRequestError(**facts, field="seed", value=value, cause=cause, accepted=accepted)


def seed_path(root: Path | None, seed: Any, facts: Mapping[str, Any]) -> Path:
    """The seed's real path: under ``root`` after every link is resolved.

    Raises:
        PhaseRequestError: CODEX-E044, seeding off, not a string, outside the root, absent, or
            neither a directory nor a tar file.
    """
    shown = seed[:200] if isinstance(seed, str) else type(seed).__name__
    if root is None:
        raise _refuse(facts, shown, "this worker takes no seeds", root)
    if not isinstance(seed, str) or not seed or "\x00" in seed:
        raise _refuse(facts, shown, "not a path", root)
    real_root = root.resolve()
    path = (real_root / seed).resolve()
    if path != real_root and real_root not in path.parents:
        raise _refuse(facts, shown, "outside the seed root", root)
    if path.is_dir():
        return path
    if path.is_file() and path.name.endswith(_TARS):
        return path
    raise _refuse(facts, shown, "no such directory or tar file", root)


def _members_of_directory(top: Path) -> Iterator[tuple[str, Path | None]]:
    for current, dirs, files in os.walk(top):  # links are not followed, nor kept
        dirs.sort()
        base = Path(current)
        for name in dirs:
            if not (base / name).is_symlink():
                yield str((base / name).relative_to(top)), None
        for name in sorted(files):
            path = base / name
            if path.is_file() and not path.is_symlink():
                yield str(path.relative_to(top)), path


def _plain(name: str) -> str | None:
    parts = [p for p in PurePosixPath(name).parts if p not in ("", ".", "/")]
    return "/".join(parts) if parts and ".." not in parts else None


def seed_archive(path: Path, facts: Mapping[str, Any]) -> tuple[bytes, int]:
    """A fresh tar of the seed's directories and regular files, and how many files it holds.

    Raises:
        PhaseRequestError: CODEX-E044, the tar is larger than :data:`SEED_LIMIT` or unreadable.
    """
    out = io.BytesIO()
    files = 0

    def add(archive: tarfile.TarFile, name: str, size: int, mode: int, data: IO[bytes] | None) -> None:
        info = tarfile.TarInfo(name)
        info.type = tarfile.REGTYPE if data is not None else tarfile.DIRTYPE
        info.mode, info.size, info.uid, info.gid = (0o644 | (mode & 0o111)) if data else 0o755, size, 0, 0
        archive.addfile(info, data)
        if out.tell() > SEED_LIMIT:
            raise PhaseRequestError(
                **facts,
                field="seed",
                value=str(path)[:200],
                cause="larger than the seed limit",
                accepted=f"a seed of at most {SEED_LIMIT // (1024 * 1024)} MiB",
            )

    try:
        with tarfile.open(fileobj=out, mode="w") as archive:
            if path.is_dir():
                for name, source in _members_of_directory(path):
                    if source is None:
                        add(archive, name, 0, 0, None)
                    else:
                        with source.open("rb") as handle:
                            add(archive, name, source.stat().st_size, source.stat().st_mode, handle)
                            files += 1
            else:
                with tarfile.open(path, mode="r:*") as given:
                    for member in given:
                        plain = _plain(member.name)
                        if plain is None or not (member.isdir() or member.isfile()):
                            continue  # links, devices, absolute or '..' names: dropped
                        data = given.extractfile(member) if member.isfile() else None
                        add(archive, plain, member.size if data else 0, member.mode, data)
                        files += 1 if data else 0
    except (OSError, tarfile.TarError) as e:
        raise PhaseRequestError(
            **facts,
            field="seed",
            value=str(path)[:200],
            cause=f"unreadable: {type(e).__name__}",
            accepted="a readable directory or tar file",
        ) from None
    return out.getvalue(), files


def seed_workspace(
    launcher: Any, image: str, directory: Path, path: Path, workspace: str, timeout: float, facts: Mapping[str, Any]
) -> dict[str, Any] | None:
    """Unpack the seed into ``workspace`` with a seed job, once per run; None when already seeded.

    ``directory`` is the run's artifacts directory, where :data:`SEED_FILE` records the seed (its
    path under the root, file count and size) after the job succeeded.

    Raises:
        PhaseRequestError: CODEX-E044 (see :func:`seed_archive`).
        JobFailedError, JobTimeoutError, JobRejectedError, DockerUnavailableError: the seed job.
    """
    import structlog

    from agent.util.atomic import write_json_atomically

    marker = directory / SEED_FILE
    if marker.exists():
        return None
    data, files = seed_archive(path, facts)
    result = launcher.run(image, SEED_COMMAND, workspace=workspace, timeout=timeout, stdin=data)
    record = {"seed": str(path), "files": files, "bytes": len(data), "container_id": result.container_id}
    directory.mkdir(parents=True, exist_ok=True)
    write_json_atomically(marker, record, mode=0o644)
    structlog.get_logger(__name__).info("codex.workspace.seeded", workspace=workspace, **record)
    return record
