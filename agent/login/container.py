"""``CODEX_LOGIN_CHECK=container``: ask ``codex login status`` in a throwaway container.

For workers whose image has no Codex CLI, or that want the check to see the volume exactly as a
job will: a container of ``CODEX_LOGIN_CHECK_IMAGE`` runs the check with the volume at
``CODEX_JOB_HOME``, as ``CODEX_JOB_USER``, under ``CODEX_LOGIN_TIMEOUT``. The container is
always removed, also on timeout; engine failures are CODEX-E040, not login errors.
"""

from __future__ import annotations

import time
from typing import Any

import docker

from agent.engine.client import ContainerRun, ContainerTimeout, client_from_env, run_container
from agent.errors import LoginCheckError, LoginTimeoutError
from agent.login.auth import LoginStatus, judge_status_output, status_argv
from agent.settings.config import AgentConfig

__all__ = ["CONTAINER_CODEX_BIN", "PURPOSE_LABEL", "status_in_container", "container_login_check"]

CONTAINER_CODEX_BIN = "codex"
"""The CLI inside the check image, found on its PATH."""

PURPOSE_LABEL = "codex.purpose"
"""Label naming why a throwaway container exists (``login-check``, ``inspect``)."""


def status_in_container(
    client: docker.DockerClient,
    *,
    image: str,
    volume: str,
    job_home: str,
    user: str,
    timeout: float,
    facts: dict[str, Any],
) -> ContainerRun:
    """Run ``codex login status`` against ``volume`` in a throwaway container.

    Args:
        client: the Docker client.
        image: an image with the Codex CLI on PATH.
        volume: the auth volume, mounted read-write at ``job_home``.
        job_home: the mount point and ``CODEX_HOME``.
        user: ``uid:gid`` the check runs as (the login's owner).
        timeout: seconds before the check counts as failed.
        facts: shard, volume… for error messages.

    Returns:
        The finished, removed container's exit code and output.

    Raises:
        LoginTimeoutError: no answer in ``timeout`` (the container was killed and removed).
        DockerUnavailableError: the engine failed.
    """
    args = {
        "image": image,
        "command": status_argv(CONTAINER_CODEX_BIN),
        "entrypoint": [],
        "user": user,
        "environment": {"CODEX_HOME": job_home, "NO_COLOR": "1", "LANG": "C.UTF-8"},
        "volumes": [f"{volume}:{job_home}:rw"],
        "labels": {PURPOSE_LABEL: "login-check", "codex.volume": volume},
        "network_mode": "none",
    }
    try:
        return run_container(client, args, operation="login-check container", facts=facts, timeout=timeout)
    except ContainerTimeout as e:
        raise LoginTimeoutError(**facts, timeout=timeout) from e


def container_login_check(config: AgentConfig, facts: dict[str, Any]) -> LoginStatus:
    """The login check, run in a throwaway container of ``CODEX_LOGIN_CHECK_IMAGE``.

    Same signature as :func:`agent.worker.checks.local_login_check`.

    Raises:
        NotLoggedInError, LoginTimeoutError, LoginCheckError: by cause.
        DockerUnavailableError: the engine cannot be reached or failed (CODEX-E040).
    """
    volume = facts.get("volume") or config.volume_name
    if not volume:
        raise LoginCheckError(**facts, cause="no volume to check: CODEX_VOLUME_NAME and CODEX_SHARD_INDEX unset")
    started = time.monotonic()
    client = client_from_env(facts, timeout=max(config.login_timeout, 10.0))
    try:
        run = status_in_container(
            client,
            image=config.login_check_image,
            volume=volume,
            job_home=config.job_home,
            user=config.job_user,
            timeout=config.login_timeout,
            facts=facts,
        )
    finally:
        client.close()
    method = judge_status_output(run.exit_code, run.output, "", facts=facts)
    return LoginStatus(method=method, duration_s=time.monotonic() - started)
