"""What an operator reads, in every report: the :class:`Problem` value, and the warnings (``W`` codes).

Errors (:mod:`agent.errors`) close the gate; warnings never do. Both become a :class:`Problem` in
check results, gate reasons, the published state and the volume table.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

__all__ = [
    "Severity",
    "Problem",
    "Facts",
    "Warning_",
    "WARNINGS",
    "STALE_CREDENTIAL",
    "FORKED_LOGIN",
    "CODEX_VERSION_DIFFERS",
    "JOB_USER_DIFFERS",
]

Severity = Literal["error", "warning"]


@dataclass(frozen=True)
class Problem:
    """One thing an operator must read, in every report: errors, warnings, check results, gate
    reasons, the published state and the volume table all carry this value.

    Attributes:
        code: the stable code (``CODEX-E030``, ``CODEX-W031``).
        title: a few words naming the kind of problem.
        message: the one line naming shard, volume and cause.
        remediation: the exact command that fixes it.
        severity: ``error`` closes the gate; ``warning`` never does.
        check: which check (or step) found it, when one did.
    """

    code: str
    title: str
    message: str
    remediation: str
    severity: Severity = "error"
    check: str | None = None

    def found_by(self, check: str) -> Problem:
        """The same problem, attributed to ``check``."""
        return replace(self, check=check)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe view (holds no secret: facts never carry one)."""
        return asdict(self)


class Facts(dict[str, Any]):
    """Format mapping that leaves unknown placeholders visible instead of raising."""

    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


@dataclass(frozen=True)
class Warning_:
    """A condition worth an operator's attention that does not close the gate."""

    code: str
    title: str
    template: str
    remediation_template: str

    def problem(self, **facts: Any) -> Problem:
        """The warning, its facts filled in, as a :class:`Problem` of severity ``warning``."""
        return Problem(
            self.code,
            self.title,
            self.template.format_map(Facts(facts)),
            self.remediation_template.format_map(Facts(facts)),
            "warning",
        )


STALE_CREDENTIAL = Warning_(
    code="CODEX-W030",
    title="credential may be stale",
    template=(
        "shard {shard}: the access token on volume {volume} expired and the login was last "
        "refreshed {age_days} days ago; the next run must refresh it"
    ),
    remediation_template=(
        "if runs fail with refresh_token_reused or 401, log in again once: docker compose run --rm login-{shard}"
    ),
)

FORKED_LOGIN = Warning_(
    code="CODEX-W031",
    title="login copied into several volumes",
    template=(
        "volumes {volumes} hold the same ChatGPT login (refresh-token fingerprint {fingerprint}); "
        "the first refresh kills every other copy"
    ),
    remediation_template=("keep one, and log the others in afresh: docker compose run --rm login-<shard> for each"),
)

CODEX_VERSION_DIFFERS = Warning_(
    code="CODEX-W001",
    title="Codex CLI version differs from the supported one",
    template=(
        "shard {shard}: {codex_bin} is Codex CLI {installed}, this agent supports {supported} "
        "(agent/CODEX_CLI_VERSION); the messages it matches may differ"
    ),
    remediation_template=(
        "install Codex CLI {supported} (npm install @openai/codex@{supported}, or images/build.sh from a "
        "provisioned checkout), or run an agent release that supports {installed}"
    ),
)

JOB_USER_DIFFERS = Warning_(
    code="CODEX-W002",
    title="worker and job containers run as different users",
    template=(
        "shard {shard}: the worker runs as uid {uid} and owns volume {volume} (mode 0700), but its job "
        "containers run as CODEX_JOB_USER={job_user}: every Codex phase will fail to read the login"
    ),
    remediation_template=(
        "run the worker as uid {job_uid} (USER in the image, user: in compose) and chown the volume to it, "
        "or set CODEX_JOB_USER to the worker's uid:gid (never root), then restart the worker"
    ),
)

WARNINGS: tuple[Warning_, ...] = (STALE_CREDENTIAL, FORKED_LOGIN, CODEX_VERSION_DIFFERS, JOB_USER_DIFFERS)
