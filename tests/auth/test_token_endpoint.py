from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
import warnings
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlencode

import httpx
import jwt as pyjwt
import pytest
from authlib.oauth2.rfc7523 import private_key_jwt_sign
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from fastapi import FastAPI
from joserfc import jws as jose_jws
from joserfc import jwt as jose_jwt
from joserfc.errors import SecurityWarning
from joserfc.jwk import ECKey, OKPKey, RSAKey
from sqlalchemy import update
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncSession

from service.auth import secrets as secrets_module
from service.auth import service as auth_service
from service.auth.models import Client
from service.auth.scopes import ROLE_SCOPES
from service.auth.server import ASSERTION_LEEWAY
from tests.fixtures import statuses
from tests.fixtures.tokens import OAuthError, fetch_token, register, runtime


def _b64int(number: int) -> str:
    return (
        base64.urlsafe_b64encode(number.to_bytes((number.bit_length() + 7) // 8, "big")).rstrip(b"=").decode()
    )


def _rs256(claims: dict[str, Any], key: rsa.RSAPrivateKey) -> str:
    """A compact RS256 JWS made with ``cryptography`` alone: the JOSE libraries refuse to
    sign with a key as short as the one this is for."""

    def part(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    signing_input = (
        part(json.dumps({"alg": "RS256", "typ": "JWT"}).encode()) + "." + part(json.dumps(claims).encode())
    )
    signature = key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    return signing_input + "." + part(signature)


def assertion_claims(app: FastAPI, client_id: str, jti: str, now: int) -> dict[str, Any]:
    """A private_key_jwt assertion's claims for ``client_id``, valid for a minute from ``now``."""
    return {
        "iss": client_id,
        "sub": client_id,
        "aud": runtime(app).token_url,
        "iat": now,
        "exp": now + 60,
        "jti": jti,
    }


def assertion_form(assertion: str) -> dict[str, str]:
    return {
        "grant_type": "client_credentials",
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "client_assertion": assertion,
    }


def basic(client_id: str, secret: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()}


def assert_oauth_error(response: httpx.Response, status: int, error: str) -> dict[str, Any]:
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    # RFC 6749 5.2 (and 5.1 for the token response): JSON, never cached.
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["pragma"] == "no-cache"
    body: dict[str, Any] = response.json()
    assert body["error"] == error
    return body


def decode_with_pyjwt(jwks: dict[str, Any], token: str, issuer: str) -> dict[str, Any]:
    """Verify with PyJWT, against the published JWKS only: an independent implementation."""
    header = pyjwt.get_unverified_header(token)
    assert header["typ"] == "at+jwt"
    key = pyjwt.PyJWKSet.from_dict(jwks)[header["kid"]]
    claims: dict[str, Any] = pyjwt.decode(
        token,
        key.key,
        algorithms=["ES256"],
        audience="tellonce",
        issuer=issuer,
        options={"require": ["exp", "iat", "jti", "iss", "aud", "sub"]},
    )
    return claims


class TestClientSecret:
    @pytest.mark.parametrize("method", ["client_secret_basic", "client_secret_post"])
    async def test_authlib_client_gets_a_token_that_verifies_against_the_jwks(
        self, app: FastAPI, client: httpx.AsyncClient, session: AsyncSession, method: str
    ) -> None:
        created = await register(session, "dvla", "consumer", "writer")
        assert created.client_secret is not None
        token = await fetch_token(app, created.client_id, created.client_secret, method)
        jwks = (await client.get("/.well-known/jwks.json")).json()
        assert all("d" not in key for key in jwks["keys"])
        claims = decode_with_pyjwt(jwks, token, runtime(app).issuer_url)
        assert claims["client_id"] == claims["sub"] == created.client_id
        assert claims["department"] == "dvla"
        assert claims["roles"] == ["consumer", "writer"]
        assert set(claims["scope"].split()) == ROLE_SCOPES["consumer"] | ROLE_SCOPES["writer"]
        assert claims["exp"] - claims["iat"] == app.state.settings.access_token_ttl_seconds

    async def test_the_token_response_is_json_and_never_cached(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        # RFC 6749 5.1: application/json, Cache-Control: no-store, Pragma: no-cache. httpx's
        # own Basic authentication, as a department system might send it.
        created = await register(session, "dvla", "consumer")
        credentials = (created.client_id, created.client_secret or "")
        response = await client.post(
            "/oauth/token", data={"grant_type": "client_credentials"}, auth=credentials
        )
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/json"
        assert response.headers["cache-control"] == "no-store"
        assert response.headers["pragma"] == "no-cache"
        assert response.json()["token_type"] == "Bearer"

    async def test_requested_scope_narrows_the_token(self, app: FastAPI, session: AsyncSession) -> None:
        created = await register(session, "dvla", "consumer")
        assert created.client_secret is not None
        token = await fetch_token(app, created.client_id, created.client_secret, scope="citizens:read")
        assert pyjwt.decode(token, options={"verify_signature": False})["scope"] == "citizens:read"

    async def test_bad_secret_is_401_invalid_client(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        created = await register(session, "dvla", "consumer")
        response = await client.post(
            "/oauth/token",
            data={"grant_type": "client_credentials"},
            headers=basic(created.client_id, "wrong"),
        )
        assert_oauth_error(response, 401, "invalid_client")
        assert response.headers["www-authenticate"].startswith("Basic")

    @pytest.mark.parametrize("client_id", ["tc_unknown", "x" * 300])
    async def test_unknown_client_by_post_is_401_invalid_client(
        self, client: httpx.AsyncClient, client_id: str
    ) -> None:
        response = await client.post(
            "/oauth/token",
            data={"grant_type": "client_credentials", "client_id": client_id, "client_secret": "s"},
        )
        assert_oauth_error(response, 401, "invalid_client")

    async def test_disabled_client_gets_no_token(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        created = await register(session, "dvla", "consumer")
        assert created.client_secret is not None
        await auth_service.disable_client(session, "operator:test", created.client_id)
        response = await client.post(
            "/oauth/token",
            data={"grant_type": "client_credentials"},
            headers=basic(created.client_id, created.client_secret),
        )
        assert_oauth_error(response, 401, "invalid_client")

    async def test_authlib_client_raises_on_bad_secret(self, app: FastAPI, session: AsyncSession) -> None:
        created = await register(session, "dvla", "consumer")
        with pytest.raises(OAuthError) as caught:
            await fetch_token(app, created.client_id, "not-the-secret")
        assert caught.value.error == "invalid_client"

    async def test_unsupported_grant_type(self, client: httpx.AsyncClient, session: AsyncSession) -> None:
        created = await register(session, "dvla", "consumer")
        assert created.client_secret is not None
        response = await client.post(
            "/oauth/token",
            data={"grant_type": "password", "username": "u", "password": "p"},
            headers=basic(created.client_id, created.client_secret),
        )
        assert_oauth_error(response, 400, "unsupported_grant_type")

    @pytest.mark.parametrize("grant_type", [None, ""])
    async def test_missing_grant_type_is_invalid_request(
        self, client: httpx.AsyncClient, session: AsyncSession, grant_type: str | None
    ) -> None:
        # RFC 6749 5.2: a missing required parameter is invalid_request;
        # unsupported_grant_type is for a grant type the server does not support.
        created = await register(session, "dvla", "consumer")
        assert created.client_secret is not None
        form = {"scope": "citizens:read"} | ({} if grant_type is None else {"grant_type": grant_type})
        response = await client.post(
            "/oauth/token", data=form, headers=basic(created.client_id, created.client_secret)
        )
        body = assert_oauth_error(response, 400, "invalid_request")
        assert "grant_type" in body["error_description"]

    async def test_scope_beyond_the_roles_is_invalid_scope(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        created = await register(session, "dvla", "consumer")
        assert created.client_secret is not None
        response = await client.post(
            "/oauth/token",
            data={"grant_type": "client_credentials", "scope": "citizens:read admin:clients"},
            headers=basic(created.client_id, created.client_secret),
        )
        assert_oauth_error(response, 400, "invalid_scope")

    async def test_non_form_body_is_invalid_request(self, client: httpx.AsyncClient) -> None:
        response = await client.post("/oauth/token", json={"grant_type": "client_credentials"})
        assert_oauth_error(response, 400, "invalid_request")

    async def test_repeated_parameter_is_invalid_request(self, client: httpx.AsyncClient) -> None:
        response = await client.post(
            "/oauth/token",
            content=b"grant_type=client_credentials&grant_type=client_credentials",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert_oauth_error(response, 400, "invalid_request")

    async def test_body_over_the_limit_is_413_invalid_request(
        self, app: FastAPI, client: httpx.AsyncClient
    ) -> None:
        # README and OpenAPI: the token endpoint's 413 is an RFC 6749 body, like its 400 and 401.
        limit = app.state.settings.max_body_bytes
        form = b"grant_type=client_credentials&scope=" + b"a" * limit
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        declared = await client.post("/oauth/token", content=form, headers=headers)
        assert_oauth_error(declared, 413, "invalid_request")

        async def chunked() -> AsyncIterator[bytes]:
            for start in range(0, len(form), 65_536):
                yield form[start : start + 65_536]

        streamed = await client.post("/oauth/token", content=chunked(), headers=headers)
        assert_oauth_error(streamed, 413, "invalid_request")

    async def test_undecodable_basic_header_is_401_invalid_client(self, client: httpx.AsyncClient) -> None:
        header = "Basic " + base64.b64encode(b"\xff\xfe:secret").decode()
        response = await client.post(
            "/oauth/token", data={"grant_type": "client_credentials"}, headers={"Authorization": header}
        )
        body = assert_oauth_error(response, 401, "invalid_client")
        assert body["error_description"] == "The Basic credentials are not base64 UTF-8."

    async def test_basic_credentials_are_form_decoded(
        self, app: FastAPI, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        # RFC 6749 2.3.1: the id and the secret are each application/x-www-form-urlencoded
        # before Basic encodes them, so a "+" is a space and "%2B" a plus. Issued secrets
        # have neither; one set by hand (as an operator's migration might) shows the rule.
        created = await register(session, "dvla", "consumer")
        await session.execute(
            update(Client)
            .where(Client.client_id == created.client_id)
            .values(secret_hash=secrets_module.hash_secret("a b+c"))
        )
        await session.commit()
        grant = {"grant_type": "client_credentials"}
        for encoded in ("a+b%2Bc", "a%20b%2bc"):
            response = await client.post(
                "/oauth/token", data=grant, headers=basic(created.client_id, encoded)
            )
            assert response.status_code == 200, (encoded, response.text)
        # The secret as it is, not encoded: its "+" reads as a space.
        refused = await client.post("/oauth/token", data=grant, headers=basic(created.client_id, "a b+c"))
        assert_oauth_error(refused, 401, "invalid_client")
        # So does authlib's client, which does not form-encode: the secret is sent as it is.
        with pytest.raises(OAuthError):
            await fetch_token(app, created.client_id, "a b+c")
        # A %-escape that is not UTF-8 is refused as undecodable, not read as U+FFFD.
        undecodable = await client.post(
            "/oauth/token", data=grant, headers=basic(created.client_id, "a+b%FF")
        )
        body = assert_oauth_error(undecodable, 401, "invalid_client")
        assert body["error_description"] == "The Basic credentials are not base64 UTF-8."

    @pytest.mark.parametrize("credentials", ["éééé", "ab\x00c", "dGM\u00e9"])
    async def test_basic_header_that_is_not_base64_ascii_is_401_invalid_client(
        self, client: httpx.AsyncClient, credentials: str
    ) -> None:
        response = await client.post(
            "/oauth/token",
            data={"grant_type": "client_credentials"},
            headers={b"Authorization": ("Basic " + credentials).encode("latin-1")},
        )
        body = assert_oauth_error(response, 401, "invalid_client")
        assert body["error_description"] == "The Basic credentials are not base64 UTF-8."

    # A scheme and a space, then only what Python (not HTTP) takes for whitespace: a server
    # strips the trailing space and tab, not the no-break space (obs-text) or NEL.
    @pytest.mark.parametrize("header", [b"Basic \xa0", b"Basic \x85", b"\xa0 Basic", b"Basic "])
    async def test_authorization_header_without_credentials_is_401_invalid_client(
        self, client: httpx.AsyncClient, header: bytes
    ) -> None:
        response = await client.post(
            "/oauth/token", data={"grant_type": "client_credentials"}, headers={b"Authorization": header}
        )
        assert_oauth_error(response, 401, "invalid_client")

    @pytest.mark.parametrize("client_id", ["\x00", "tc_\x00x", "tc_é", "tc_ x"])
    async def test_client_id_no_client_can_have_is_401_invalid_client(
        self, client: httpx.AsyncClient, client_id: str
    ) -> None:
        by_post = await client.post(
            "/oauth/token",
            data={"grant_type": "client_credentials", "client_id": client_id, "client_secret": "s"},
        )
        assert_oauth_error(by_post, 401, "invalid_client")
        by_basic = await client.post(
            "/oauth/token", data={"grant_type": "client_credentials"}, headers=basic(client_id, "s")
        )
        assert_oauth_error(by_basic, 401, "invalid_client")

    async def test_two_authentication_methods_at_once_is_invalid_request(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        created = await register(session, "dvla", "consumer")
        assert created.client_secret is not None
        response = await client.post(
            "/oauth/token",
            data={
                "grant_type": "client_credentials",
                "client_id": created.client_id,
                "client_secret": created.client_secret,
            },
            headers=basic(created.client_id, created.client_secret),
        )
        body = assert_oauth_error(response, 400, "invalid_request")
        assert body["error_description"] == "Use exactly one client authentication method."

    async def test_a_client_id_other_than_the_basic_credentials_is_invalid_request(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        """RFC 6749 2.3: one client, by one method. A form client_id naming another client
        than the Basic credentials is refused, not answered with the Basic client's token."""
        created = await register(session, "dvla", "consumer")
        other = await register(session, "welfare", "consumer")
        assert created.client_secret is not None
        credentials = basic(created.client_id, created.client_secret)
        for named in (other.client_id, "tc_nobody"):
            form = {"grant_type": "client_credentials", "client_id": named}
            response = await client.post("/oauth/token", data=form, headers=credentials)
            body = assert_oauth_error(response, 400, "invalid_request")
            assert body["error_description"] == "The client_id is not the client the Basic credentials name."
            assert "access_token" not in body
        # The same id beside them is fine.
        same = await client.post(
            "/oauth/token",
            data={"grant_type": "client_credentials", "client_id": created.client_id},
            headers=credentials,
        )
        assert same.status_code == 200, same.text

    async def test_an_empty_parameter_is_as_if_omitted(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        # RFC 6749 3.2: parameters sent without a value MUST be treated as if omitted, so an
        # empty client_secret beside Basic credentials is not a second method.
        created = await register(session, "dvla", "consumer")
        assert created.client_secret is not None
        response = await client.post(
            "/oauth/token",
            data={"grant_type": "client_credentials", "client_secret": "", "scope": ""},
            headers=basic(created.client_id, created.client_secret),
        )
        assert response.status_code == 200, response.text
        empty_grant = await client.post(
            "/oauth/token", data={"grant_type": ""}, headers=basic(created.client_id, created.client_secret)
        )
        body = assert_oauth_error(empty_grant, 400, "invalid_request")
        assert body["error_description"] == "The grant_type parameter is required."

    async def test_more_fields_than_the_parser_takes_is_an_oauth_error(
        self, client: httpx.AsyncClient
    ) -> None:
        body = b"grant_type=client_credentials&" + b"&".join(b"p%d=1" % i for i in range(1200))
        response = await client.post(
            "/oauth/token", content=body, headers={"Content-Type": "application/x-www-form-urlencoded"}
        )
        assert_oauth_error(response, 400, "invalid_request")

    @pytest.mark.parametrize(
        ("name", "said"),
        [
            ("scope", "Parameter scope is repeated or not text."),
            ("a'b", "A parameter is repeated or not text."),
            ('a"b\\', "A parameter is repeated or not text."),
            ("\u00e9", "A parameter is repeated or not text."),
            # A name that may be personal data (a national id) is not repeated back.
            ("AB123456C", "A parameter is repeated or not text."),
            ("ab123456c", "A parameter is repeated or not text."),
        ],
    )
    async def test_a_repeated_parameter_is_named_only_if_plain(
        self, client: httpx.AsyncClient, name: str, said: str
    ) -> None:
        # RFC 6749 5.2: error_description is printable ASCII without '"' and '\\'.
        body = urlencode([("grant_type", "client_credentials"), (name, "1"), (name, "2")]).encode()
        response = await client.post(
            "/oauth/token", content=body, headers={"Content-Type": "application/x-www-form-urlencoded"}
        )
        described = assert_oauth_error(response, 400, "invalid_request")["error_description"]
        assert described == said
        assert all(0x20 <= ord(c) <= 0x7E and c not in '"\\' for c in described)

    async def test_secret_is_stored_only_as_a_hash(self, session: AsyncSession) -> None:
        created = await register(session, "dvla", "consumer")
        assert created.client_secret is not None
        row = await auth_service.get_client(session, created.client_id)
        assert row is not None
        assert row.secret_hash is not None
        assert created.client_secret not in row.secret_hash
        assert created.client_secret not in repr(created)


def sign(alg: str, claims: dict[str, Any], key: Any) -> str:
    """A client assertion signed by joserfc, which warns that the name "EdDSA" is deprecated."""
    with warnings.catch_warnings(action="ignore", category=SecurityWarning):
        return jose_jwt.encode({"alg": alg}, claims, key, algorithms=[alg])


class TestPrivateKeyJwt:
    async def register_key_client(self, session: AsyncSession) -> tuple[str, ECKey]:
        key = ECKey.generate_key("P-256", private=True)
        created = await register(session, "welfare", "consumer", public_jwk=key.as_dict(private=False))
        assert created.client_secret is None
        assert created.as_json() == {"client_id": created.client_id}
        return created.client_id, key

    async def test_authlib_client_gets_a_token_with_private_key_jwt(
        self, app: FastAPI, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        client_id, key = await self.register_key_client(session)
        token = await fetch_token(app, client_id, key, "private_key_jwt")
        jwks = (await client.get("/.well-known/jwks.json")).json()
        claims = decode_with_pyjwt(jwks, token, runtime(app).issuer_url)
        assert claims["client_id"] == client_id
        assert claims["department"] == "welfare"

    def assertion(self, app: FastAPI, client_id: str, key: ECKey, **claims: Any) -> dict[str, str]:
        signed = private_key_jwt_sign(
            key, client_id, runtime(app).token_url, claims=claims or None, alg="ES256", expires_in=60
        )
        return {
            "grant_type": "client_credentials",
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": signed if isinstance(signed, str) else signed.decode(),
        }

    async def test_client_id_other_than_the_assertions_subject_is_refused(
        self, app: FastAPI, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        # RFC 7521 4.2: a client_id sent with an assertion MUST name the assertion's client;
        # one that does not is a malformed request (RFC 6749 5.2), not a failed authentication.
        client_id, key = await self.register_key_client(session)
        other = await register(session, "welfare", "consumer")
        form = {**self.assertion(app, client_id, key), "client_id": other.client_id}
        body = assert_oauth_error(await client.post("/oauth/token", data=form), 400, "invalid_request")
        assert body["error_description"] == "The client_id is not the client the client assertion names."
        # The same id, or none, is fine.
        same = {**self.assertion(app, client_id, key), "client_id": client_id}
        assert (await client.post("/oauth/token", data=same)).status_code == 200

    async def test_an_empty_client_id_beside_an_assertion_is_as_if_omitted(
        self, app: FastAPI, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        client_id, key = await self.register_key_client(session)
        form = {**self.assertion(app, client_id, key), "client_id": "", "client_secret": ""}
        response = await client.post("/oauth/token", data=form)
        assert response.status_code == 200, response.text

    @pytest.mark.parametrize(
        ("claims", "name"),
        [
            ({"exp": 10**400}, "exp"),
            ({"exp": -(10**400)}, "exp"),
            ({"iat": -(10**400)}, "iat"),
            ({"exp": 2**53}, "exp"),
        ],
    )
    async def test_a_time_no_float_holds_is_invalid_client(
        self,
        app: FastAPI,
        client: httpx.AsyncClient,
        session: AsyncSession,
        claims: dict[str, Any],
        name: str,
    ) -> None:
        # JSON numbers have no limit; an exp or iat beyond any clock is refused, not a 500.
        client_id, key = await self.register_key_client(session)
        now = int(time.time())
        signed = jose_jwt.encode(
            {"alg": "ES256"}, {**assertion_claims(app, client_id, uuid.uuid4().hex, now), **claims}, key
        )
        response = await client.post("/oauth/token", data=assertion_form(signed))
        body = assert_oauth_error(response, 401, "invalid_client")
        assert name in body["error_description"] or "expired" in body["error_description"].lower()

    async def post_claims(
        self, app: FastAPI, client: httpx.AsyncClient, client_id: str, key: ECKey, **claims: Any
    ) -> httpx.Response:
        """POST an assertion with ``claims`` over a valid one's (iat now, exp in a minute)."""
        now = int(time.time())
        signed = jose_jwt.encode(
            {"alg": "ES256"}, {**assertion_claims(app, client_id, uuid.uuid4().hex, now), **claims}, key
        )
        return await client.post("/oauth/token", data=assertion_form(signed))

    @pytest.mark.parametrize(
        ("issued", "expires"),
        [
            # Expired 10 s ago (inside the clock-skew leeway exp is given), issued now.
            (0, -10),
            # Issued and expiring in the future, both within the leeway of now.
            (20, 10),
            # Expired the instant it was issued: valid at no time.
            (5, 5),
        ],
    )
    async def test_an_assertion_issued_when_or_after_it_expires_is_invalid_client(
        self, app: FastAPI, client: httpx.AsyncClient, session: AsyncSession, issued: int, expires: int
    ) -> None:
        # Such an assertion was never valid, yet each of its times on its own passed the
        # clock check (and exp - iat, negative, was under the lifetime cap): a token.
        client_id, key = await self.register_key_client(session)
        now = int(time.time())
        response = await self.post_claims(app, client, client_id, key, iat=now + issued, exp=now + expires)
        body = assert_oauth_error(response, 401, "invalid_client")
        assert body["error_description"] == "The assertion's exp must be after its iat."

    @pytest.mark.parametrize(
        ("not_before", "expires", "description"),
        [
            (120, 180, "The token is not yet valid"),
            # Valid from 20 s on, expired from 10 s on: valid at no time.
            (20, 10, "The assertion's exp must be after its nbf."),
            (10, 10, "The assertion's exp must be after its nbf."),
        ],
    )
    async def test_an_assertion_not_yet_valid_or_valid_at_no_time_is_invalid_client(
        self,
        app: FastAPI,
        client: httpx.AsyncClient,
        session: AsyncSession,
        not_before: int,
        expires: int,
        description: str,
    ) -> None:
        client_id, key = await self.register_key_client(session)
        now = int(time.time())
        response = await self.post_claims(
            app, client, client_id, key, iat=now - 5, nbf=now + not_before, exp=now + expires
        )
        body = assert_oauth_error(response, 401, "invalid_client")
        assert body["error_description"] == description

    async def test_an_assertion_issued_in_the_future_beyond_the_leeway_is_invalid_client(
        self, app: FastAPI, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        client_id, key = await self.register_key_client(session)
        now = int(time.time())
        response = await self.post_claims(
            app, client, client_id, key, iat=now + ASSERTION_LEEWAY + 60, exp=now + ASSERTION_LEEWAY + 120
        )
        body = assert_oauth_error(response, 401, "invalid_client")
        assert body["error_description"] == "The token was issued in the future"

    @pytest.mark.parametrize(
        "times",
        [
            # A clock a little ahead of the server's, and one a little behind.
            {"iat": 20, "nbf": 20, "exp": 80},
            {"iat": -80, "nbf": -80, "exp": -20},
            {"nbf": -5, "exp": 60},
        ],
    )
    async def test_times_within_the_leeway_in_order_are_accepted(
        self, app: FastAPI, client: httpx.AsyncClient, session: AsyncSession, times: dict[str, int]
    ) -> None:
        client_id, key = await self.register_key_client(session)
        now = int(time.time())
        claims = {name: now + offset for name, offset in times.items()}
        response = await self.post_claims(app, client, client_id, key, **claims)
        assert response.status_code == 200, response.text

    async def test_assertion_signed_by_another_key_is_invalid_client(
        self, app: FastAPI, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        client_id, _ = await self.register_key_client(session)
        stranger = ECKey.generate_key("P-256", private=True)
        response = await client.post("/oauth/token", data=self.assertion(app, client_id, stranger))
        assert_oauth_error(response, 401, "invalid_client")

    async def test_replayed_assertion_is_invalid_client(
        self, app: FastAPI, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        client_id, key = await self.register_key_client(session)
        form = self.assertion(app, client_id, key)
        assert (await client.post("/oauth/token", data=form)).status_code == 200
        assert_oauth_error(await client.post("/oauth/token", data=form), 401, "invalid_client")

    async def test_assertion_for_another_audience_is_invalid_client(
        self, app: FastAPI, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        client_id, key = await self.register_key_client(session)
        form = self.assertion(app, client_id, key, aud="https://elsewhere.example/token")
        assert_oauth_error(await client.post("/oauth/token", data=form), 401, "invalid_client")

    @pytest.mark.parametrize(
        "others",
        [
            ["https://elsewhere.example/token"],
            # The audience of this server's access tokens names no authorization server.
            ["tellonce"],
            # An empty list names no one, this server included.
            None,
        ],
    )
    async def test_an_audience_list_naming_another_is_invalid_client(
        self, app: FastAPI, client: httpx.AsyncClient, session: AsyncSession, others: list[str] | None
    ) -> None:
        # RFC 7523 3 only asks that aud contain this server; an assertion that also names
        # another may have been made for it, and be replayed here by that server.
        client_id, key = await self.register_key_client(session)
        aud = [] if others is None else [runtime(app).token_url, *others]
        response = await self.post_claims(app, client, client_id, key, aud=aud)
        body = assert_oauth_error(response, 401, "invalid_client")
        assert "aud" in body["error_description"]

    @pytest.mark.parametrize("names", ["token_url", "issuer", "both"])
    async def test_an_audience_of_this_servers_own_names_is_accepted(
        self, app: FastAPI, client: httpx.AsyncClient, session: AsyncSession, names: str
    ) -> None:
        client_id, key = await self.register_key_client(session)
        auth = runtime(app)
        audiences: dict[str, str | list[str]] = {
            "token_url": [auth.token_url],
            "issuer": auth.issuer_url,
            "both": [auth.issuer_url, auth.token_url],
        }
        response = await self.post_claims(app, client, client_id, key, aud=audiences[names])
        assert response.status_code == 200, response.text

    async def test_expired_assertion_is_invalid_client(
        self, app: FastAPI, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        client_id, key = await self.register_key_client(session)
        form = self.assertion(app, client_id, key, exp=int(time.time()) - 600)
        assert_oauth_error(await client.post("/oauth/token", data=form), 401, "invalid_client")

    @pytest.mark.parametrize(
        ("alg", "private_key"),
        [
            ("EdDSA", lambda: OKPKey.generate_key("Ed25519", private=True)),
            ("Ed25519", lambda: OKPKey.generate_key("Ed25519", private=True)),
            ("PS256", lambda: RSAKey.generate_key(2048, private=True)),
            ("RS256", lambda: RSAKey.generate_key(2048, private=True)),
            ("ES256", lambda: ECKey.generate_key("P-256", private=True)),
        ],
    )
    async def test_every_advertised_algorithm_gets_a_token_once(
        self, app: FastAPI, client: httpx.AsyncClient, session: AsyncSession, alg: str, private_key: Any
    ) -> None:
        key = private_key()
        created = await register(session, "welfare", "consumer", public_jwk=key.as_dict(private=False))
        metadata = (await client.get("/.well-known/oauth-authorization-server")).json()
        assert alg in metadata["token_endpoint_auth_signing_alg_values_supported"]
        now = int(time.time())
        claims = assertion_claims(app, created.client_id, f"{alg}-{now}", now)
        form = assertion_form(sign(alg, claims, key))
        response = await client.post("/oauth/token", data=form)
        assert response.status_code == 200, response.text
        jwks = (await client.get("/.well-known/jwks.json")).json()
        token = decode_with_pyjwt(jwks, response.json()["access_token"], runtime(app).issuer_url)
        assert token["client_id"] == created.client_id
        # The replay and expiry checks hold for every algorithm.
        assert_oauth_error(await client.post("/oauth/token", data=form), 401, "invalid_client")
        expired = {**claims, "iat": now - 700, "exp": now - 600, "jti": f"{alg}-expired"}
        form["client_assertion"] = sign(alg, expired, key)
        assert_oauth_error(await client.post("/oauth/token", data=form), 401, "invalid_client")

    async def test_a_key_registered_before_the_rsa_floor_no_longer_authenticates(
        self, app: FastAPI, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        """A 1024-bit RSA key stored before registration refused such keys: its correctly
        signed assertions are refused under today's rule, with the answer any failed
        client authentication gets."""
        strong = RSAKey.generate_key(2048, private=True)
        created = await register(session, "welfare", "consumer", public_jwk=strong.as_dict(private=False))
        weak = rsa.generate_private_key(65537, 1024)  # noqa: S505 - the key the rule refuses
        numbers = weak.public_key().public_numbers()
        weak_jwk = {"kty": "RSA", "n": _b64int(numbers.n), "e": _b64int(numbers.e)}
        await session.execute(
            update(Client).where(Client.client_id == created.client_id).values(public_jwk=weak_jwk)
        )
        await session.commit()
        now = int(time.time())
        claims = assertion_claims(app, created.client_id, f"weak-{now}", now)
        form = assertion_form(_rs256(claims, weak))
        refused = assert_oauth_error(await client.post("/oauth/token", data=form), 401, "invalid_client")
        unknown = {**form, "client_assertion": _rs256({**claims, "iss": "nobody", "sub": "nobody"}, weak)}
        assert refused == assert_oauth_error(
            await client.post("/oauth/token", data=unknown), 401, "invalid_client"
        )

    async def test_unsigned_assertion_is_invalid_client(
        self, app: FastAPI, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        client_id, key = await self.register_key_client(session)
        signed = self.assertion(app, client_id, key)
        header, payload, _ = signed["client_assertion"].split(".")
        unsigned = base64.urlsafe_b64encode(b'{"alg":"none"}').rstrip(b"=").decode() + f".{payload}."
        assert header != unsigned.split(".")[0]
        form = {**signed, "client_assertion": unsigned}
        assert_oauth_error(await client.post("/oauth/token", data=form), 401, "invalid_client")

    async def test_secret_client_cannot_use_an_assertion(
        self, app: FastAPI, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        # The client has no key to check the signature with: 401, never a 500.
        created = await register(session, "dvla", "consumer")
        form = self.assertion(app, created.client_id, ECKey.generate_key("P-256", private=True))
        assert_oauth_error(await client.post("/oauth/token", data=form), 401, "invalid_client")

    async def test_assertion_nested_too_deep_to_parse_is_invalid_client(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        # Python's json gives up on deep nesting with a RecursionError (a 500), not a ValueError.
        client_id, _ = await self.register_key_client(session)
        header = base64.urlsafe_b64encode(b'{"alg":"ES256"}').rstrip(b"=").decode()
        # 10 kB: under the size joserfc refuses to read a payload of.
        payload = base64.urlsafe_b64encode(b"[" * 5_000 + b"]" * 5_000).rstrip(b"=").decode()
        form = {
            "grant_type": "client_credentials",
            "client_id": client_id,
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": f"{header}.{payload}.c2ln",
        }
        assert_oauth_error(await client.post("/oauth/token", data=form), 401, "invalid_client")

    @pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-32-be", "utf-8-sig"])
    async def test_an_assertion_payload_not_in_utf8_is_invalid_client(
        self, app: FastAPI, client: httpx.AsyncClient, session: AsyncSession, encoding: str
    ) -> None:
        # RFC 7519 7.2: the claims are UTF-8 JSON. Python's json.loads of bytes would also
        # guess UTF-16 or UTF-32 and skip a byte order mark; signed or not, that is refused.
        client_id, key = await self.register_key_client(session)
        now = int(time.time())
        claims = json.dumps(assertion_claims(app, client_id, uuid.uuid4().hex, now))
        signed = jose_jws.serialize_compact({"alg": "ES256"}, claims.encode(encoding), key)
        response = await client.post("/oauth/token", data=assertion_form(signed))
        assert_oauth_error(response, 401, "invalid_client")
        # The same claims in UTF-8 get a token.
        signed = jose_jws.serialize_compact({"alg": "ES256"}, claims.encode(), key)
        assert (await client.post("/oauth/token", data=assertion_form(signed))).status_code == 200

    async def test_key_client_cannot_use_a_secret(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        client_id, _ = await self.register_key_client(session)
        response = await client.post(
            "/oauth/token", data={"grant_type": "client_credentials"}, headers=basic(client_id, "anything")
        )
        assert_oauth_error(response, 401, "invalid_client")


class TestFailureTellsNothing:
    """A refused client authentication reads the same whether the client is unknown,
    disabled, or known with the wrong credentials: the token endpoint must not tell
    which client ids exist. Only a caller who proved the key learns what else was wrong."""

    @staticmethod
    def refusal(response: httpx.Response) -> tuple[dict[str, Any], str]:
        body = assert_oauth_error(response, 401, "invalid_client")
        return body, response.headers["www-authenticate"]

    async def test_unknown_disabled_and_wrong_secret_read_the_same(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        known = await register(session, "dvla", "consumer")
        disabled = await register(session, "dvla", "consumer")
        assert disabled.client_secret is not None
        await auth_service.disable_client(session, "operator:test", disabled.client_id)
        attempts = [
            (known.client_id, "not-the-secret"),
            (disabled.client_id, disabled.client_secret),
            ("tc_" + "A" * 24, "not-the-secret"),
        ]
        grant = {"grant_type": "client_credentials"}
        by_basic = [
            self.refusal(await client.post("/oauth/token", data=grant, headers=basic(cid, secret)))
            for cid, secret in attempts
        ]
        by_post = [
            self.refusal(
                await client.post("/oauth/token", data={**grant, "client_id": cid, "client_secret": secret})
            )
            for cid, secret in attempts
        ]
        assert by_basic[0] == by_basic[1] == by_basic[2]
        assert by_post[0] == by_post[1] == by_post[2]

    async def test_every_refused_secret_is_hashed_and_compared_once(
        self, client: httpx.AsyncClient, session: AsyncSession, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """An unknown, disabled or key client's refusal does the work a wrong secret does
        (one hash, one constant-time comparison), so its time does not tell that the id
        is unknown. Counted, not timed."""
        known = await register(session, "dvla", "consumer")
        disabled = await register(session, "dvla", "consumer")
        assert disabled.client_secret is not None
        await auth_service.disable_client(session, "operator:test", disabled.client_id)
        key = ECKey.generate_key("P-256", private=True)
        key_client = await register(session, "welfare", "consumer", public_jwk=key.as_dict(private=False))
        hashed: list[str] = []
        compared: list[tuple[str, str]] = []
        compare_digest = hmac.compare_digest

        def counting_hash(secret: str) -> str:
            hashed.append(secret)
            return hashlib.sha256(secret.encode()).hexdigest()

        def counting_compare(a: str, b: str) -> bool:
            compared.append((a, b))
            return compare_digest(a, b)

        monkeypatch.setattr(secrets_module, "hash_secret", counting_hash)
        monkeypatch.setattr(hmac, "compare_digest", counting_compare)
        grant = {"grant_type": "client_credentials"}
        for client_id in (known.client_id, disabled.client_id, key_client.client_id, "tc_" + "C" * 24):
            for by_basic in (True, False):
                hashed.clear()
                compared.clear()
                if by_basic:
                    response = await client.post(
                        "/oauth/token", data=grant, headers=basic(client_id, "wrong")
                    )
                else:
                    form = {**grant, "client_id": client_id, "client_secret": "wrong"}
                    response = await client.post("/oauth/token", data=form)
                assert_oauth_error(response, 401, "invalid_client")
                assert hashed == ["wrong"], (client_id, by_basic)
                assert len(compared) == 1, (client_id, by_basic)
        # The console's sign-in compares the same way (a key client has no secret).
        for client_id in (known.client_id, key_client.client_id, "tc_" + "C" * 24):
            hashed.clear()
            assert await auth_service.client_with_secret(session, client_id, "wrong") is None
            assert hashed == ["wrong"], client_id

    async def test_assertion_for_unknown_secret_or_key_client_reads_the_same(
        self, app: FastAPI, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        key = ECKey.generate_key("P-256", private=True)
        key_client = await register(session, "welfare", "consumer", public_jwk=key.as_dict(private=False))
        secret_client = await register(session, "dvla", "consumer")
        stranger = ECKey.generate_key("P-256", private=True)
        refusals = []
        for client_id in (key_client.client_id, secret_client.client_id, "tc_" + "B" * 24):
            signed = private_key_jwt_sign(
                stranger, client_id, runtime(app).token_url, alg="ES256", expires_in=60
            )
            form = {
                "grant_type": "client_credentials",
                "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                "client_assertion": signed if isinstance(signed, str) else signed.decode(),
            }
            refusals.append(self.refusal(await client.post("/oauth/token", data=form)))
        assert refusals[0] == refusals[1] == refusals[2]

    async def test_every_refused_assertion_has_its_signature_verified(
        self, app: FastAPI, client: httpx.AsyncClient, session: AsyncSession, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """An assertion naming an unknown, disabled or secret client, or a client whose key
        is of another kind than its algorithm, is verified against a key of that kind, as a
        key client's wrong signature is: the refusal costs a signature check whatever the
        id. Counted, not timed."""
        ec_client = await register(
            session, "welfare", "consumer", public_jwk=ECKey.generate_key("P-256").as_dict(private=False)
        )
        rsa_client = await register(
            session, "welfare", "consumer", public_jwk=RSAKey.generate_key(2048).as_dict(private=False)
        )
        disabled = await register(
            session, "welfare", "consumer", public_jwk=ECKey.generate_key("P-256").as_dict(private=False)
        )
        await auth_service.disable_client(session, "operator:test", disabled.client_id)
        secret_client = await register(session, "dvla", "consumer")
        verified: list[str] = []
        decode = jose_jwt.decode

        def counting_decode(value: str, key: Any, *args: Any, **kwargs: Any) -> Any:
            verified.append(key.key_type)
            return decode(value, key, *args, **kwargs)

        monkeypatch.setattr(jose_jwt, "decode", counting_decode)
        stranger = ECKey.generate_key("P-256", private=True)
        claimed = [ec_client, rsa_client, disabled, secret_client]
        for client_id in [*(created.client_id for created in claimed), "tc_" + "D" * 24]:
            verified.clear()
            now = int(time.time())
            signed = sign("ES256", assertion_claims(app, client_id, uuid.uuid4().hex, now), stranger)
            response = await client.post("/oauth/token", data=assertion_form(signed))
            assert_oauth_error(response, 401, "invalid_client")
            assert verified == ["EC"], client_id

    async def test_an_assertion_signed_by_the_key_says_what_was_wrong(
        self, app: FastAPI, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        key = ECKey.generate_key("P-256", private=True)
        created = await register(session, "welfare", "consumer", public_jwk=key.as_dict(private=False))
        signed = private_key_jwt_sign(
            key, created.client_id, "https://elsewhere.example/token", alg="ES256", expires_in=60
        )
        form = {
            "grant_type": "client_credentials",
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": signed if isinstance(signed, str) else signed.decode(),
        }
        body, _ = self.refusal(await client.post("/oauth/token", data=form))
        assert "aud" in body["error_description"]


class TestEveryAnswerIsNeverCached:
    """RFC 6749 5.1 and 5.2: whatever the token endpoint answers, a token or a refusal of
    any kind, carries ``Cache-Control: no-store`` and ``Pragma: no-cache`` (the 429 is
    checked in ``tests/security/test_08_auth_failure_throttling.py``)."""

    @staticmethod
    def assert_never_cached(response: httpx.Response, status: int) -> None:
        assert response.status_code == status, response.text
        assert response.headers["cache-control"] == "no-store"
        assert response.headers["pragma"] == "no-cache"

    async def test_an_unusable_database_is_503_never_cached(
        self, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        async def database_down(*_: object) -> None:
            raise OperationalError("SELECT", {}, ConnectionRefusedError("connection refused"))

        monkeypatch.setattr(auth_service, "get_client", database_down)
        response = await client.post(
            "/oauth/token", data={"grant_type": "client_credentials"}, auth=("tc_someone", "secret")
        )
        self.assert_never_cached(response, 503)
        assert response.headers["content-type"] == "application/problem+json"

    async def test_an_unexpected_error_is_500_never_cached(
        self, app: FastAPI, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        async def broken(*_: object) -> None:
            raise RuntimeError("a bug")

        monkeypatch.setattr(auth_service, "get_client", broken)
        # Starlette answers the 500, then raises the error again for the server to log.
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            response = await http.post(
                "/oauth/token", data={"grant_type": "client_credentials"}, auth=("tc_someone", "secret")
            )
        self.assert_never_cached(response, 500)
        # A 500 provoked on purpose is not the route's contract (``test_openapi``).
        statuses.forget(app.state.metrics)

    async def test_another_method_is_405_never_cached(self, client: httpx.AsyncClient) -> None:
        response = await client.get("/oauth/token")
        self.assert_never_cached(response, 405)
        assert response.headers["allow"] == "POST"


class TestMetadata:
    async def test_rfc8414_metadata(self, app: FastAPI, client: httpx.AsyncClient) -> None:
        body = (await client.get("/.well-known/oauth-authorization-server")).json()
        issuer = runtime(app).issuer_url
        assert body["issuer"] == issuer
        assert body["token_endpoint"] == issuer + "/oauth/token"
        assert body["jwks_uri"] == issuer + "/.well-known/jwks.json"
        assert body["grant_types_supported"] == ["client_credentials"]
        assert set(body["token_endpoint_auth_methods_supported"]) == {
            "client_secret_basic",
            "client_secret_post",
            "private_key_jwt",
        }
        assert "citizens:read" in body["scopes_supported"]
