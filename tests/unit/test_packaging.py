"""Packaging a team can depend on: what the wheel holds, the version, the one Codex CLI pin, the docs."""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path
from typing import Any

import pytest

import agent
from agent.login import codex_cli
from agent.problems import CODEX_VERSION_DIFFERS

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    """The project wheel, built the way images/build.sh builds it."""
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--disable-pip-version-check",
            "--no-deps",
            "-q",
            "--wheel-dir",
            str(out),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
        timeout=240,
    )
    (built,) = out.glob("codex_worker_agent-*.whl")
    return zipfile.ZipFile(built)


class TestWheel:
    def test_product_only_with_markers_and_license(self, wheel: zipfile.ZipFile) -> None:
        """No testkit (it needs pytest), a py.typed per package, the LICENSE and the Codex CLI pin."""
        names = wheel.namelist()
        tops = {n.split("/", 1)[0] for n in names if not n.split("/", 1)[0].endswith(".dist-info")}
        assert tops == {"agent", "worker_entry", "openai_standin"}
        assert {"agent/py.typed", "worker_entry/py.typed", "openai_standin/py.typed", "agent/CODEX_CLI_VERSION"} <= set(
            names
        )
        assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)

    def test_metadata(self, wheel: zipfile.ZipFile) -> None:
        """License MIT, classifiers, the three commands; the version agent.__version__ reports."""
        meta_name = next(n for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))
        meta = Parser().parsestr(wheel.read(meta_name).decode())
        assert meta["License-Expression"] == "MIT" or meta["License"] == "MIT"
        classifiers = meta.get_all("Classifier") or []
        assert "Typing :: Typed" in classifiers and "Framework :: Celery" in classifiers
        entry = wheel.read(next(n for n in wheel.namelist() if n.endswith("entry_points.txt"))).decode()
        assert {"codex-agent", "worker-entry", "openai-standin"} <= set(re.findall(r"^([\w-]+) =", entry, re.M))
        assert re.fullmatch(r"\d+\.\d+\.\d+.*", meta["Version"])
        assert agent.__version__ == meta["Version"]


class TestCodexCliPin:
    def test_one_declaration_for_provisioning_build_and_agent(self) -> None:
        """scripts/_common.sh (provisioning, images/build.sh) reads the agent's own file."""
        shell = subprocess.run(
            ["bash", "-c", f'unset CODEX_VERSION; source "{ROOT}/scripts/_common.sh"; printf %s "$CODEX_VERSION"'],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        )
        assert shell.stdout == codex_cli.SUPPORTED_VERSION == (ROOT / "agent" / "CODEX_CLI_VERSION").read_text().strip()
        assert "codex-cli $CODEX_VERSION" in (ROOT / "images" / "build.sh").read_text()
        for dockerfile in ("worker", "job"):
            assert (
                "LABEL codex.cli.version=$CODEX_CLI_VERSION"
                in (ROOT / "images" / dockerfile / "Dockerfile").read_text()
            )

    def test_supported_cli_gives_no_warning(self, codex_bin: str) -> None:
        """The provisioned CLI is the supported release: no CODEX-W001."""
        assert codex_cli.installed_version(codex_bin) == codex_cli.SUPPORTED_VERSION
        assert codex_cli.version_warning(codex_bin, {"shard": 0}) is None

    def test_another_release_is_a_warning(self, tmp_path: Path) -> None:
        """A binary that reports another release: CODEX-W001 naming both versions and the binary."""
        other = tmp_path / "codex"
        other.write_text("#!/bin/sh\necho 'codex-cli 0.999.1'\n")
        other.chmod(0o755)
        problem = codex_cli.version_warning(str(other), {"shard": 2})
        assert problem is not None and problem.code == CODEX_VERSION_DIFFERS.code == "CODEX-W001"
        assert problem.severity == "warning"
        assert (
            "0.999.1" in problem.message
            and codex_cli.SUPPORTED_VERSION in problem.message
            and str(other) in problem.message
        )

    def test_absent_cli_is_not_this_warning(self, tmp_path: Path) -> None:
        """No binary: no version warning (the login check reports CODEX-E031 itself)."""
        assert codex_cli.version_warning(str(tmp_path / "nope"), {"shard": 0}) is None


class TestDocsInTheRepository:
    def test_relative_links_resolve(self) -> None:
        """README, runbook, CHANGELOG and the design contract link only to files in the repository."""
        for doc in ("README.md", "runbook.md", "CHANGELOG.md", "docs/design.md"):
            path = ROOT / doc
            for target in re.findall(r"\]\(([^)#:\s]+)(?:#[^)]*)?\)", path.read_text()):
                assert (path.parent / target).exists(), f"{doc} links to {target}"
        assert "../shared/" not in (ROOT / "README.md").read_text()
        assert "Contract: environment" in (ROOT / "docs" / "design.md").read_text()
        assert (ROOT / "LICENSE").read_text().startswith("MIT License")


class TestCheckWarnsOnAnotherRelease:
    def _checker(self, tmp_path: Path, codex_bin: str) -> Any:
        from agent.settings.config import load
        from agent.worker.checks import Checker
        from testkit import make_api_key_login

        home = tmp_path / ".codex"
        make_api_key_login(codex_bin, home)
        return Checker(
            load({"CODEX_SHARD_INDEX": "0", "CODEX_HOME": str(home), "CODEX_BIN": codex_bin, "HOME": str(tmp_path)})
        )

    def test_the_login_check_carries_codex_w001_for_another_release(self, tmp_path: Path, codex_bin: str) -> None:
        """The real CLI behind a wrapper that reports another release: the login passes, with CODEX-W001."""
        wrapper = tmp_path / "bin" / "codex"
        wrapper.parent.mkdir()
        wrapper.write_text(
            f'#!/bin/sh\n[ "$1" = --version ] && exec echo "codex-cli 0.999.0"\nexec "{codex_bin}" "$@"\n'
        )
        wrapper.chmod(0o755)
        result = self._checker(tmp_path, str(wrapper)).check_login()
        assert result.ok and [w.code for w in result.warnings] == ["CODEX-W001"]
        assert "0.999.0" in result.warnings[0].message and result.warnings[0].check == "login"

    def test_the_supported_release_carries_no_warning(self, tmp_path: Path, codex_bin: str) -> None:
        result = self._checker(tmp_path, codex_bin).check_login()
        assert result.ok and result.warnings == ()
