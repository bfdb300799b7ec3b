"""Job containers as sandboxes: the secure defaults every job gets, and the options task code may add.

A job runs commands a model chose, so it is the untrusted part of the system. Every job container,
whichever path creates it (:func:`agent.jobs.launcher.job_create_args` in the worker, or the Docker API guard
in :mod:`agent.guard`), gets the same :class:`Sandbox`:

* no capabilities (``cap_drop=ALL``), ``no-new-privileges``, an init process as pid 1;
* pid, memory and CPU limits (``CODEX_JOB_PIDS_LIMIT``, ``CODEX_JOB_MEMORY``, ``CODEX_JOB_CPUS``);
* a read-only root filesystem with a private ``/tmp`` tmpfs (``CODEX_JOB_READ_ONLY``,
  ``CODEX_JOB_TMP_SIZE``): ``codex exec`` 0.169 and 0.171 complete and resumes turns with it, since it
  writes only to ``CODEX_HOME`` and the workspace, both volumes.

Task code may pass only the options in :data:`JOB_OPTIONS` (docker-py names, modelled on its
``RUN_CREATE_KWARGS``/``RUN_HOST_CONFIG_KWARGS``); limits may only tighten the sandbox (the CPU
weight stays at most Docker's default, the shm size at most the ``/tmp`` size). Everything else is
refused (CODEX-E041) by the one job policy, :mod:`agent.jobs.policy`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

from agent.settings import defaults, variables

__all__ = [
    "MEMORY_ENV",
    "CPUS_ENV",
    "PIDS_ENV",
    "READ_ONLY_ENV",
    "TMP_SIZE_ENV",
    "JOB_OPTIONS",
    "NO_NEW_PRIVILEGES",
    "TMP_PATH",
    "Sandbox",
    "load_sandbox",
]

MEMORY_ENV = "CODEX_JOB_MEMORY"
"""Memory limit of a job container (bytes, or 512m, 4g…); default 4g."""
CPUS_ENV = "CODEX_JOB_CPUS"
"""CPUs a job container may use (e.g. 1.5); default 2, or the host's count when it has fewer."""
PIDS_ENV = "CODEX_JOB_PIDS_LIMIT"
"""Processes and threads a job container may hold; default 1024."""
READ_ONLY_ENV = "CODEX_JOB_READ_ONLY"
"""``1``: the job's root filesystem is read-only (default); ``0``: writable."""
TMP_SIZE_ENV = "CODEX_JOB_TMP_SIZE"
"""Size of the job's private ``/tmp`` tmpfs (counted against its memory); default 512m."""

TMP_PATH = "/tmp"
NO_NEW_PRIVILEGES = "no-new-privileges"

JOB_OPTIONS = frozenset(
    {
        # what the job is and where it works
        "working_dir",
        "entrypoint",
        "labels",
        "name",
        "hostname",
        "stop_signal",
        "tty",
        "stdin_open",
        # declared workspaces and scratch space
        "volumes",
        "mounts",
        "tmpfs",
        # who and where: only the job user, only no network
        "user",
        "network_mode",
        "network_disabled",
        # the sandbox itself may be restated or tightened
        "cap_drop",
        "security_opt",
        "init",
        "read_only",
        "mem_limit",
        "nano_cpus",
        "pids_limit",
        "mem_reservation",
        "shm_size",
        "cpu_shares",
    }
)
"""``containers.run`` options task code may pass; anything else is CODEX-E041 naming it."""


@dataclass(frozen=True)
class Sandbox:
    """The secure defaults of every job container."""

    memory: int = defaults.JOB_MEMORY
    nano_cpus: int = 2_000_000_000
    pids_limit: int = defaults.JOB_PIDS_LIMIT
    read_only: bool = True
    tmp_size: int = defaults.JOB_TMP_SIZE
    cpu_shares: int = 1024
    """Ceiling of a job's CPU weight: Docker's default, so no job outweighs its neighbours."""

    @property
    def tmpfs_options(self) -> str:
        """Mount options of the private ``/tmp``."""
        return f"rw,nosuid,nodev,size={self.tmp_size}"

    def run_options(self) -> dict[str, Any]:
        """The defaults as docker-py ``containers.create`` keyword arguments."""
        return {
            "cap_drop": ["ALL"],
            "security_opt": [NO_NEW_PRIVILEGES],
            "init": True,
            "pids_limit": self.pids_limit,
            "mem_limit": self.memory,
            "nano_cpus": self.nano_cpus,
            "read_only": self.read_only,
        }

    def host_config(self) -> dict[str, Any]:
        """The defaults as Engine API ``HostConfig`` fields (what the guard imposes)."""
        return {
            "CapDrop": ["ALL"],
            "SecurityOpt": [NO_NEW_PRIVILEGES],
            "Init": True,
            "PidsLimit": self.pids_limit,
            "Memory": self.memory,
            "NanoCpus": self.nano_cpus,
            "ReadonlyRootfs": self.read_only,
        }


def load_sandbox(environ: Mapping[str, str] | None = None) -> Sandbox:
    """The sandbox from the environment (``os.environ`` by default), through :mod:`agent.settings.variables`.

    Raises:
        ConfigError: CODEX-E001, a variable has a value outside what is accepted.
    """
    env = os.environ if environ is None else environ
    read = partial(variables.read, env)
    return Sandbox(
        memory=read(MEMORY_ENV),
        nano_cpus=read(CPUS_ENV, default=int(min(2, os.cpu_count() or 1) * 1e9)),
        pids_limit=read(PIDS_ENV),
        read_only=read(READ_ONLY_ENV),
        tmp_size=read(TMP_SIZE_ENV),
    )
