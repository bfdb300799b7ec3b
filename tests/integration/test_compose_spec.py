"""docker-compose.yaml is valid for compose v1 and for the Compose Specification that v2 implements.

This machine has Debian's docker-compose v1 only; v2 validates files against the Compose
Specification, so the file v1 renders (anchors merged, variables interpolated) is parsed by an
independent, strict Compose Specification parser (the compose_spec Rust library).
"""

from __future__ import annotations

import shutil
import subprocess

import pytest
from compose_spec import PyCompose
from support import REPO_ROOT

FILES = [["docker-compose.yaml"], ["docker-compose.yaml", "docker-compose.offline.yaml"]]


def _render(files: list[str], env: dict[str, str]) -> str:
    if shutil.which("docker-compose") is None:
        pytest.skip("docker-compose absent: scripts/provision.sh installs it")
    argv = ["docker-compose"] + [arg for name in files for arg in ("-f", str(REPO_ROOT / name))] + ["config"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env, cwd=REPO_ROOT)
    assert done.returncode == 0, done.stderr
    return done.stdout


class TestComposeFile:
    @pytest.mark.parametrize("files", FILES, ids=["default", "offline"])
    def test_v1_renders_a_valid_compose_specification(self, files: list[str]) -> None:
        """v1 accepts it, and what it renders parses as the Compose Specification (v2's format)."""
        compose = PyCompose.from_yaml(_render(files, {"PATH": "/usr/bin:/bin:/usr/local/bin"}))
        names = set(compose.service_names())
        assert {"codex-worker-0", "codex-worker-1", "codex-worker-2", "codex-worker-default"} <= names
        assert {"login-0", "login-1", "login-2"} <= names

    def test_volumes_have_explicit_names_and_labels(self) -> None:
        """Each shard volume is named codex_auth_N (or the prefix), so compose and the SDK agree."""
        rendered = PyCompose.from_yaml(
            _render(["docker-compose.yaml"], {"PATH": "/usr/bin:/bin", "CODEX_VOLUME_PREFIX": "team_a_auth_"})
        ).to_dict()
        volumes = rendered["volumes"]
        assert {volumes[f"codex_auth_{n}"]["name"] for n in range(3)} == {f"team_a_auth_{n}" for n in range(3)}
        assert all(volumes[f"codex_auth_{n}"]["labels"]["codex.auth"] == "1" for n in range(3))
