"""deploy/swarm/stack.py keeps the Swarm stack in step with docker-compose.yaml.

The stack is derived from the compose file at deploy time, so it cannot drift; these tests pin what
the derivation must keep (image, environment, volumes, healthcheck, stop grace) and what it must add
(one replica, a hard placement per shard, stop-first for updates and rollbacks). The real deploy on
a single-node swarm is tests/integration/test_swarm.py.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "deploy" / "swarm"))
from stack import HOST_RUN, SHARD_LABEL, UNSUPPORTED, build_stack, shard_of  # noqa: E402

KEPT = ("image", "environment", "volumes", "healthcheck", "stop_grace_period", "init")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yaml").read_text())
    return data


@pytest.fixture(scope="module", params=["service", "host"])
def stack(request: pytest.FixtureRequest, compose: dict[str, Any]) -> dict[str, Any]:
    return build_stack(compose, broker=request.param)


def shard_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {n: s for n, s in compose["services"].items() if shard_of(s) is not None}


def test_every_shard_of_the_compose_file_is_a_service_with_the_same_container(
    compose: dict[str, Any], stack: dict[str, Any]
) -> None:
    """Image, environment, volumes, healthcheck, stop grace and init are the compose file's own."""
    shards = shard_services(compose)
    assert shards and shards.keys() <= stack["services"].keys()
    for name, service in shards.items():
        for key in KEPT:
            kept = stack["services"][name].get(key)
            if key == "environment":  # plus the worker's name, a Swarm template
                kept = {k: v for k, v in kept.items() if k != "AGENT_WORKER_NAME"}
            assert kept == service.get(key), f"{name}.{key}"
    assert stack["volumes"] == compose["volumes"]  # explicit names: the agent and the CLI agree on them


def test_one_replica_placed_hard_on_its_shards_node_and_stopped_first(
    compose: dict[str, Any], stack: dict[str, Any]
) -> None:
    """replicas 1, node.labels.codex.shard.N == true, stop-first for updates and rollbacks."""
    for name, service in shard_services(compose).items():
        deploy = stack["services"][name]["deploy"]
        shard = shard_of(service)
        assert deploy["replicas"] == 1 and deploy["mode"] == "replicated"
        assert deploy["placement"]["constraints"] == [f"node.labels.{SHARD_LABEL.format(shard=shard)} == true"]
        assert deploy["update_config"]["order"] == deploy["rollback_config"]["order"] == "stop-first"
        assert stack["services"][name]["environment"]["AGENT_WORKER_NAME"] == "{{.Service.Name}}@{{.Node.Hostname}}"
    orders = {s["deploy"][c]["order"] for s in stack["services"].values() for c in ("update_config", "rollback_config")}
    assert orders == {"stop-first"}  # start-first would run two containers on one login


def test_no_key_swarm_refuses_and_no_login_service(stack: dict[str, Any]) -> None:
    """Stack files take no restart/depends_on/group_add/profiles; the login one-shots are not services."""
    for name, service in stack["services"].items():
        assert not set(UNSUPPORTED) & service.keys(), name
        assert not name.startswith("login-")


def test_the_socket_holder_runs_on_every_node(compose: dict[str, Any], stack: dict[str, Any]) -> None:
    """The service holding the Docker socket (the API guard) is global: each node's shards use their own."""
    holders = [
        n for n, s in compose["services"].items() if "/var/run/docker.sock:/var/run/docker.sock" in s.get("volumes", [])
    ]
    assert holders and all(
        stack["services"][n]["deploy"]["mode"] == "global" for n in holders if n in stack["services"]
    )
    assert not any("replicas" in stack["services"][n]["deploy"] for n in holders)
    # Every shard is listed: Swarm will not create a worker's missing endpoint directory for it.
    guard = stack["services"]["docker-guard"]["environment"]["CODEX_GUARD_SHARDS"]
    assert guard == ",".join(
        f"{i}=${{CODEX_VOLUME_PREFIX:-codex_auth_}}{i}" for i in range(len(shard_services(compose)))
    )


def test_the_guard_binds_only_what_every_node_has(compose: dict[str, Any], stack: dict[str, Any]) -> None:
    """Swarm rejects a bind whose source is missing, and ``/run/codex-guard`` is missing on every
    freshly booted node: the guard binds the node's ``/run`` and makes its endpoint directory there."""
    assert "/run/codex-guard:/run/codex-guard" in compose["services"]["docker-guard"]["volumes"]
    guard = stack["services"]["docker-guard"]
    sources = {str(v).split(":", 1)[0] for v in guard["volumes"]}
    assert sources == {"/var/run/docker.sock", "/run"}
    assert f"/run:{HOST_RUN}" in guard["volumes"]
    assert guard["environment"]["CODEX_GUARD_SOCKET_DIR"] == f"{HOST_RUN}/codex-guard"
    # The workers still bind their own part of the node's /run/codex-guard.
    for name in shard_services(compose):
        assert any(str(v).startswith("/run/codex-guard/") for v in stack["services"][name]["volumes"]), name


def test_group_add_becomes_the_users_primary_group() -> None:
    """Stack files refuse group_add; the worker user (uid 1000) gets the group as its primary one."""
    service = {"image": "w", "group_add": ["${DOCKER_GID:-0}"], "environment": {"CODEX_SHARD_INDEX": "0"}}
    built = build_stack({"services": {"codex-worker-0": service}})["services"]["codex-worker-0"]
    assert built["user"] == "1000:${DOCKER_GID:-0}" and "group_add" not in built


def test_host_broker_mode_drops_the_broker_and_joins_the_host_network(compose: dict[str, Any]) -> None:
    stack = build_stack(compose, broker="host")
    assert "rabbitmq" not in stack["services"]
    assert all(s["networks"] == ["hostnet"] for s in stack["services"].values())
    assert stack["networks"] == {"hostnet": {"external": True, "name": "host"}}
    assert build_stack(compose)["services"]["rabbitmq"]["deploy"]["placement"]["constraints"] == [
        "node.labels.codex.broker == true"
    ]


def test_bad_input_is_refused_with_what_is_accepted(compose: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="accepted: service, host"):
        build_stack(compose, broker="overlay")
    with pytest.raises(ValueError, match="no shard service"):
        build_stack({"services": {"web": {"image": "x"}}})


def test_the_command_prints_a_stack_docker_can_read() -> None:
    """The script's output is plain YAML (no anchors) that parses back to the same stack."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "deploy" / "swarm" / "stack.py"), "--broker", "host"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    assert "&id" not in done.stdout and done.stdout.startswith("# Generated from docker-compose.yaml")
    compose = yaml.safe_load((ROOT / "docker-compose.yaml").read_text())
    assert yaml.safe_load(done.stdout) == build_stack(compose, broker="host")
