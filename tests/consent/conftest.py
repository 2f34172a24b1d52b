"""Consent tests: the records API on the test's transaction (``records_env``) with two
more agreements, one consent-based and one objectable, and the builders they share."""

from __future__ import annotations

from typing import Any

import pytest

from tests.records.conftest import RecordsEnv, as_, committed_records_env, records_env

__all__ = [
    "CONSENTED",
    "OBJECTABLE",
    "ConsentWorld",
    "as_",
    "committed_records_env",
    "problem",
    "records_env",
]

PROBLEM = "https://tellonce.example/problems/"


def problem(response: Any, status: int, slug: str) -> dict[str, Any]:
    """The problem+json body of ``response``, asserted to have ``status`` and type ``slug``."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["type"] == PROBLEM + slug
    return body


# Welfare lets revenue read and verify benefit status, for tax administration, with the
# citizen's consent; the register lets revenue read given names unless the citizen objects.
CONSENTED: dict[str, Any] = {
    "id": "revenue-reads-benefits-with-consent",
    "consumer": "revenue",
    "fields": ["benefit_status"],
    "actions": ["read", "verify"],
    "purposes": ["tax-administration"],
    "legal_basis": "the citizen's consent",
    "basis": "consent",
}
OBJECTABLE: dict[str, Any] = {
    "id": "revenue-reads-names-unless-objected",
    "consumer": "revenue",
    "fields": ["given_name"],
    "actions": ["read"],
    "purposes": ["tax-administration"],
    "legal_basis": "Open register regulations, reg. 4",
    "basis": "objectable",
}
PORTAL = as_("portal", "citizen-portal")
REVENUE = as_("revenue", "consumer")


class ConsentWorld:
    """The API with both agreements in force and one registered citizen."""

    def __init__(self, env: RecordsEnv, citizen_id: str) -> None:
        self.env = env
        self.client = env.client
        self.citizen_id = citizen_id

    async def read(self, fields: str) -> Any:
        return await self.client.get(
            f"/v1/citizens/{self.citizen_id}",
            params={"fields": fields, "purpose": "tax-administration"},
            headers=REVENUE,
        )

    async def consent(self, **body: Any) -> Any:
        return await self.client.post(
            f"/v1/citizens/{self.citizen_id}/consents",
            json={"agreement": CONSENTED["id"], **body},
            headers=PORTAL,
        )

    async def set_status(self, consent_id: str, status: str) -> Any:
        return await self.client.patch(
            f"/v1/citizens/{self.citizen_id}/consents/{consent_id}", json={"status": status}, headers=PORTAL
        )


async def _world(env: RecordsEnv) -> ConsentWorld:
    for owner, agreement in (("welfare", CONSENTED), ("register", OBJECTABLE)):
        created = await env.client.post(
            "/v1/policies", json={**agreement, "reason": "consent tests"}, headers=as_(owner, "data-owner")
        )
        assert created.status_code == 201, created.text
    citizen_id, _ = await env.register(given_name="Ada", address="1 High Street")
    written = await env.client.patch(
        f"/v1/citizens/{citizen_id}/fields",
        json={"fields": {"benefit_status": "awarded"}, "reason": "claim"},
        headers=as_("welfare", "writer"),
    )
    assert written.status_code == 200, written.text
    return ConsentWorld(env, citizen_id)


@pytest.fixture
async def world(records_env: RecordsEnv) -> ConsentWorld:
    return await _world(records_env)


@pytest.fixture
async def committed_world(committed_records_env: RecordsEnv) -> ConsentWorld:
    """The same world as a server runs it: each request its own committed transaction, so
    requests sent together really run at the same time."""
    return await _world(committed_records_env)
