"""The CODEX_AGENT_REQUIRE_ALL switch, run on a throwaway test file in a child pytest."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SAMPLE = """
import pytest

@pytest.fixture
def docker_engine():
    pytest.skip("Docker engine absent: test")

def test_needs_docker(docker_engine):
    pass

@pytest.mark.xfail(reason="known", strict=False)
def test_expected_failure():
    assert False
"""


def _run(tmp_path: Path, require_all: str | None) -> subprocess.CompletedProcess[str]:
    """Run pytest on SAMPLE with the plugin loaded, the switch set or unset."""
    (tmp_path / "test_sample.py").write_text(SAMPLE)
    env = {k: v for k, v in os.environ.items() if k != "CODEX_AGENT_REQUIRE_ALL"}
    env["PYTHONPATH"] = os.pathsep.join(
        [str(Path(__file__).parent), str(Path(__file__).parents[1])]
    )  # testkit: the repository root
    if require_all is not None:
        env["CODEX_AGENT_REQUIRE_ALL"] = require_all
    argv = [sys.executable, "-m", "pytest", "-p", "testkit.require_all", "-rA", "-p", "no:cacheprovider"]
    return subprocess.run(
        [*argv, "--rootdir", str(tmp_path), str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=60,
        check=False,
    )


class TestRequireAll:
    """testkit.require_all."""

    def test_skip_stays_a_skip_without_the_switch(self, tmp_path: Path) -> None:
        """Unset: the absent component is a skip and the run passes."""
        proc = _run(tmp_path, None)
        assert proc.returncode == 0, proc.stdout
        assert "1 skipped, 1 xfailed" in proc.stdout

    @pytest.mark.parametrize("value", ["0", ""], ids=["zero", "empty"])
    def test_only_one_turns_it_on(self, tmp_path: Path, value: str) -> None:
        """Any value but "1" leaves skips alone."""
        assert _run(tmp_path, value).returncode == 0

    def test_skip_becomes_failure_naming_the_component(self, tmp_path: Path) -> None:
        """Set to 1: the skip fails the run and says what is missing; xfail is untouched."""
        proc = _run(tmp_path, "1")
        assert proc.returncode == 1, proc.stdout
        assert "missing component: Docker engine absent: test" in proc.stdout
        assert "1 xfailed" in proc.stdout and "skipped" not in proc.stdout.splitlines()[-1]
