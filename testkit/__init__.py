"""Shared test support (the ``testkit`` package, used by tests/ and bench/ from the repository root; not in the wheel): component discovery, the skip-to-failure switch, Docker and Codex helpers.

Fixtures live in ``tests/conftest.py``; everything here is plain functions and classes.
"""

from __future__ import annotations

from .codex import LoginFailed, fake_api_key, make_api_key_login, make_api_key_login_in_volume
from .components import RABBITMQ_URL, REDIS_URL, REPO_ROOT, find_codex_bin, require_port
from .dockerkit import (
    TEST_LABEL,
    TEST_PREFIX,
    DockerCleanup,
    Images,
    VolumeFactory,
    build_images,
    run_once,
    unique_name,
)
from .require_all import REQUIRE_ALL_ENV, require_all

__all__ = [
    "DockerCleanup",
    "Images",
    "LoginFailed",
    "RABBITMQ_URL",
    "REDIS_URL",
    "REPO_ROOT",
    "REQUIRE_ALL_ENV",
    "TEST_LABEL",
    "TEST_PREFIX",
    "VolumeFactory",
    "build_images",
    "fake_api_key",
    "find_codex_bin",
    "make_api_key_login",
    "make_api_key_login_in_volume",
    "require_all",
    "require_port",
    "run_once",
    "unique_name",
]
