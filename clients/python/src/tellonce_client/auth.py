"""OAuth2 client-credentials tokens: by client secret or by ``private_key_jwt`` (RFC 7523).

A token is kept until it nears expiry and fetched again before it lapses, so no request
carries a token that expires in flight. Concurrent callers share one fetch.
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from tellonce_client._http import DEFAULT_MAX_RESPONSE_BYTES, DEFAULT_TIMEOUT_SECONDS, exchange
from tellonce_client.errors import TokenError

JWT_BEARER_ASSERTION = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
# Renew this long before expiry, but never more than half of a token's lifetime early.
DEFAULT_REFRESH_MARGIN_SECONDS = 30.0
ASSERTION_LIFETIME_SECONDS = 60

Clock = Callable[[], float]


class TokenSource:
    """Fetches and caches access tokens for one client from the service's token endpoint.

    ``timeout`` bounds each fetch in all (not only each read), ``max_response_bytes`` the
    answer read; set them on the instance to change them."""

    timeout: float | None = DEFAULT_TIMEOUT_SECONDS
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES

    def __init__(self, client_id: str, *, refresh_margin: float, clock: Clock) -> None:
        self.client_id = client_id
        self.refresh_margin = refresh_margin
        self._clock = clock
        self._token: str | None = None
        self._refresh_at = 0.0
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(client_id={self.client_id!r})"

    def _form(self, token_url: str) -> tuple[dict[str, str], httpx.Auth | None]:
        raise NotImplementedError

    async def token(self, http: httpx.AsyncClient, token_url: str, *, renew: bool = False) -> str:
        """A token that is not near expiry; a new one if ``renew`` (the service refused the
        last). A fetch takes at most ``timeout`` seconds in all and reads at most
        ``max_response_bytes`` (``ResponseTimeout``, ``ResponseTooLarge`` otherwise; a
        failure below HTTP is a ``TransportError``)."""
        async with self._lock:
            if not renew and self._token is not None and self._clock() < self._refresh_at:
                return self._token
            form, auth = self._form(token_url)
            form["grant_type"] = "client_credentials"
            request = http.build_request("POST", token_url, data=form)
            response = await exchange(
                http,
                request,
                timeout=self.timeout,
                max_bytes=self.max_response_bytes,
                auth=auth or httpx.USE_CLIENT_DEFAULT,
            )
            if response.status_code != 200:
                raise TokenError.from_response(response, self.client_id)
            token, lifetime = _token_answer(response, self.client_id)
            self._token = token
            self._refresh_at = self._clock() + lifetime - min(self.refresh_margin, lifetime / 2)
            return self._token


def _token_answer(response: httpx.Response, client_id: str) -> tuple[str, float]:
    """The token and its lifetime in seconds (300 if the answer gives none) from a token
    endpoint's 200 (RFC 6749 section 5.1). A body that is not such an answer raises
    ``TokenError`` saying what is wrong with it, never what it holds (it may hold a token)."""

    def refuse(reason: str) -> TokenError:
        return TokenError(response.status_code, client_id, reason=reason)

    try:
        body: Any = response.json()
    except (ValueError, RecursionError):  # not JSON, not in the encoding it claims, nested too deep
        raise refuse("the body is not JSON") from None
    if not isinstance(body, dict):
        raise refuse("the body is not a JSON object")
    token = body.get("access_token")
    if not isinstance(token, str) or not token:
        raise refuse("access_token is missing or not a string")
    lifetime = body.get("expires_in", 300)
    # A number; a string of one is taken as the number it spells (bool is not a number here).
    if isinstance(lifetime, bool) or not isinstance(lifetime, int | float | str):
        raise refuse("expires_in is not a number")
    try:
        seconds = float(lifetime)
    except (ValueError, OverflowError):  # OverflowError: an integer too large for a float
        raise refuse("expires_in is not a number") from None
    if not math.isfinite(seconds) or seconds < 0:
        raise refuse("expires_in is not a finite number of seconds, zero or more")
    return token, seconds


class ClientSecret(TokenSource):
    """``client_secret_basic``: the client id and secret as HTTP Basic credentials, each
    form-encoded first as RFC 6749 section 2.3.1 requires."""

    def __init__(
        self,
        client_id: str,
        client_secret: str,
        *,
        refresh_margin: float = DEFAULT_REFRESH_MARGIN_SECONDS,
        clock: Clock = time.monotonic,
    ) -> None:
        super().__init__(client_id, refresh_margin=refresh_margin, clock=clock)
        self._secret = client_secret

    def _form(self, token_url: str) -> tuple[dict[str, str], httpx.Auth | None]:  # noqa: ARG002
        return {}, httpx.BasicAuth(_form_encoded(self.client_id), _form_encoded(self._secret))


def _form_encoded(value: str) -> str:
    """``value`` as RFC 6749 section 2.3.1 has a Basic user or password: encoded as
    ``application/x-www-form-urlencoded`` (UTF-8, every byte but the unreserved ones as
    ``%XX``), so a ``:`` in it is no separator. A space is sent as ``%20``, which a form
    decoder and a plain percent-decoder (authlib's) both read back as a space."""
    return quote(value, safe="")


PrivateKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey


class PrivateKeyJwt(TokenSource):
    """``private_key_jwt``: a short-lived assertion signed with the client's private key,
    whose public JWK was registered with ``tellonce clients create --jwk``."""

    def __init__(
        self,
        client_id: str,
        private_key: PrivateKey | bytes | str,
        *,
        key_id: str | None = None,
        refresh_margin: float = DEFAULT_REFRESH_MARGIN_SECONDS,
        clock: Clock = time.monotonic,
    ) -> None:
        super().__init__(client_id, refresh_margin=refresh_margin, clock=clock)
        if isinstance(private_key, str | bytes):
            pem = private_key.encode() if isinstance(private_key, str) else private_key
            loaded = load_pem_private_key(pem, password=None)
            if not isinstance(loaded, PrivateKey):
                raise TypeError("private_key_jwt needs an EC, Ed25519 or RSA private key")
            private_key = loaded
        self._key = private_key
        self.key_id = key_id
        self.algorithm = _algorithm(private_key)

    def _form(self, token_url: str) -> tuple[dict[str, str], httpx.Auth | None]:
        now = int(time.time())
        claims = {
            "iss": self.client_id,
            "sub": self.client_id,
            "aud": token_url,
            "iat": now,
            "exp": now + ASSERTION_LIFETIME_SECONDS,
            "jti": uuid.uuid4().hex,
        }
        headers = {"kid": self.key_id} if self.key_id else None
        assertion = jwt.encode(claims, self._key, algorithm=self.algorithm, headers=headers)
        return {
            "client_id": self.client_id,
            "client_assertion_type": JWT_BEARER_ASSERTION,
            "client_assertion": assertion,
        }, None


def _algorithm(key: PrivateKey) -> str:
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return "EdDSA"
    if isinstance(key, rsa.RSAPrivateKey):
        return "RS256"
    curves = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}
    if key.curve.name not in curves:
        raise TypeError(f"unsupported EC curve {key.curve.name}")
    return curves[key.curve.name]
