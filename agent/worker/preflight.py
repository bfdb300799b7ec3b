"""Per-task pre-flight of Codex tasks: the cheap checks before every phase.

Before a Codex phase starts, :class:`Preflight` checks that CODEX_HOME is still the private,
writable volume last verified (a stat, :class:`~agent.volume.identity.VolumeIdentityCheck`), that the claim is
still ours, that no usage limit stands, and that the login still holds (the ``codex login status``
verdict is cached briefly, and forgotten the moment ``auth.json`` changes). A failure raises the
agent's error; the task base (:mod:`agent.worker.task`) turns it into a requeue.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from agent.errors import NotLoggedInError, UsageLimitError
from agent.login import usage
from agent.login.auth import AUTH_FILE, LoginStatus, inspect_auth_file, require_readable
from agent.settings.config import AgentConfig
from agent.settings.defaults import PREFLIGHT_LOGIN_TTL
from agent.volume.claim import VolumeClaim, claim_for
from agent.volume.identity import AuthSignature, VolumeIdentityCheck, auth_signature

__all__ = ["Preflight"]


class Preflight:
    """Cheap checks before every Codex task: claim still ours, login still good.

    Args:
        config: the worker's configuration.
        login_check: the full login check (``codex login status``), called on a cache miss.
        claim: the worker's claim (the agent owns it); a pool child keeps its parent's holder
            record, so the child checks the marker still names the claim its parent won.
        ttl: seconds a passed login check stays valid while ``auth.json`` is unchanged.
    """

    def __init__(
        self,
        config: AgentConfig,
        login_check: Callable[[AgentConfig, dict[str, Any]], LoginStatus],
        claim: VolumeClaim | None = None,
        ttl: float = PREFLIGHT_LOGIN_TTL,
    ) -> None:
        self.config = config
        self.login_check = login_check
        self.claim = claim if claim is not None else claim_for(config)
        self.ttl = ttl
        self._login_ok_at: float | None = None
        self._login_signature: AuthSignature = None
        self.volume = VolumeIdentityCheck(config)  # mode, owner and mount identity: a stat per task

    def forget(self) -> None:
        """Drop the cached login verdict."""
        self._login_ok_at = None

    def check_claim(self) -> None:
        """Raise ClaimLostError unless the marker still names our claim."""
        self.claim.verify_marker()

    def check_login(self) -> None:
        """Raise a LoginError unless the login passed recently and auth.json is unchanged."""
        signature = auth_signature(self.config.codex_home)
        if signature is None:
            self.forget()
            raise NotLoggedInError(**self.config.facts(), cause=f"{AUTH_FILE} is missing")
        now = time.monotonic()
        if self._login_ok_at is not None and signature == self._login_signature and now - self._login_ok_at < self.ttl:
            return
        self.forget()
        require_readable(inspect_auth_file(self.config.codex_home), self.config.facts())
        self.login_check(self.config, self.config.facts())
        self._login_ok_at, self._login_signature = now, signature

    def check_limit(self) -> None:
        """Raise UsageLimitError while the volume's usage-limit marker stands (a small file read):
        the phases prefetched before the gate closed go back untouched, without a Codex run."""
        limit = usage.read(self.config.codex_home)
        if limit is not None and time.time() < limit.reopen_at:
            raise UsageLimitError(**self.config.facts(), **limit.facts())

    def run(self) -> None:
        """Volume, claim, usage limit and login; raises the first AgentError."""
        self.volume.check()
        self.check_claim()
        self.check_limit()
        self.check_login()
