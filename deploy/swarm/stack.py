"""The Docker Swarm stack, derived from docker-compose.yaml so the two never drift apart.

``docker stack deploy`` reads the compose format but ignores or refuses some keys, and needs
``deploy:`` keys compose does not: this turns the compose file into the stack file.

- One service per shard, ``replicas: 1``. A **hard** placement constraint puts it on the node
  labelled ``codex.shard.N=true``, because a local volume (the shard's login) exists only on its
  node. With no node labelled, the task stays Pending; it never starts elsewhere on an empty volume.
- ``order: stop-first`` for updates **and** rollbacks: the old task stops (warm, within
  ``stop_grace_period``) before the new one starts. ``start-first`` would run two containers on one
  login.
- A service that holds the Docker socket (the Docker API guard) runs ``mode: global``: one per
  node, since each node's workers reach their own engine through their own node's guard. It is
  given every shard (``CODEX_GUARD_SHARDS``) instead of discovering them by volume: Swarm does not
  create a missing bind-mount source, and a shard's volume exists on a node only once its worker
  ran there, so a new shard's worker would be rejected forever waiting for its endpoint directory.
  For the same reason it mounts the node's ``/run`` rather than ``/run/codex-guard``, which a
  freshly booted node lacks; the workers' endpoint binds are rejected (and retried) until it runs.
- Login services (compose profile ``login``) are left out: under Swarm a login is a ``docker run``
  on the shard's node (runbook, "Docker Swarm").
- ``restart: always`` becomes ``restart_policy: any``. ``group_add``, which stack files do not
  accept, becomes the primary group of the worker's user (uid 1000), so it can still reach the
  Docker socket. ``depends_on`` is dropped: Swarm starts services in no order, and a worker waits
  for its broker.
- Every replicated service names its worker ``AGENT_WORKER_NAME={{.Service.Name}}@{{.Node.Hostname}}``
  (a Swarm template): on the host network every container has the host's name, the default.
- ``--broker host``: no broker service; every service joins the host's network and uses the
  broker ``CELERY_BROKER_URL`` names (offline machines, the tests).

Variables (``${VAR:-default}``) are kept as they are: ``docker stack deploy`` substitutes them from
its environment, as compose does.

Usage: ``python deploy/swarm/stack.py [--compose FILE] [--broker service|host] > stack.yaml``
(``scripts/swarm-up`` does this and deploys).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

__all__ = ["HOST_RUN", "SHARD_LABEL", "UNSUPPORTED", "build_stack", "guard_shards", "main", "shard_of"]

SHARD_LABEL = "codex.shard.{shard}"
"""The node label that places shard N: ``docker node update --label-add codex.shard.N=true NODE``."""

BROKER_LABEL = "codex.broker"
"""The node label that places the broker service (its data volume is local too)."""

DOCKER_SOCKET = "/var/run/docker.sock"

GUARD_SOCKET_DIR = "/run/codex-guard"
"""The compose file's endpoint directory on the host: the guard creates it, each worker mounts its part."""

HOST_RUN = "/run/host"
"""Where the guard sees the node's ``/run`` under Swarm: Swarm refuses a bind whose source is
missing, and ``/run`` is a tmpfs, so ``/run/codex-guard`` is missing on every freshly booted node
until the guard creates it, which it cannot do from behind its own rejected mount."""

UNSUPPORTED = ("restart", "depends_on", "group_add", "profiles", "container_name")
"""Compose keys a stack file does not take (replaced as described above, or dropped)."""

HOST_NETWORK = "hostnet"

WORKER_NAME = "{{.Service.Name}}@{{.Node.Hostname}}"
"""A Swarm template: what ``codex-agent fleet`` and a ``CODEX-E013`` refusal call each worker."""

_STOP_FIRST = {"parallelism": 1, "order": "stop-first", "failure_action": "pause"}


def shard_of(service: dict[str, Any]) -> int | None:
    """The shard a compose service serves (its ``CODEX_SHARD_INDEX``), or None."""
    value = (service.get("environment") or {}).get("CODEX_SHARD_INDEX")
    return None if value is None else int(value)


def guard_shards(services: dict[str, Any]) -> str:
    """``CODEX_GUARD_SHARDS`` for the compose file's shards: ``index=volume`` pairs (variables kept)."""
    pairs = []
    for service in services.values():
        shard = shard_of(service)
        if shard is not None:
            pairs.append((shard, str(service["environment"].get("CODEX_VOLUME_NAME", f"codex_auth_{shard}"))))
    return ",".join(f"{shard}={volume}" for shard, volume in sorted(pairs))


def _service(name: str, service: dict[str, Any], broker: str, shards: str) -> dict[str, Any]:
    out = {key: value for key, value in service.items() if key not in UNSUPPORTED}
    groups = service.get("group_add") or []
    if groups:
        out["user"] = f"1000:{groups[0]}"  # the image's user app; the socket's group as its primary group
    shard = shard_of(service)
    constraints = [f"node.labels.{SHARD_LABEL.format(shard=shard)} == true"] if shard is not None else []
    if name == "rabbitmq":
        constraints = [f"node.labels.{BROKER_LABEL} == true"]
    per_node = any(str(v).split(":", 1)[0] == DOCKER_SOCKET for v in service.get("volumes") or [])
    placement: dict[str, Any] = {"constraints": constraints}
    out["deploy"] = {"mode": "global"} if per_node else {"mode": "replicated", "replicas": 1}
    if per_node and isinstance(out.get("environment"), dict):
        out["environment"] = {
            **out["environment"],
            "CODEX_GUARD_SHARDS": shards,
            "CODEX_GUARD_SOCKET_DIR": HOST_RUN + GUARD_SOCKET_DIR.removeprefix("/run"),
        }
        out["volumes"] = [
            f"/run:{HOST_RUN}" if str(v).split(":", 1)[0] == GUARD_SOCKET_DIR else v for v in out.get("volumes") or []
        ]
    if not per_node:
        placement["max_replicas_per_node"] = 1
        if isinstance(out.get("environment"), dict):
            out["environment"] = {"AGENT_WORKER_NAME": WORKER_NAME, **out["environment"]}
    out["deploy"].update(
        placement=placement,
        restart_policy={"condition": "any", "delay": "5s"},
        update_config={**_STOP_FIRST, "failure_action": "rollback"},
        rollback_config=dict(_STOP_FIRST),
    )
    if broker == "host":
        out["networks"] = [HOST_NETWORK]
    return out


def build_stack(compose: dict[str, Any], *, broker: str = "service") -> dict[str, Any]:
    """The stack file for ``compose`` (a parsed docker-compose.yaml, anchors resolved).

    Args:
        compose: the compose file as YAML data.
        broker: ``service`` (the compose file's broker service, on a labelled node) or ``host``
            (no broker service; every service on the host network).

    Raises:
        ValueError: an unknown ``broker``, or a compose file with no shard service.
    """
    if broker not in ("service", "host"):
        raise ValueError(f"--broker {broker!r}: accepted: service, host")
    services: dict[str, Any] = {}
    shards = guard_shards(compose.get("services") or {})
    for name, service in (compose.get("services") or {}).items():
        if service.get("profiles") or (broker == "host" and name == "rabbitmq"):
            continue
        services[name] = _service(name, service, broker, shards)
    if not any(shard_of(s) is not None for s in services.values()):
        raise ValueError("the compose file has no shard service (CODEX_SHARD_INDEX)")
    stack: dict[str, Any] = {"version": "3.9", "services": services, "volumes": compose.get("volumes") or {}}
    if broker == "host":
        stack["networks"] = {HOST_NETWORK: {"external": True, "name": "host"}}
    return stack


class _PlainDumper(yaml.SafeDumper):
    """Writes shared values out in full (no ``&id001`` anchors): the file is read by people too."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def main(argv: list[str] | None = None) -> int:
    """Print the stack file."""
    parser = argparse.ArgumentParser(prog="deploy/swarm/stack.py", description=__doc__.splitlines()[0])
    parser.add_argument("--compose", type=Path, default=Path(__file__).resolve().parents[2] / "docker-compose.yaml")
    parser.add_argument("--broker", choices=["service", "host"], default="service")
    args = parser.parse_args(argv)
    try:
        stack = build_stack(yaml.safe_load(args.compose.read_text()), broker=args.broker)
    except (OSError, ValueError, yaml.YAMLError) as e:
        print(f"deploy/swarm/stack.py: {e}", file=sys.stderr)
        return 2
    sys.stdout.write(
        f"# Generated from {args.compose.name} by deploy/swarm/stack.py (--broker {args.broker}); do not edit.\n"
    )
    yaml.dump(stack, sys.stdout, Dumper=_PlainDumper, sort_keys=False, default_flow_style=False, width=120)
    return 0


if __name__ == "__main__":
    sys.exit(main())
