"""RFC 9068 access tokens: issue, verify, and a bounded cache of verified tokens.

Verifying an ES256 signature costs a fair fraction of a millisecond; a client sends the
same token for every request of its lifetime. ``TokenVerifier`` keeps what a token
proved, keyed by the SHA-256 of the token and dropped when the token expires, so the
hot path pays a hash and a dictionary lookup instead. The cache never decides whether
a client is still allowed in: the per-request check in ``dependencies`` does that.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass
from typing import Any

from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jws import extract_compact

from service.auth.keys import ALGORITHM, SigningKeys
from service.auth.scopes import ROLES, scopes_for

TOKEN_TYPE = "at+jwt"  # noqa: S105 - the RFC 9068 media type
# Clock skew tolerated between the token endpoint and a verifying replica.
LEEWAY_SECONDS = 5


class TokenInvalid(Exception):
    """The token is not one this service issued, or no longer valid. The message is
    safe to show the caller: it never contains the token."""


@dataclass(frozen=True)
class VerifiedToken:
    client_id: str
    department: str
    roles: frozenset[str]
    scopes: frozenset[str]
    expires_at: int


class TokenIssuer:
    def __init__(self, keys: SigningKeys, issuer: str, audience: str, ttl_seconds: int) -> None:
        self.keys = keys
        self.issuer = issuer
        self.audience = audience
        self.ttl_seconds = ttl_seconds

    def issue(self, *, client_id: str, department: str, roles: list[str], scope: str) -> dict[str, Any]:
        """A signed access token and its OAuth2 token response fields."""
        self.keys.refresh()  # a rotation by the CLI takes effect on the next token
        key = self.keys.active
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": client_id,
            "client_id": client_id,
            "department": department,
            "roles": sorted(roles),
            "scope": scope,
            "jti": secrets.token_urlsafe(16),
            "iat": now,
            "exp": now + self.ttl_seconds,
        }
        header = {"alg": ALGORITHM, "typ": TOKEN_TYPE, "kid": key.kid}
        token = jwt.encode(header, claims, key, algorithms=[ALGORITHM])
        return {"access_token": token, "token_type": "Bearer", "expires_in": self.ttl_seconds, "scope": scope}


class TokenVerifier:
    """Verifies access tokens, remembering the good ones until they expire."""

    def __init__(self, keys: SigningKeys, issuer: str, audience: str, cache_size: int = 10_000) -> None:
        self.keys = keys
        self.issuer = issuer
        self.audience = audience
        self.cache_size = cache_size
        self._cache: dict[bytes, VerifiedToken] = {}

    def verify(self, token: str) -> VerifiedToken:
        digest = hashlib.sha256(token.encode()).digest()
        cached = self._cache.get(digest)
        now = time.time()
        if cached is not None:
            if cached.expires_at + LEEWAY_SECONDS > now:
                return cached
            del self._cache[digest]
        verified = self.verify_uncached(token, now)
        self._remember(digest, verified, now)
        return verified

    def _remember(self, digest: bytes, verified: VerifiedToken, now: float) -> None:
        if len(self._cache) >= self.cache_size:
            for stale in [d for d, v in self._cache.items() if v.expires_at + LEEWAY_SECONDS <= now]:
                del self._cache[stale]
            # Still full: evict the oldest entries (dicts keep insertion order).
            while len(self._cache) >= self.cache_size:
                del self._cache[next(iter(self._cache))]
        self._cache[digest] = verified

    def verify_uncached(self, token: str, now: float | None = None) -> VerifiedToken:
        """Signature (kid -> key), typ, iss, aud, exp, iat and the claims' shapes."""
        now = time.time() if now is None else now
        try:
            header = extract_compact(token.encode()).protected
        except (JoseError, ValueError, UnicodeError):
            raise TokenInvalid("The access token is malformed.") from None
        if header.get("typ") != TOKEN_TYPE or header.get("alg") != ALGORITHM:
            raise TokenInvalid("The token is not an access token of this service.")
        kid = header.get("kid")
        key = self.keys.verification_key(kid) if isinstance(kid, str) else None
        if key is None:
            raise TokenInvalid("The token was signed by an unknown key.")
        try:
            claims = jwt.decode(token, key, algorithms=[ALGORITHM]).claims
        except (JoseError, ValueError):
            raise TokenInvalid("The token signature is not valid.") from None
        if claims.get("iss") != self.issuer:
            raise TokenInvalid("The token was issued by someone else.")
        audience = claims.get("aud")
        if audience != self.audience and not (isinstance(audience, list) and self.audience in audience):
            raise TokenInvalid("The token is meant for another audience.")
        expires_at, issued_at = claims.get("exp"), claims.get("iat")
        if not isinstance(expires_at, int) or not isinstance(issued_at, int):
            raise TokenInvalid("The token lacks exp or iat.")
        if expires_at + LEEWAY_SECONDS <= now:
            raise TokenInvalid("The token has expired.")
        if issued_at - LEEWAY_SECONDS > now:
            raise TokenInvalid("The token was issued in the future.")
        client_id, department = claims.get("client_id"), claims.get("department")
        roles, scope = claims.get("roles"), claims.get("scope")
        if not (
            isinstance(client_id, str)
            and isinstance(department, str)
            and isinstance(scope, str)
            and isinstance(roles, list)
            and all(isinstance(r, str) for r in roles)
        ):
            raise TokenInvalid("The token lacks the claims of this service.")
        role_set = frozenset(roles) & ROLES
        # The token may carry fewer scopes than the roles allow (the client asked for
        # fewer), never more: roles bound what any token can grant.
        scopes = frozenset(scope.split()) & scopes_for(role_set)
        return VerifiedToken(client_id, department, role_set, scopes, expires_at)
