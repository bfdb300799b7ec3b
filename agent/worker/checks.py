"""Run the checks (claim, mount, fleet lease, login) in order and report each one.

A :class:`Checker` belongs to one worker for its whole life: it keeps the claim it won, so
re-checks verify the claim instead of fighting over it. Every check runs every time, so a report
names everything that is wrong at once.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from agent.errors import AgentError, ClaimError, FleetError, LoginRevokedError, UsageLimitError
from agent.fleet.lease import LoginLease
from agent.login import auth as login_mod
from agent.login import revocation, usage
from agent.login.codex_cli import version_warning
from agent.login.credstore import check_credentials_store
from agent.problems import JOB_USER_DIFFERS, STALE_CREDENTIAL, Problem
from agent.settings.config import AgentConfig
from agent.settings.defaults import FAILURE_REMINDER_INTERVAL, STALE_REFRESH_DAYS
from agent.util.host import boot_id, own_container_id
from agent.volume import mount as mount_mod
from agent.volume.claim import Holder, VolumeClaim, claim_for

__all__ = ["CheckResult", "CheckReport", "Checker", "LoginCheck", "CHECK_NAMES"]

CHECK_NAMES = ("claim", "mount", "lease", "login")

log = structlog.get_logger(__name__)

LoginCheck = Callable[[AgentConfig, dict[str, Any]], login_mod.LoginStatus]
"""Runs the login check for a config with the given error facts; raises a LoginError."""


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one check: what it found (``problem`` when it failed) and its warnings."""

    name: str
    ok: bool
    message: str
    duration_s: float
    problem: Problem | None = None
    details: dict[str, Any] = field(default_factory=dict)
    warnings: tuple[Problem, ...] = ()

    @property
    def code(self) -> str | None:
        """The failure's code, None when the check passed."""
        return self.problem.code if self.problem else None

    @property
    def remediation(self) -> str | None:
        """The failure's fix, None when the check passed."""
        return self.problem.remediation if self.problem else None

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe view."""
        return {
            "name": self.name,
            "ok": self.ok,
            "code": self.code,
            "message": self.message,
            "remediation": self.remediation,
            "duration_s": round(self.duration_s, 4),
            "details": self.details,
            "warnings": [w.to_dict() for w in self.warnings],
        }


@dataclass(frozen=True)
class CheckReport:
    """All check results for one worker at one moment."""

    results: tuple[CheckResult, ...]
    shard: int | None
    volume: str | None
    queue: str | None
    codex_home: str
    checked_at: float

    @property
    def ok(self) -> bool:
        """Whether every check passed."""
        return all(r.ok for r in self.results)

    @property
    def failures(self) -> tuple[CheckResult, ...]:
        """The checks that failed, in order."""
        return tuple(r for r in self.results if not r.ok)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe view."""
        return {
            "ok": self.ok,
            "shard": self.shard,
            "volume": self.volume,
            "queue": self.queue,
            "codex_home": self.codex_home,
            "checked_at": self.checked_at,
            "checks": [r.to_dict() for r in self.results],
        }


def _failed(name: str, error: AgentError, started: float, **details: Any) -> CheckResult:
    return CheckResult(
        name=name,
        ok=False,
        message=error.message,
        duration_s=time.monotonic() - started,
        problem=error.problem(check=name),
        details=details,
    )


def local_login_check(config: AgentConfig, facts: dict[str, Any]) -> login_mod.LoginStatus:
    """``codex login status`` run in this container against CODEX_HOME."""
    return login_mod.run_login_status(
        config.codex_home, codex_bin=config.codex_bin, timeout=config.login_timeout, facts=facts
    )


class Checker:
    """Runs claim, mount, lease and login checks for one worker.

    Args:
        config: the validated configuration.
        docker_client: used by the mount check to read this container's ``Mounts``; optional.
        login_check: how to run the login check; ``codex login status`` here by default.
        accept_own_container: count a claim held by another process of this same container as
            fine (for ``codex-agent check`` run beside a live worker).
        claim: the volume's claim, owned by the caller (the worker's agent); a fresh one when omitted.
        lease: the fleet-wide login lease (:func:`agent.fleet.lease.lease_for`); None = not taken here.
    """

    def __init__(
        self,
        config: AgentConfig,
        *,
        docker_client: Any = None,
        login_check: LoginCheck | None = None,
        accept_own_container: bool = False,
        claim: VolumeClaim | None = None,
        lease: LoginLease | None = None,
    ) -> None:
        self.config = config
        self.docker_client = docker_client
        self.login_check = login_check or local_login_check
        self.accept_own_container = accept_own_container
        self.claim = claim if claim is not None else claim_for(config)
        self.mounted_volume: str | None = None
        self.lease = lease
        self._log_outcome = _OutcomeLog()

    def facts(self) -> dict[str, Any]:
        """Shard, volume and paths for error messages."""
        return dict(self.config.facts())

    def _held_by_own_container(self, holder: Holder | None) -> bool:
        mine = own_container_id()
        return (
            self.accept_own_container
            and holder is not None
            and mine is not None
            and holder.container_id == mine
            and holder.boot_id == boot_id()
        )

    def check_claim(self) -> CheckResult:
        """Take the claim, or verify the one already held."""
        started = time.monotonic()
        try:
            if self.claim.held:
                self.claim.verify()
                holder = self.claim.holder
            else:
                won, holder = self.claim.try_acquire()
                if not won:
                    if self._held_by_own_container(holder):
                        assert holder is not None
                        return CheckResult(
                            name="claim",
                            ok=True,
                            message=f"held by this container's {holder.describe()}",
                            duration_s=time.monotonic() - started,
                            details={"holder": holder.describe(), "claim_id": holder.claim_id},
                        )
                    raise self.claim.refused(holder)
        except ClaimError as e:
            return _failed("claim", e, started)
        assert holder is not None
        return CheckResult(
            name="claim",
            ok=True,
            message=f"claimed volume {self.config.volume_name} as {holder.describe()}",
            duration_s=time.monotonic() - started,
            details={"holder": holder.describe(), "claim_id": holder.claim_id},
        )

    def check_mount(self) -> CheckResult:
        """Verify CODEX_HOME is the expected, private, read-write volume."""
        started = time.monotonic()
        observation = mount_mod.observe(self.config.codex_home, docker_client=self.docker_client)
        error = mount_mod.judge(
            observation,
            expected_volume=self.config.volume_name,
            uid=os.getuid(),
            facts=self.facts(),
        )
        if error is not None:
            return _failed("mount", error, started, **observation.to_dict())
        self.mounted_volume = observation.volume
        warnings: tuple[Problem, ...] = ()
        if self.config.job_image is not None and os.getuid() != self.config.job_uid:  # jobs cannot read a 0700 volume
            warnings = (
                JOB_USER_DIFFERS.problem(
                    **self.facts(), job_user=self.config.job_user, job_uid=self.config.job_uid
                ).found_by("mount"),
            )
        return CheckResult(
            name="mount",
            ok=True,
            message=f"{observation.path} is volume {observation.volume}, read-write, 0700, uid {observation.owner_uid}",
            duration_s=time.monotonic() - started,
            details=observation.to_dict(),
            warnings=warnings,
        )

    def check_lease(self) -> CheckResult:
        """Lease this login's identity fleet-wide in the broker; refused while another worker has it.

        An unreachable broker is not a failure: the last verdict stands (see :mod:`agent.fleet.lease`).
        """
        started = time.monotonic()
        holder = self.claim.holder
        if self.lease is None or holder is None or not self.claim.held:
            why = "not taken by this process (see AGENT_FLEET_LEASE)" if self.lease is None else "not taken: no claim"
            return CheckResult(name="lease", ok=True, message=why, duration_s=time.monotonic() - started)
        try:
            state = self.lease.check(holder.claim_id)
        except FleetError as e:
            return _failed("lease", e, started, broker=self.lease.broker)
        return CheckResult(
            name="lease",
            ok=True,
            message=state.describe(),
            duration_s=time.monotonic() - started,
            details=state.to_dict(),
        )

    def check_login(self) -> CheckResult:
        """Ask the Codex CLI whether the volume is logged in; add freshness warnings."""
        started = time.monotonic()
        facts = login_mod.inspect_auth_file(self.config.codex_home)
        try:
            check_credentials_store(self.config.codex_home, self.facts())
            login_mod.require_readable(facts, self.facts())  # never an open gate on credentials nobody can read
            self._check_not_revoked(facts)
            self.check_not_limited()
            status = self.login_check(self.config, self.facts())
        except AgentError as e:
            return _failed("login", e, started, **facts.to_dict())
        warnings: list[Problem] = []
        age = facts.refresh_age_days()
        if facts.access_token_expired() and age is not None and age > STALE_REFRESH_DAYS:
            warnings.append(STALE_CREDENTIAL.problem(**self.facts(), age_days=int(age)).found_by("login"))
        if (differs := version_warning(self.config.codex_bin, self.facts())) is not None:
            warnings.append(differs.found_by("login"))
        return CheckResult(
            name="login",
            ok=True,
            message=f"logged in ({status.method})",
            duration_s=time.monotonic() - started,
            details=facts.to_dict(),
            warnings=tuple(warnings),
        )

    def _check_not_revoked(self, facts: login_mod.AuthFacts) -> None:
        """CODEX-E034 while auth.json still holds the credential a run found dead.

        ``codex login status`` passes on such a login, so only a new login clears the marker.
        """
        marker = revocation.read(self.config.codex_home)
        if marker is None:
            return
        if revocation.still_revoked(marker, facts):
            raise LoginRevokedError(**self.facts(), cause=marker.reason)
        revocation.clear(self.config.codex_home)

    def check_not_limited(self) -> None:
        """CODEX-E036 until the reset time a run found (the marker in the volume); then clear it.

        The login is fine, only spent: ``codex login status`` passes, so only the clock reopens the gate.
        """
        limit = usage.read(self.config.codex_home)
        if limit is None:
            return
        if time.time() < limit.reopen_at:
            raise UsageLimitError(**self.facts(), **limit.facts())
        usage.clear(self.config.codex_home)

    def run(self) -> CheckReport:
        """Run every check once, in order, and log the outcome."""
        results = (self.check_claim(), self.check_mount(), self.check_lease(), self.check_login())
        report = CheckReport(
            results=results,
            shard=self.config.shard_index,
            volume=self.config.volume_name,
            queue=self.config.codex_queue,
            codex_home=str(self.config.codex_home),
            checked_at=time.time(),
        )
        self._log_outcome(report)
        return report


class _OutcomeLog:
    """Logs a check outcome when it changes, and an unchanged failure again every few minutes.

    A closed gate re-checks every ``AGENT_RECHECK_INTERVAL``: a line per re-check would bury the
    audit trail, while silence would hide that the worker is still waiting for a fix.
    """

    def __init__(self) -> None:
        self._last: tuple[Any, ...] | None = None
        self._changed_at = 0.0
        self._logged_at = 0.0

    def __call__(self, report: CheckReport) -> None:
        outcome = tuple(
            (r.name, r.code, r.message, tuple(w.code for w in r.warnings))
            for r in report.results
            if not r.ok or r.warnings
        )
        now = time.monotonic()
        extra: dict[str, Any] = {}
        if outcome != self._last:
            self._last, self._changed_at = outcome, now
        elif report.ok or now - self._logged_at < FAILURE_REMINDER_INTERVAL:
            return
        else:
            extra = {"repeated": True, "unchanged_for_s": round(now - self._changed_at, 1)}
        self._logged_at = now
        for result in report.results:
            for warning in result.warnings:
                log.warning("codex.check.warning", **warning.found_by(result.name).to_dict())
        if report.ok:
            log.info("codex.check.passed", shard=report.shard, volume=report.volume)
            return
        for failure in report.failures:
            log.error(
                "codex.check.failed",
                check=failure.name,
                code=failure.code,
                error=failure.message,
                remediation=failure.remediation,
                shard=report.shard,
                volume=report.volume,
                **extra,
            )
