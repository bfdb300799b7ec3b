"""What a task may choose about a Codex phase: the model, a few Codex arguments, extra environment.

Everything else about a job (its sandbox, approval policy, login, ``CODEX_HOME``, config and
profile) is the agent's, so each choice is an allow-list, checked before a container exists:

* ``model``: a model name (``-m``), :data:`MODEL_RULE`.
* ``codex_args``: only ``-m``/``--model MODEL`` (same as ``model``) and the reasoning effort as
  ``-c model_reasoning_effort=<level>`` (or ``--config``), a level of :data:`REASONING_EFFORTS`.
  ``--json`` is always on and may be repeated. Anything else (``--sandbox``, ``--profile``, any
  other ``-c`` key, ``--dangerously-bypass-approvals-and-sandbox``, ``--oss``, ``--cd``,
  ``--ephemeral``, images, features…) is refused. The arguments are rebuilt, never passed through.
* ``env``: extra variables for the job (a git token, say): names of :data:`ENV_NAME_RULE`, none of
  :data:`RESERVED_ENV` nor a prefix of :data:`RESERVED_ENV_PREFIXES`. Values are never logged, never
  in an error, an audit line or a result, and are cut out of the job's output (:func:`hide_values`).

A bad choice is CODEX-E044 naming the field, the value (never an env value) and what is accepted.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from agent.errors import PhaseRequestError

__all__ = [
    "CODEX_ARGS_RULE",
    "ENV_LIMIT",
    "ENV_NAME_RULE",
    "ENV_VALUE_LIMIT",
    "MODEL_RULE",
    "REASONING_EFFORTS",
    "RESERVED_ENV",
    "RESERVED_ENV_PREFIXES",
    "PhaseOptions",
    "hide_values",
    "phase_options",
]

_MODEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$")
MODEL_RULE = "1 to 128 letters, digits, '.', '_', ':', '/' or '-', starting with a letter or digit"

REASONING_EFFORTS = ("minimal", "low", "medium", "high", "xhigh")
"""Codex's ``model_reasoning_effort`` levels (0.169, 0.171)."""

_EFFORT_KEY = "model_reasoning_effort"
CODEX_ARGS_RULE = (
    "a list of: -m/--model MODEL, -c/--config model_reasoning_effort="
    + "|".join(REASONING_EFFORTS)
    + ", --json (always on); nothing that changes the sandbox, approvals, login, home, config or profile"
)

_ENV_NAME = re.compile(r"^[A-Z][A-Z0-9_]{0,63}$")
ENV_NAME_RULE = "an upper-case name of letters, digits and '_' (at most 64), not reserved"

RESERVED_ENV = frozenset(
    {
        "HOME",
        "PATH",
        "USER",
        "LOGNAME",
        "SHELL",
        "PWD",
        "TMPDIR",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "NO_PROXY",
        "FTP_PROXY",
        "REQUESTS_CA_BUNDLE",
        "CURL_CA_BUNDLE",
    }
)
"""Names a job's environment never takes from a task: its home, search path, proxies, TLS trust."""

RESERVED_ENV_PREFIXES = ("CODEX_", "OPENAI_", "LD_", "SSL_", "RUST_", "NODE_", "XDG_", "DOCKER_")
"""Prefixes a task's variables may not have: Codex's and OpenAI's own (home, auth, endpoints),
the loader's, TLS trust, the CLI's runtime and logging, and the Docker client's."""

ENV_LIMIT = 64
ENV_VALUE_LIMIT = 32_768
_HIDDEN = "<withheld>"


@dataclass(frozen=True)
class PhaseOptions:
    """A phase's checked choices: the Codex arguments to add and the job's extra environment."""

    model: str | None = None
    reasoning_effort: str | None = None
    env: dict[str, str] = field(default_factory=dict, repr=False)

    def argv(self) -> list[str]:
        """The ``codex exec`` (or ``exec resume``) options, rebuilt from the checked values."""
        args = ["-m", self.model] if self.model else []
        if self.reasoning_effort:
            args += ["-c", f'{_EFFORT_KEY}="{self.reasoning_effort}"']
        return args

    def summary(self) -> dict[str, Any]:
        """What a result and an audit line may say: model, effort and the env *names* only."""
        return {"model": self.model, "reasoning_effort": self.reasoning_effort, "env_names": sorted(self.env)}


def _refuse(facts: Mapping[str, Any], name: str, value: Any, cause: str, accepted: str) -> PhaseRequestError:
    return PhaseRequestError(**facts, field=name, value=value, cause=cause, accepted=accepted)


def _model(facts: Mapping[str, Any], name: str, value: Any) -> str:
    if isinstance(value, str) and _MODEL.match(value):
        return value
    shown = value[:60] if isinstance(value, str) else type(value).__name__
    raise _refuse(facts, name, shown, "not a model name", MODEL_RULE)


def _codex_args(facts: Mapping[str, Any], args: Any) -> tuple[str | None, str | None]:
    if isinstance(args, str) or not isinstance(args, Sequence) or not all(isinstance(a, str) for a in args):
        raise _refuse(facts, "codex_args", type(args).__name__, "not a list of strings", CODEX_ARGS_RULE)
    model = effort = None
    words = list(args)
    i = 0
    while i < len(words):
        word = words[i]
        flag, equals, inline = word.partition("=") if word.startswith("--") else (word, "", "")
        if flag == "--json" and not equals:
            i += 1
            continue
        if flag in ("-m", "--model", "-c", "--config"):
            if equals:
                value = inline
            elif i + 1 < len(words):
                value, i = words[i + 1], i + 1
            else:
                raise _refuse(facts, "codex_args", word, f"{flag} needs a value", CODEX_ARGS_RULE)
            if flag in ("-m", "--model"):
                model = _model(facts, "codex_args", value)
            else:
                key, _, level = value.partition("=")
                level = level.strip().strip('"').strip("'")
                if key.strip() != _EFFORT_KEY:
                    raise _refuse(
                        facts,
                        "codex_args",
                        f"{flag} {key.strip()[:60]}",
                        "only the reasoning effort may be configured from a task",
                        CODEX_ARGS_RULE,
                    )
                if level not in REASONING_EFFORTS:
                    raise _refuse(
                        facts,
                        "codex_args",
                        f"{flag} {_EFFORT_KEY}={level[:20]}",
                        "not a reasoning effort",
                        CODEX_ARGS_RULE,
                    )
                effort = level
            i += 1
            continue
        raise _refuse(facts, "codex_args", word[:60], "not on the allow-list of Codex arguments", CODEX_ARGS_RULE)
    return model, effort


def _env(facts: Mapping[str, Any], env: Any) -> dict[str, str]:
    if not isinstance(env, Mapping):
        raise _refuse(facts, "env", type(env).__name__, "not a mapping of names to values", f"a dict: {ENV_NAME_RULE}")
    if len(env) > ENV_LIMIT:
        raise _refuse(facts, "env", f"{len(env)} variables", "too many", f"at most {ENV_LIMIT} variables")
    kept: dict[str, str] = {}
    for name, value in env.items():
        shown = name[:64] if isinstance(name, str) else type(name).__name__
        if not isinstance(name, str) or not _ENV_NAME.match(name):
            raise _refuse(facts, "env", shown, "not a variable name", ENV_NAME_RULE)
        if name in RESERVED_ENV or name.startswith(RESERVED_ENV_PREFIXES):
            raise _refuse(
                facts,
                "env",
                name,
                "reserved: the agent sets the job's home, login, paths, proxies and TLS",
                f"{ENV_NAME_RULE}; reserved: {', '.join(sorted(RESERVED_ENV))} and "
                f"{', '.join(p + '*' for p in RESERVED_ENV_PREFIXES)}",
            )
        if not isinstance(value, str) or "\x00" in value or len(value) > ENV_VALUE_LIMIT:
            raise _refuse(
                facts,
                f"env[{name}]",
                _HIDDEN,
                "the value is not text, holds a NUL, or is too long",
                f"text of at most {ENV_VALUE_LIMIT} characters",
            )
        kept[name] = value
    return kept


def phase_options(
    facts: Mapping[str, Any],
    *,
    model: Any = None,
    codex_args: Any = None,
    env: Any = None,
) -> PhaseOptions:
    """Check a phase's ``model``, ``codex_args`` and ``env`` (None: none of them).

    Raises:
        PhaseRequestError: CODEX-E044 naming the field, the value (never an env value) and what is
            accepted; also when ``model`` and a ``-m`` in ``codex_args`` disagree.
    """
    chosen = _model(facts, "model", model) if model is not None else None
    from_args, effort = _codex_args(facts, codex_args) if codex_args is not None else (None, None)
    if chosen and from_args and chosen != from_args:
        raise _refuse(
            facts,
            "codex_args",
            f"-m {from_args}",
            f"disagrees with model={chosen}",
            "one model, given once (model= or -m)",
        )
    return PhaseOptions(chosen or from_args, effort, _env(facts, env) if env is not None else {})


def hide_values(text: str, env: Mapping[str, str]) -> str:
    """``text`` with every env value of at least 4 characters replaced by ``[env:NAME]``."""
    for name, value in sorted(env.items(), key=lambda item: -len(item[1])):
        if len(value) >= 4:
            text = text.replace(value, f"[env:{name}]")
    return text
