"""List requirements a target interpreter needs that a wheel directory lacks.

``pip wheel`` on the host evaluates environment markers for the host's Python, so a dependency
guarded by e.g. ``python_full_version < "3.11.3"`` (redis -> async-timeout) is left out when the
host runs 3.11.9 and the image runs Debian's 3.11.2. images/build.sh feeds what this prints back
to ``pip wheel`` until nothing is missing.

Usage: python wheel_closure.py WHEEL_DIR TARGET_PYTHON_FULL_VERSION
"""

from __future__ import annotations

import sys
import zipfile
from collections.abc import Iterator
from email.parser import Parser
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename

__all__ = ["missing_requirements", "main"]


def _requires_dist(wheel: Path) -> Iterator[Requirement]:
    """Yield the ``Requires-Dist`` entries of one wheel's METADATA."""
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        metadata = Parser().parsestr(archive.read(name).decode("utf-8"))
    for line in metadata.get_all("Requires-Dist") or []:
        yield Requirement(line)


def missing_requirements(wheel_dir: Path, python_full_version: str) -> list[str]:
    """Return the requirements (as strings) that apply on the target but have no wheel.

    Args:
        wheel_dir: directory of ``*.whl`` files resolved on the host.
        python_full_version: the target interpreter's ``platform.python_version()``.

    Returns:
        Requirement strings without markers, sorted, for ``pip wheel``.
    """
    env = dict(default_environment())
    env["python_full_version"] = python_full_version
    env["python_version"] = ".".join(python_full_version.split(".")[:2])
    wheels = sorted(wheel_dir.glob("*.whl"))
    present = {canonicalize_name(parse_wheel_filename(w.name)[0]) for w in wheels}
    missing: set[str] = set()
    for wheel in wheels:
        for req in _requires_dist(wheel):
            # Extras of installed wheels are never requested by our dependency tree.
            applies = req.marker is None or req.marker.evaluate({**env, "extra": ""})
            if applies and canonicalize_name(req.name) not in present:
                req.marker = None
                missing.add(str(req))
    return sorted(missing)


def main(argv: list[str]) -> int:
    """Print the missing requirements, one a line."""
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    for line in missing_requirements(Path(argv[0]), argv[1]):
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
