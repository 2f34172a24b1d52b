from __future__ import annotations

import base64
import json
import time
from typing import Annotated, Any

import httpx
import pytest
from fastapi import APIRouter, Depends, FastAPI
from joserfc.jwk import ECKey
from sqlalchemy.ext.asyncio import AsyncSession

from service.auth import service as auth_service
from service.auth.dependencies import Principal, get_principal, require
from service.auth.keys import rotate_signing_key
from service.auth.scopes import ALL_SCOPES, ROLE_SCOPES
from tests.fixtures.tokens import fetch_token, forge, register, runtime, token_for

pytestmark = pytest.mark.usefixtures("catalog_loaded")


def bearer(token: str, **extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", **extra}


def assert_unauthenticated(response: httpx.Response, error: str | None = "invalid_token") -> dict[str, Any]:
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/problem+json"
    # RFC 6750, section 3.1: no error code when no bearer token was sent at all.
    assert response.headers["www-authenticate"] == ("Bearer" if error is None else f'Bearer error="{error}"')
    body: dict[str, Any] = response.json()
    assert body["status"] == 401
    assert body["type"].startswith("https://tellonce.example/problems/")
    return body


def scope_router() -> APIRouter:
    """A test-only route per scope, each demanding exactly that scope."""
    router = APIRouter()
    for scope in sorted(ALL_SCOPES):

        async def endpoint() -> dict[str, str]:
            return {"ok": "yes"}

        # require(scope) is called now, once per route (not looked up late by name).
        router.add_api_route(
            f"/_test/scope/{scope}", endpoint, methods=["GET"], dependencies=[Depends(require(scope))]
        )

    async def whoami(principal: Annotated[Principal, Depends(get_principal)]) -> dict[str, Any]:
        return {"client_id": principal.client_id, "on_behalf_of": principal.on_behalf_of}

    router.add_api_route("/_test/whoami", whoami, methods=["GET"])
    return router


@pytest.fixture
def scoped_app(app: FastAPI) -> FastAPI:
    app.include_router(scope_router())
    return app


class TestBearerToken:
    async def test_real_token_reads_the_catalog(
        self, app: FastAPI, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        token = await token_for(app, session, "welfare", "consumer")
        response = await client.get("/v1/catalog", headers=bearer(token))
        assert response.status_code == 200
        assert {d["id"] for d in response.json()["departments"]} >= {"welfare", "dvla"}

    async def test_missing_token(self, client: httpx.AsyncClient) -> None:
        body = assert_unauthenticated(await client.get("/v1/catalog"), None)
        assert body["detail"] == "A bearer access token is required."

    async def test_other_scheme(self, client: httpx.AsyncClient) -> None:
        response = await client.get("/v1/catalog", headers={"Authorization": "Basic Zm9vOmJhcg=="})
        assert_unauthenticated(response, None)

    async def test_garbage_token(self, client: httpx.AsyncClient) -> None:
        body = assert_unauthenticated(await client.get("/v1/catalog", headers=bearer("not.a.jwt")))
        assert body["title"] == "Invalid access token"

    async def test_tampered_token(
        self, app: FastAPI, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        token = await token_for(app, session, "welfare", "consumer")
        header, payload, signature = token.split(".")
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        claims["roles"] = ["admin"]
        forged_payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
        response = await client.get("/v1/catalog", headers=bearer(f"{header}.{forged_payload}.{signature}"))
        assert assert_unauthenticated(response)["detail"] == "The token signature is not valid."

    @pytest.mark.parametrize(
        ("claims", "detail"),
        [
            ({"exp": int(time.time()) - 120, "iat": int(time.time()) - 420}, "The token has expired."),
            ({"aud": "someone-else"}, "The token is meant for another audience."),
            ({"iss": "https://evil.example"}, "The token was issued by someone else."),
        ],
        ids=["expired", "wrong-audience", "wrong-issuer"],
    )
    async def test_refused_claims(
        self,
        app: FastAPI,
        client: httpx.AsyncClient,
        session: AsyncSession,
        claims: dict[str, Any],
        detail: str,
    ) -> None:
        created = await register(session, "welfare", "consumer")
        token = forge(app, client_id=created.client_id, sub=created.client_id, **claims)
        assert (
            assert_unauthenticated(await client.get("/v1/catalog", headers=bearer(token)))["detail"] == detail
        )

    async def test_forged_token_is_accepted_only_when_well_formed(
        self, app: FastAPI, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        # The control for the refusals above: the same forge, unchanged, is accepted.
        created = await register(session, "welfare", "consumer")
        token = forge(app, client_id=created.client_id, sub=created.client_id)
        assert (await client.get("/v1/catalog", headers=bearer(token))).status_code == 200

    async def test_unknown_kid(self, app: FastAPI, client: httpx.AsyncClient) -> None:
        stranger = ECKey.generate_key("P-256", parameters={"kid": "not-ours"}, private=True)
        response = await client.get("/v1/catalog", headers=bearer(forge(app, key=stranger)))
        assert assert_unauthenticated(response)["detail"] == "The token was signed by an unknown key."

    async def test_our_kid_but_another_key(self, app: FastAPI, client: httpx.AsyncClient) -> None:
        kid = runtime(app).keys.active_kid
        stranger = ECKey.generate_key("P-256", parameters={"kid": kid}, private=True)
        response = await client.get("/v1/catalog", headers=bearer(forge(app, key=stranger)))
        assert assert_unauthenticated(response)["detail"] == "The token signature is not valid."

    async def test_wrong_typ(self, app: FastAPI, client: httpx.AsyncClient) -> None:
        response = await client.get("/v1/catalog", headers=bearer(forge(app, header={"typ": "JWT"})))
        assert (
            assert_unauthenticated(response)["detail"] == "The token is not an access token of this service."
        )

    async def test_unregistered_client(self, app: FastAPI, client: httpx.AsyncClient) -> None:
        response = await client.get("/v1/catalog", headers=bearer(forge(app, client_id="tc_nobody")))
        assert assert_unauthenticated(response)["detail"] == "The client is disabled or no longer registered."


class TestDisabledClient:
    async def test_cached_token_is_refused_on_the_very_next_request(
        self, app: FastAPI, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        created = await register(session, "welfare", "consumer")
        assert created.client_secret is not None
        token = await fetch_token(app, created.client_id, created.client_secret)
        assert (await client.get("/v1/catalog", headers=bearer(token))).status_code == 200
        assert (await client.get("/v1/catalog", headers=bearer(token))).status_code == 200
        await auth_service.disable_client(session, "operator:test", created.client_id)
        response = await client.get("/v1/catalog", headers=bearer(token))
        assert assert_unauthenticated(response)["detail"] == "The client is disabled or no longer registered."


class TestOnBehalfOf:
    async def test_recorded_on_the_principal(
        self, scoped_app: FastAPI, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        token = await token_for(scoped_app, session, "welfare", "consumer")
        response = await client.get(
            "/_test/whoami", headers=bearer(token, **{"X-On-Behalf-Of": "officer 4711"})
        )
        assert response.status_code == 200
        assert response.json()["on_behalf_of"] == "officer 4711"
        response = await client.get("/_test/whoami", headers=bearer(token))
        assert response.json()["on_behalf_of"] is None

    async def test_a_name_sent_in_utf8_is_recorded_as_sent(
        self, scoped_app: FastAPI, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        token = await token_for(scoped_app, session, "welfare", "consumer")
        headers = {
            b"authorization": f"Bearer {token}".encode(),
            b"x-on-behalf-of": "Zoë Ødegård 4711".encode(),
        }
        response = await client.get("/_test/whoami", headers=headers)
        assert response.status_code == 200
        assert response.json()["on_behalf_of"] == "Zoë Ødegård 4711"

    @pytest.mark.parametrize(
        "value",
        ["x" * 201, "tab\there", b"Zo\xeb"],
        ids=["too-long", "unprintable", "not-utf8"],
    )
    async def test_invalid_value_is_422(
        self, scoped_app: FastAPI, client: httpx.AsyncClient, session: AsyncSession, value: str | bytes
    ) -> None:
        token = await token_for(scoped_app, session, "welfare", "consumer")
        sent = value if isinstance(value, bytes) else value.encode()
        headers = {b"authorization": f"Bearer {token}".encode(), b"x-on-behalf-of": sent}
        response = await client.get("/_test/whoami", headers=headers)
        assert response.status_code == 422
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["errors"] == [
            {"loc": ["header", "X-On-Behalf-Of"], "msg": "printable UTF-8, 1 to 200 characters"}
        ]


class TestRoleScopeMatrix:
    @pytest.mark.parametrize("role", sorted(ROLE_SCOPES))
    async def test_each_scope_is_open_exactly_to_its_roles(
        self, scoped_app: FastAPI, client: httpx.AsyncClient, session: AsyncSession, role: str
    ) -> None:
        token = await token_for(scoped_app, session, "dvla", role)
        outcomes = {}
        for scope in sorted(ALL_SCOPES):
            response = await client.get(f"/_test/scope/{scope}", headers=bearer(token))
            outcomes[scope] = response.status_code
            if response.status_code == 403:
                assert response.headers["content-type"] == "application/problem+json"
                assert response.json()["detail"] == f"This call needs the scope(s): {scope}."
                # RFC 6750, section 3.1: the challenge names the error and the scope.
                assert response.headers["www-authenticate"] == (
                    f'Bearer error="insufficient_scope", scope="{scope}"'
                )
        assert outcomes == {scope: 200 if scope in ROLE_SCOPES[role] else 403 for scope in ALL_SCOPES}

    async def test_narrowed_token_loses_the_other_scopes(
        self, scoped_app: FastAPI, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        created = await register(session, "dvla", "consumer")
        assert created.client_secret is not None
        token = await fetch_token(scoped_app, created.client_id, created.client_secret, scope="citizens:read")
        assert (await client.get("/_test/scope/citizens:read", headers=bearer(token))).status_code == 200
        assert (await client.get("/_test/scope/citizens:lookup", headers=bearer(token))).status_code == 403


class TestRateLimit:
    async def test_over_the_burst_is_429_with_retry_after(
        self, app: FastAPI, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        created = await register(session, "welfare", "consumer", rate_per_second=0.01, rate_burst=3)
        assert created.client_secret is not None
        token = await fetch_token(app, created.client_id, created.client_secret)
        statuses = [(await client.get("/v1/catalog", headers=bearer(token))).status_code for _ in range(3)]
        assert statuses == [200, 200, 200]
        response = await client.get("/v1/catalog", headers=bearer(token))
        assert response.status_code == 429
        assert response.headers["content-type"] == "application/problem+json"
        assert 1 <= int(response.headers["retry-after"]) <= 100
        assert response.json()["title"] == "Too many requests"
        # Another client has its own bucket.
        other = await token_for(app, session, "welfare", "consumer")
        assert (await client.get("/v1/catalog", headers=bearer(other))).status_code == 200


class TestRotation:
    async def test_old_tokens_stay_valid_and_jwks_lists_both_keys(
        self, app: FastAPI, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        created = await register(session, "welfare", "consumer")
        assert created.client_secret is not None
        old_token = await fetch_token(app, created.client_id, created.client_secret)
        old_kid = runtime(app).keys.active_kid
        new_kid = rotate_signing_key(app.state.settings.data_dir)
        new_token = await fetch_token(app, created.client_id, created.client_secret)
        assert json.loads(base64.urlsafe_b64decode(new_token.split(".")[0] + "==="))["kid"] == new_kid
        kids = {key["kid"] for key in (await client.get("/.well-known/jwks.json")).json()["keys"]}
        assert kids == {old_kid, new_kid}
        for token in (old_token, new_token):
            assert (await client.get("/v1/catalog", headers=bearer(token))).status_code == 200
