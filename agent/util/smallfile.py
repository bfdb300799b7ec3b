"""Read a small file someone else wrote into the volume: never hang on it, never read a huge one whole.

``auth.json`` and ``config.toml`` are a few KiB each. Whatever sits at their path instead (a
directory, a FIFO that would block ``open()`` forever, a file of gigabytes, one the worker user may
not read) must give a cause the checks can report, not a hang or a traceback.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

__all__ = ["UnreadableFile", "read_small_file"]


class UnreadableFile(Exception):
    """The file exists but cannot be read as a small regular file; ``cause`` says why (no content)."""

    def __init__(self, cause: str, modified: float | None = None) -> None:
        super().__init__(cause)
        self.cause = cause
        self.modified = modified


def read_small_file(path: Path, limit: int) -> tuple[bytes, float] | None:
    """The content and mtime of ``path``; None when it does not exist.

    Raises:
        UnreadableFile: not a regular file, larger than ``limit`` bytes, or not readable.
    """
    try:
        # O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer forever.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as e:
        raise UnreadableFile(f"cannot be opened: {e.strerror or type(e).__name__}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnreadableFile("not a regular file", st.st_mtime)
        if st.st_size > limit:
            raise UnreadableFile(f"larger than {limit} bytes", st.st_mtime)
        with os.fdopen(os.dup(fd), "rb") as file:
            content = file.read(limit + 1)
    except OSError as e:
        raise UnreadableFile(f"cannot be read: {e.strerror or type(e).__name__}") from None
    finally:
        os.close(fd)
    if len(content) > limit:  # it grew between fstat and read
        raise UnreadableFile(f"larger than {limit} bytes", st.st_mtime)
    return content, st.st_mtime
