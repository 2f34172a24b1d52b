"""The consumer department is told of its agreements' consent changes: ``consent.changed``
events through the outbox, read here through the feed, with names and a status only."""

from __future__ import annotations

import json

from tests.consent.conftest import CONSENTED, PORTAL, REVENUE
from tests.records.conftest import RecordsEnv, as_, committed_records_env

__all__ = ["committed_records_env"]


async def _feed(
    env: RecordsEnv, headers: dict[str, str], after: str | None
) -> tuple[list[dict[str, object]], str]:
    params = {"after": after} if after else {}
    page = await env.client.get("/v1/events", params=params, headers=headers)
    assert page.status_code == 200, page.text
    body = page.json()
    return body["items"], body["cursor"]


class TestConsentChanged:
    async def test_the_consumer_is_told_each_change_without_values(
        self, committed_records_env: RecordsEnv
    ) -> None:
        env = committed_records_env
        created = await env.client.post(
            "/v1/policies",
            json={**CONSENTED, "reason": "consent events"},
            headers=as_("welfare", "data-owner"),
        )
        assert created.status_code == 201, created.text
        for department in ("revenue", "welfare"):
            subscribed = await env.client.post(
                "/v1/subscriptions", json={"type": "consent.changed"}, headers=as_(department, "consumer")
            )
            assert subscribed.status_code == 201, subscribed.text
            assert subscribed.json()["type"] == "consent.changed"
        citizen, _ = await env.register(given_name="Ada")
        written = await env.client.patch(
            f"/v1/citizens/{citizen}/fields",
            json={"fields": {"benefit_status": "awarded"}, "reason": "claim"},
            headers=as_("welfare", "writer"),
        )
        assert written.status_code == 200, written.text
        items, cursor = await _feed(env, REVENUE, None)
        assert items == []

        consent = await env.client.post(
            f"/v1/citizens/{citizen}/consents", json={"agreement": CONSENTED["id"]}, headers=PORTAL
        )
        assert consent.status_code == 201, consent.text
        consent_id = consent.json()["id"]
        paused = await env.client.patch(
            f"/v1/citizens/{citizen}/consents/{consent_id}", json={"status": "paused"}, headers=PORTAL
        )
        assert paused.status_code == 200, paused.text

        items, cursor = await _feed(env, REVENUE, cursor)
        assert [(i["type"], i["status"]) for i in items] == [
            ("consent.changed", "active"),
            ("consent.changed", "paused"),
        ]
        first = items[0]
        assert {k: first[k] for k in ("citizen_id", "consent_id", "agreement", "purpose", "fields")} == {
            "citizen_id": citizen,
            "consent_id": consent_id,
            "agreement": CONSENTED["id"],
            "purpose": "tax-administration",
            "fields": ["benefit_status"],
        }
        # Names and a status: never the citizen's data.
        told = json.dumps(items)
        assert "awarded" not in told
        assert "Ada" not in told
        # Welfare owns the field but is not the agreement's consumer: told nothing.
        welfare_items, _ = await _feed(env, as_("welfare", "consumer"), None)
        assert welfare_items == []

    async def test_a_consent_subscription_takes_no_fields(self, committed_records_env: RecordsEnv) -> None:
        refused = await committed_records_env.client.post(
            "/v1/subscriptions",
            json={"type": "consent.changed", "fields": ["benefit_status"]},
            headers=REVENUE,
        )
        assert refused.status_code == 422
        assert "names no fields" in refused.text
