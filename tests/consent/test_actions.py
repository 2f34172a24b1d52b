"""A consent covers the actions its terms name: the agreement's actions when the citizen
consented. An owner who later widens the agreement to another action releases nothing
more under the old consent, on every read path."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession

from service.consent.models import Consent
from tests.consent.conftest import CONSENTED, PORTAL, REVENUE, ConsentWorld, as_, problem

OWNER = as_("welfare", "data-owner")
WIDER = ["history", "read", "verify"]


def signed_claims(signature: str) -> dict[str, Any]:
    payload = signature.split(".")[1]
    claims: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return claims


async def set_actions(world: ConsentWorld, actions: list[str], version: int) -> None:
    """The owner replaces the consent-based agreement with one naming ``actions``."""
    replaced = await world.client.put(
        f"/v1/policies/{CONSENTED['id']}",
        json={**CONSENTED, "actions": actions, "reason": f"actions {actions}"},
        headers={**OWNER, "If-Match": f'"{version}"'},
    )
    assert replaced.status_code == 200, replaced.text


async def history(world: ConsentWorld) -> Any:
    return await world.client.get(
        f"/v1/citizens/{world.citizen_id}/fields/benefit_status/history",
        params={"purpose": "tax-administration"},
        headers=REVENUE,
    )


async def batch_get(world: ConsentWorld) -> Any:
    return await world.client.post(
        "/v1/citizens/batch-get",
        json={"ids": [world.citizen_id], "fields": ["benefit_status"], "purpose": "tax-administration"},
        headers=REVENUE,
    )


async def explain(world: ConsentWorld, action: str) -> dict[str, Any]:
    explained = await world.client.post(
        "/v1/decisions/explain",
        json={
            "consumer": "revenue",
            "action": action,
            "fields": ["benefit_status"],
            "purpose": "tax-administration",
            "citizen_id": world.citizen_id,
        },
        headers=OWNER,
    )
    assert explained.status_code == 200, explained.text
    decision: dict[str, Any] = explained.json()["decisions"]["benefit_status"]
    return decision


async def widened_after_consent(world: ConsentWorld) -> dict[str, Any]:
    """The reproduction: the agreement lets revenue only verify; the citizen consents; the
    owner then widens it to read and history. Returns the consent."""
    await set_actions(world, ["verify"], 1)
    given = await world.consent()
    assert given.status_code == 201, given.text
    # No agreement lets revenue read it yet, nor read any history (so the citizen is not
    # known to it there).
    problem(await world.read("benefit_status"), 403, "not-permitted")
    problem(await history(world), 404, "citizen-not-found")
    await set_actions(world, WIDER, 2)
    consent: dict[str, Any] = given.json()
    return consent


async def assert_old_consent_covers_only_verify(world: ConsentWorld) -> None:
    problem(await world.read("benefit_status"), 403, "consent-required")
    problem(await history(world), 403, "consent-required")
    batch = await batch_get(world)
    assert batch.status_code != 200 or "awarded" not in batch.text, batch.text
    read = await explain(world, "read")
    assert (read["effect"], read["reason"]) == ("deny", "consent-required")
    [miss] = [m for m in read["near_misses"] if m["agreement"] == CONSENTED["id"]]
    assert miss["reason"] == (
        f"consent-required: the citizen's consent to agreement {CONSENTED['id']} was given to terms "
        "that do not cover read"
    )
    assert (await explain(world, "verify"))["effect"] == "permit"


class TestConsentActions:
    async def test_a_widened_agreement_releases_nothing_more_under_the_old_consent(
        self, world: ConsentWorld
    ) -> None:
        consent = await widened_after_consent(world)
        assert consent["actions"] == ["verify"]
        await assert_old_consent_covers_only_verify(world)

    async def test_the_same_on_the_raw_driver_store(self, committed_world: ConsentWorld) -> None:
        """As a server runs it: the read path asks the raw driver for the consents."""
        await widened_after_consent(committed_world)
        await assert_old_consent_covers_only_verify(committed_world)

    async def test_a_new_consent_to_the_wider_terms_covers_them(self, world: ConsentWorld) -> None:
        consent = await widened_after_consent(world)
        revoked = await world.set_status(consent["id"], "revoked")
        assert revoked.status_code == 200, revoked.text
        again = await world.consent()
        assert again.status_code == 201, again.text
        assert again.json()["actions"] == WIDER
        read = await world.read("benefit_status")
        assert read.status_code == 200, read.text
        assert read.json()["fields"]["benefit_status"]["value"] == "awarded"
        assert (await history(world)).status_code == 200
        batch = await batch_get(world)
        assert batch.status_code == 200, batch.text
        assert "awarded" in batch.text

    async def test_the_signed_terms_and_the_list_carry_the_actions(self, world: ConsentWorld) -> None:
        given = (await world.consent()).json()
        assert given["actions"] == CONSENTED["actions"]
        assert signed_claims(given["signature"])["actions"] == CONSENTED["actions"]
        listed = await world.client.get(f"/v1/citizens/{world.citizen_id}/consents", headers=PORTAL)
        assert [c["actions"] for c in listed.json()["items"]] == [CONSENTED["actions"]]

    @pytest.mark.parametrize("stored", [None, []])
    async def test_a_consent_stored_without_actions_covers_none(
        self, world: ConsentWorld, session: AsyncSession, stored: list[str] | None
    ) -> None:
        """Default deny: a consent whose stored terms name no action releases nothing."""
        consent = (await world.consent()).json()
        assert (await world.read("benefit_status")).status_code == 200
        # The API runs on the test's transaction (``records_env``), so this is what it reads.
        conn = await session.connection()
        await conn.execute(update(Consent).where(Consent.id == consent["id"]).values(actions=stored))
        problem(await world.read("benefit_status"), 403, "consent-required")
        listed = await world.client.get(f"/v1/citizens/{world.citizen_id}/consents", headers=PORTAL)
        assert [c["actions"] for c in listed.json()["items"]] == [[]]
