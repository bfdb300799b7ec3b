"""docker-compose.yaml is valid for compose v1 and v2, and both read it the same way.

Each version renders the file (anchors merged, variables interpolated) with ``config``; what each
renders also parses with an independent, strict Compose Specification parser (the compose_spec Rust
library). The end-to-end test then runs the whole stack with both versions.
"""

from __future__ import annotations

import subprocess
from typing import Any

import pytest
from compose_spec import PyCompose

from testkit import REPO_ROOT

FILES = [["docker-compose.yaml"], ["docker-compose.yaml", "docker-compose.offline.yaml"]]
COMPOSE_CLIS = {"v1": ["docker-compose"], "v2": ["docker", "compose", "--profile", "*"]}
"""v2's ``config`` leaves out services of inactive profiles (login-N, redis); v1 prints them all."""
PATH = "/usr/local/bin:/usr/bin:/bin"


def _render(version: str, files: list[str], env: dict[str, str]) -> dict[str, Any]:
    cli = COMPOSE_CLIS[version]
    argv = [*cli] + [arg for name in files for arg in ("-f", str(REPO_ROOT / name))] + ["config"]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env, cwd=REPO_ROOT)
    except FileNotFoundError:
        pytest.skip(f"compose {version} absent: scripts/provision.sh installs it")
    if done.returncode != 0 and "is not a docker command" in done.stderr:
        pytest.skip(f"compose {version} absent: scripts/provision.sh installs it")
    assert done.returncode == 0, done.stderr
    rendered: dict[str, Any] = PyCompose.from_yaml(done.stdout).to_dict()
    return rendered


@pytest.fixture(params=sorted(COMPOSE_CLIS))
def version(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class TestComposeFile:
    @pytest.mark.parametrize("files", FILES, ids=["default", "offline"])
    def test_renders_a_valid_compose_specification(self, version: str, files: list[str]) -> None:
        """Each version accepts it, and what it renders parses as the Compose Specification."""
        services = set(_render(version, files, {"PATH": PATH})["services"])
        assert {"codex-worker-0", "codex-worker-1", "codex-worker-2", "codex-worker-default"} <= services
        assert {"login-0", "login-1", "login-2"} <= services

    def test_volumes_have_explicit_names_and_labels(self, version: str) -> None:
        """Each shard volume is named codex_auth_N (or the prefix), so compose and the SDK agree."""
        volumes = _render(version, ["docker-compose.yaml"], {"PATH": PATH, "CODEX_VOLUME_PREFIX": "team_a_auth_"})[
            "volumes"
        ]
        assert {volumes[f"codex_auth_{n}"]["name"] for n in range(3)} == {f"team_a_auth_{n}" for n in range(3)}
        assert all(volumes[f"codex_auth_{n}"]["labels"]["codex.auth"] == "1" for n in range(3))

    @pytest.mark.parametrize("files", FILES, ids=["default", "offline"])
    def test_both_versions_give_each_service_the_same_volumes_and_environment(self, files: list[str]) -> None:
        """v1 and v2 agree on what matters to a shard: its volume mounts and its environment."""
        env = {"PATH": PATH}
        one, two = _render("v1", files, env), _render("v2", files, env)
        assert set(one["services"]) == set(two["services"])
        for name in one["services"]:
            assert _mounts(one["services"][name]) == _mounts(two["services"][name]), name
            assert _environment(one["services"][name]) == _environment(two["services"][name]), name

    def test_each_shard_keeps_its_artifacts_in_a_named_volume(self, version: str) -> None:
        """CODEX_ARTIFACTS_ROOT of every shard's worker is its own named volume, which outlives the
        container (outcomes, final messages and session ids survive a recreation)."""
        rendered = _render(version, ["docker-compose.yaml"], {"PATH": PATH})
        for n in range(3):
            service = rendered["services"][f"codex-worker-{n}"]
            root = _environment(service)["CODEX_ARTIFACTS_ROOT"]
            sources = {source for source, target in _mounts(service) if target == root}
            assert len(sources) == 1 and next(iter(sources)).endswith(f"codex_artifacts_{n}"), sources
            assert f"codex_artifacts_{n}" in rendered["volumes"]


def _mounts(service: dict[str, Any]) -> set[tuple[str, str]]:
    """(source, target) of each volume; v1 prints short strings, v2 long mappings."""
    out = set()
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, target = volume.split(":")[:2]
        else:
            source, target = volume.get("source", ""), volume["target"]
        out.add((source, target))
    return out


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {key: str(value) for key, value in env.items()}
