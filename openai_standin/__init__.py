"""Local stand-ins for the OpenAI services the Codex CLI talks to, for tests, benchmarks and staging.

Nothing on these machines may reach OpenAI, yet the product's promise (logins that refresh and never
die of ``refresh_token_reused``) can only be shown with real token rotation. So this package plays
both services on a loopback port:

* :mod:`openai_standin.tokens`: the OAuth token endpoint with the real rotation rules (each refresh
  token valid once; reuse answers 401 ``refresh_token_reused`` and revokes the whole family);
* :mod:`openai_standin.responses`: the Responses API stream, with scripted replies, delays, hangs
  and failures;
* :mod:`openai_standin.limits`: each login's usage limits, sent as rate-limit headers on every
  answer, and the 429 ``usage_limit_reached`` of a login over its limit;
* :mod:`openai_standin.server`: one HTTP server for both, started in a thread or as a process;
* :mod:`openai_standin.logins`: test logins written into a ``CODEX_HOME`` or a Docker volume the way
  an operator's headless login would be, plus the ``config.toml`` that points Codex here.
"""

from openai_standin.limits import Usage, UsageBook, Window
from openai_standin.logins import LoginFiles, login_files, provider_config
from openai_standin.responses import Behaviour, ResponseScript
from openai_standin.server import StandIn
from openai_standin.tokens import FamilyStats, LoginTokens, TokenAuthority

__all__ = [
    "Behaviour",
    "FamilyStats",
    "LoginFiles",
    "LoginTokens",
    "ResponseScript",
    "StandIn",
    "TokenAuthority",
    "Usage",
    "UsageBook",
    "Window",
    "login_files",
    "provider_config",
]
