"""The OAuth token endpoint's rules, as the real service applies them to ChatGPT logins.

A login is a *token family*: one chain of refresh tokens, each valid exactly once. Refreshing with
the family's current token rotates it (new access, id and refresh tokens). Presenting a refresh
token that was already used is taken as theft: the answer is 401 ``refresh_token_reused`` and the
whole family is revoked, so every copy of the login dies. The counts per family (refreshes, reuses,
revocations, model calls) are what tests assert on.

Tokens are unsigned JWTs carrying ``exp`` and the ``https://api.openai.com/auth`` claims the Codex
CLI reads; they are worthless anywhere but here.
"""

from __future__ import annotations

import base64
import json
import secrets
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = [
    "DEFAULT_ACCESS_TTL",
    "FamilyStats",
    "LoginTokens",
    "RefreshRefused",
    "TokenAuthority",
    "unsigned_jwt",
]

DEFAULT_ACCESS_TTL = 3600.0
"""Seconds an access token lives. Codex refreshes once ``exp`` is 5 minutes away or less, and on
*every* use while it is: a TTL under ~300 s makes one run refresh in a loop and reuse its own token."""

AUTH_CLAIM = "https://api.openai.com/auth"
PROFILE_CLAIM = "https://api.openai.com/profile"


def _b64(data: dict[str, Any]) -> str:
    raw = json.dumps(data, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def unsigned_jwt(claims: dict[str, Any]) -> str:
    """A JWT with ``alg: none``: Codex reads its claims and never checks a signature."""
    return f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(claims)}.sig"


@dataclass(frozen=True)
class LoginTokens:
    """One family's current tokens, as Codex keeps them in ``auth.json``."""

    family: str
    account_id: str
    id_token: str
    access_token: str
    refresh_token: str


@dataclass
class FamilyStats:
    """What happened to one token family (no secrets)."""

    family: str
    refreshes: int = 0
    reuses: int = 0
    revocations: int = 0
    revoked: str | None = None
    model_calls: int = 0
    unauthorized: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe view."""
        return asdict(self)


class RefreshRefused(Exception):
    """A refresh answered 401; ``code`` is the OAuth error code Codex recognises."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        super().__init__(message)

    def body(self) -> dict[str, Any]:
        """The 401 reply's JSON body."""
        return {"error": {"code": self.code, "message": str(self)}}


@dataclass
class _Family:
    stats: FamilyStats
    account_id: str
    access_ttl: float
    current: LoginTokens
    used: set[str] = field(default_factory=set)
    expired: bool = False


class TokenAuthority:
    """Issues and rotates token families; thread-safe.

    Args:
        access_ttl: default lifetime of access tokens, in seconds.
    """

    def __init__(self, access_ttl: float = DEFAULT_ACCESS_TTL) -> None:
        self.access_ttl = access_ttl
        self._lock = threading.Lock()
        self._families: dict[str, _Family] = {}
        self._by_refresh: dict[str, str] = {}
        self._by_access: dict[str, str] = {}

    # -- issuing ------------------------------------------------------------------------------

    def _tokens(self, family: str, account_id: str, ttl: float) -> LoginTokens:
        now = time.time()
        auth = {"chatgpt_account_id": account_id, "chatgpt_plan_type": "plus", "chatgpt_user_id": f"user-{account_id}"}
        common = {"iat": int(now), "sub": f"user-{account_id}", AUTH_CLAIM: auth}
        id_claims = {**common, "exp": int(now + ttl), "email": f"{account_id}@standin.invalid", "aud": "standin"}
        access_claims = {**common, "exp": int(now + ttl), PROFILE_CLAIM: {"email": f"{account_id}@standin.invalid"}}
        return LoginTokens(
            family=family,
            account_id=account_id,
            id_token=unsigned_jwt(id_claims),
            access_token=unsigned_jwt({**access_claims, "jti": secrets.token_hex(8)}),
            refresh_token=f"rt-standin-{secrets.token_urlsafe(24)}",
        )

    def mint(self, *, account_id: str | None = None, access_ttl: float | None = None) -> LoginTokens:
        """A new login (token family), as a fresh ``codex login`` would get."""
        family = f"fam-{secrets.token_hex(6)}"
        account = account_id or f"acct-{secrets.token_hex(4)}"
        ttl = self.access_ttl if access_ttl is None else access_ttl
        tokens = self._tokens(family, account, ttl)
        with self._lock:
            self._families[family] = _Family(FamilyStats(family), account, ttl, tokens)
            self._index(tokens)
        return tokens

    def _index(self, tokens: LoginTokens) -> None:
        self._by_refresh[tokens.refresh_token] = tokens.family
        self._by_access[tokens.access_token] = tokens.family

    # -- the endpoint's rules -----------------------------------------------------------------

    def refresh(self, refresh_token: str) -> LoginTokens:
        """Rotate the family of ``refresh_token``.

        Raises:
            RefreshRefused: reused (the family is revoked now), expired, or invalidated.
        """
        with self._lock:
            name = self._by_refresh.get(refresh_token)
            if name is None:
                raise RefreshRefused("refresh_token_invalidated", "unknown refresh token")
            family = self._families[name]
            if refresh_token in family.used:
                family.stats.reuses += 1
                self._revoke(family, "refresh_token_reused")
                raise RefreshRefused("refresh_token_reused", "refresh token already used")
            if family.stats.revoked is not None:
                raise RefreshRefused("refresh_token_invalidated", f"token family revoked ({family.stats.revoked})")
            if family.expired:
                raise RefreshRefused("refresh_token_expired", "refresh token expired")
            family.used.add(refresh_token)
            family.current = self._tokens(name, family.account_id, family.access_ttl)
            family.stats.refreshes += 1
            self._index(family.current)
            return family.current

    def _revoke(self, family: _Family, reason: str) -> None:
        if family.stats.revoked is None:
            family.stats.revoked = reason
            family.stats.revocations += 1

    def authorize(self, access_token: str) -> str | None:
        """The family a model call is billed to, or None (401) for an unknown or dead token."""
        with self._lock:
            name = self._by_access.get(access_token)
            if name is None:
                return None
            family = self._families[name]
            if family.stats.revoked is not None or family.current.access_token != access_token:
                family.stats.unauthorized += 1
                return None
            family.stats.model_calls += 1
            return name

    # -- what tests and operators steer -------------------------------------------------------

    def revoke(self, family: str, reason: str = "revoked by the stand-in's operator") -> None:
        """Kill a family as the real service would after a reuse elsewhere."""
        with self._lock:
            self._revoke(self._families[family], reason)

    def expire(self, family: str) -> None:
        """Make the family's refresh token expired (``refresh_token_expired``)."""
        with self._lock:
            self._families[family].expired = True

    def current(self, family: str) -> LoginTokens:
        """The family's newest tokens."""
        with self._lock:
            return self._families[family].current

    def family_of(self, refresh_token: str) -> str | None:
        """Which family a refresh token belongs to (used or not)."""
        with self._lock:
            return self._by_refresh.get(refresh_token)

    def stats(self, family: str | None = None) -> dict[str, FamilyStats]:
        """Counts per family (copies, safe to keep)."""
        with self._lock:
            chosen = [family] if family else list(self._families)
            return {name: FamilyStats(**asdict(self._families[name].stats)) for name in chosen}
