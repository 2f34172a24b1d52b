"""``/v1/clients``: an admin client registers, lists and disables its own department's
clients, through the same service functions (and audit entries) as ``tellonce clients``."""

from __future__ import annotations

import base64
import json
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi import FastAPI
from joserfc.jwk import ECKey, OKPKey
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from service.audit.models import AuditEntryRow
from service.auth.models import Client
from tests.fixtures.tokens import fetch_token, register, token_for

pytestmark = pytest.mark.usefixtures("catalog_loaded")


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def audited(session: AsyncSession, action: str) -> list[dict[str, Any]]:
    rows = await session.execute(
        select(AuditEntryRow.canonical).where(AuditEntryRow.action == action).order_by(AuditEntryRow.id)
    )
    return [json.loads(canonical) for (canonical,) in rows]


def int_to_base64url(value: int) -> str:
    return (
        base64.urlsafe_b64encode(value.to_bytes((value.bit_length() + 7) // 8, "big")).rstrip(b"=").decode()
    )


def assert_problem(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    detail: str = response.json()["detail"]
    return detail


class TestRegister:
    async def test_a_registered_client_gets_its_secret_once_and_can_sign_in(
        self, app: FastAPI, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        admin = await register(session, "welfare", "admin")
        assert admin.client_secret is not None
        token = await fetch_token(app, admin.client_id, admin.client_secret)
        response = await client.post(
            "/v1/clients",
            json={"roles": ["consumer"], "name": "benefits case system", "rate_per_second": 5},
            headers=bearer(token),
        )
        assert response.status_code == 201, response.text
        assert response.headers["cache-control"] == "no-store"
        created = response.json()
        assert created["client_id"].startswith("tc_")
        secret = created["client_secret"]

        # The new client signs in with its secret and carries its role's scopes.
        consumer_token = await fetch_token(app, created["client_id"], secret)
        assert (await client.get("/v1/catalog", headers=bearer(consumer_token))).status_code == 200

        listed = (await client.get("/v1/clients", headers=bearer(token))).json()["items"]
        mine = next(c for c in listed if c["client_id"] == created["client_id"])
        assert mine == {
            "client_id": created["client_id"],
            "name": "benefits case system",
            "department": "welfare",
            "roles": ["consumer"],
            "auth_method": "client_secret",
            "created_at": mine["created_at"],
            "disabled_at": None,
        }
        assert secret not in json.dumps(listed)

        [entry] = await audited(session, "client-create")
        assert entry["client_id"] == admin.client_id
        assert entry["department"] == "welfare"
        assert (
            f"client {created['client_id']} created: roles consumer, client_secret"
            in entry["reasons"][0]["reason"]
        )
        assert secret not in json.dumps(entry)

    async def test_a_jwk_client_gets_no_secret(
        self, app: FastAPI, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        token = await token_for(app, session, "welfare", "admin")
        public = {"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}
        response = await client.post(
            "/v1/clients", json={"roles": ["consumer"], "jwk": public}, headers=bearer(token)
        )
        assert response.status_code == 201, response.text
        assert response.json()["client_secret"] is None
        listed = (await client.get("/v1/clients", headers=bearer(token))).json()["items"]
        assert {c["auth_method"] for c in listed if c["client_id"] == response.json()["client_id"]} == {
            "private_key_jwt"
        }

    async def test_a_private_key_is_refused(
        self, app: FastAPI, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        token = await token_for(app, session, "welfare", "admin")
        private = {
            "kty": "OKP",
            "crv": "Ed25519",
            "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo",
            "d": "secret",
        }
        response = await client.post(
            "/v1/clients", json={"roles": ["consumer"], "jwk": private}, headers=bearer(token)
        )
        detail = assert_problem(response, 422)
        assert "private key" in detail
        assert "secret" not in response.text

    @pytest.mark.parametrize(
        "public",
        [
            ECKey.generate_key("P-384", private=True).as_dict(private=False),  # ES384 is not accepted
            OKPKey.generate_key("X25519", private=True).as_dict(private=False),  # a key-agreement key
            {**ECKey.generate_key("P-256", private=True).as_dict(private=False), "use": "enc"},
            {**ECKey.generate_key("P-256", private=True).as_dict(private=False), "alg": "HS256"},
            {**ECKey.generate_key("P-256", private=True).as_dict(private=False), "key_ops": ["encrypt"]},
        ],
    )
    async def test_a_key_no_accepted_assertion_can_be_verified_with_is_refused(
        self, app: FastAPI, client: httpx.AsyncClient, session: AsyncSession, public: dict[str, Any]
    ) -> None:
        # Registered, such a client could never get a token: the token endpoint verifies
        # assertions with ES256, EdDSA (Ed25519), RS256 or PS256 only, and joserfc honours the
        # key's own use, alg and key_ops.
        token = await token_for(app, session, "welfare", "admin")
        response = await client.post(
            "/v1/clients", json={"roles": ["consumer"], "jwk": public}, headers=bearer(token)
        )
        assert_problem(response, 422)
        assert await audited(session, "client-create") == []

    async def test_an_rsa_key_under_2048_bits_is_refused(
        self, app: FastAPI, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        # RFC 7518 3.3: RS256 and PS256 keys MUST be 2048 bits or larger.
        numbers = rsa.generate_private_key(65537, 1024).public_key().public_numbers()  # noqa: S505
        weak = {"kty": "RSA", "n": int_to_base64url(numbers.n), "e": int_to_base64url(numbers.e)}
        token = await token_for(app, session, "welfare", "admin")
        response = await client.post(
            "/v1/clients", json={"roles": ["consumer"], "jwk": weak}, headers=bearer(token)
        )
        assert "2048" in assert_problem(response, 422)
        assert await audited(session, "client-create") == []

    @pytest.mark.parametrize("role", ["admin", "auditor", "citizen-portal"])
    async def test_roles_that_reach_across_departments_are_the_operators_to_grant(
        self, app: FastAPI, client: httpx.AsyncClient, session: AsyncSession, role: str
    ) -> None:
        token = await token_for(app, session, "welfare", "admin")
        response = await client.post("/v1/clients", json={"roles": ["consumer", role]}, headers=bearer(token))
        assert role in assert_problem(response, 403)
        assert await audited(session, "client-create") == []

    async def test_another_departments_client_is_refused(
        self, app: FastAPI, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        token = await token_for(app, session, "welfare", "admin")
        response = await client.post(
            "/v1/clients", json={"department": "dvla", "roles": ["consumer"]}, headers=bearer(token)
        )
        assert "its own department (welfare)" in assert_problem(response, 403)

    @pytest.mark.parametrize(
        "body",
        [
            {},
            {"roles": []},
            {"roles": ["consumer"], "rate_per_second": 0},
            {"roles": ["consumer"], "rate_burst": 0},
            {"roles": ["consumer"], "surprise": True},
            {"roles": "consumer"},
            {"roles": ["consumer"], "name": "x" * 201},
        ],
    )
    async def test_bad_bodies_are_422(
        self, app: FastAPI, client: httpx.AsyncClient, session: AsyncSession, body: dict[str, Any]
    ) -> None:
        token = await token_for(app, session, "welfare", "admin")
        assert_problem(await client.post("/v1/clients", json=body, headers=bearer(token)), 422)

    async def test_an_unknown_role_is_422_naming_the_roles(
        self, app: FastAPI, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        token = await token_for(app, session, "welfare", "admin")
        response = await client.post("/v1/clients", json={"roles": ["reader"]}, headers=bearer(token))
        assert "Unknown role(s): reader" in assert_problem(response, 422)

    async def test_an_unknown_role_that_may_be_personal_data_is_not_named(
        self, app: FastAPI, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        token = await token_for(app, session, "welfare", "admin")
        roles = ["reader", "AB123456C", "ab123456c"]
        response = await client.post("/v1/clients", json={"roles": roles}, headers=bearer(token))
        detail = assert_problem(response, 422)
        assert "Unknown role(s): reader and 2 not shown." in detail
        assert "123456" not in response.text

    async def test_without_the_admin_role_is_403(
        self, app: FastAPI, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        token = await token_for(app, session, "welfare", "consumer", "data-owner")
        assert "admin:clients" in assert_problem(
            await client.post("/v1/clients", json={"roles": ["consumer"]}, headers=bearer(token)), 403
        )
        assert_problem(await client.get("/v1/clients", headers=bearer(token)), 403)

    async def test_without_a_token_is_401(self, client: httpx.AsyncClient) -> None:
        assert_problem(await client.get("/v1/clients"), 401)


class TestList:
    async def test_an_admin_sees_its_own_department_only(
        self, app: FastAPI, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        ours = await register(session, "welfare", "consumer")
        theirs = await register(session, "dvla", "consumer")
        token = await token_for(app, session, "welfare", "admin")
        listed = {
            c["client_id"] for c in (await client.get("/v1/clients", headers=bearer(token))).json()["items"]
        }
        assert ours.client_id in listed
        assert theirs.client_id not in listed


class TestDisable:
    async def test_a_disabled_client_is_refused_on_its_very_next_request(
        self, app: FastAPI, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        admin = await register(session, "welfare", "admin")
        assert admin.client_secret is not None
        admin_token = await fetch_token(app, admin.client_id, admin.client_secret)
        target = await register(session, "welfare", "consumer")
        assert target.client_secret is not None
        target_token = await fetch_token(app, target.client_id, target.client_secret)
        assert (await client.get("/v1/catalog", headers=bearer(target_token))).status_code == 200

        response = await client.post(f"/v1/clients/{target.client_id}/disable", headers=bearer(admin_token))
        assert response.status_code == 200, response.text
        assert response.json()["disabled_at"] is not None

        refused = await client.get("/v1/catalog", headers=bearer(target_token))
        assert assert_problem(refused, 401) == "The client is disabled or no longer registered."
        [entry] = await audited(session, "client-disable")
        assert entry["client_id"] == admin.client_id
        assert entry["reasons"][0]["reason"] == f"client {target.client_id} disabled"

        # Again: nothing changes, nothing more is recorded.
        again = await client.post(f"/v1/clients/{target.client_id}/disable", headers=bearer(admin_token))
        assert again.status_code == 200
        assert again.json()["disabled_at"] == response.json()["disabled_at"]
        assert len(await audited(session, "client-disable")) == 1

    async def test_another_departments_client_is_404_as_if_unknown(
        self, app: FastAPI, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        theirs = await register(session, "dvla", "consumer")
        token = await token_for(app, session, "welfare", "admin")
        other = await client.post(f"/v1/clients/{theirs.client_id}/disable", headers=bearer(token))
        unknown = await client.post("/v1/clients/tc_nobody/disable", headers=bearer(token))
        assert assert_problem(other, 404) == f"No client {theirs.client_id!r}."
        assert assert_problem(unknown, 404) == "No client 'tc_nobody'."
        assert await audited(session, "client-disable") == []

    @pytest.mark.parametrize("roles", [("auditor",), ("admin",), ("consumer", "admin")])
    async def test_a_client_only_an_operator_registers_is_403(
        self, app: FastAPI, client: httpx.AsyncClient, session: AsyncSession, roles: tuple[str, ...]
    ) -> None:
        target = await register(session, "welfare", *roles)
        token = await token_for(app, session, "welfare", "admin")
        refused = await client.post(f"/v1/clients/{target.client_id}/disable", headers=bearer(token))
        assert "Only an operator" in assert_problem(refused, 403)
        stored = await session.get(Client, target.client_id)
        assert stored is not None
        await session.refresh(stored)
        assert stored.disabled_at is None
        assert await audited(session, "client-disable") == []

    async def test_an_overlong_id_is_422(
        self, app: FastAPI, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        token = await token_for(app, session, "welfare", "admin")
        assert_problem(await client.post(f"/v1/clients/{'x' * 65}/disable", headers=bearer(token)), 422)

    @pytest.mark.parametrize("client_id", ["%00", "tc_%00x", "tc_%C3%A9", "tc%20x"])
    async def test_an_id_no_client_can_have_is_422(
        self, app: FastAPI, client: httpx.AsyncClient, session: AsyncSession, client_id: str
    ) -> None:
        token = await token_for(app, session, "welfare", "admin")
        assert_problem(await client.post(f"/v1/clients/{client_id}/disable", headers=bearer(token)), 422)
