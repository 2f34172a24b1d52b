"""POST, GET and DELETE /v1/subscriptions: who may subscribe, what is stored, what is shown."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from service.events.models import Subscription
from service.events.secrets import SecretBox, SecretUndecryptable
from service.events.service import EventsRuntime
from tests.events.conftest import ListAuditSink
from tests.fixtures.auth import act_as

PROBLEM = "application/problem+json"


def _assert_problem(response: httpx.Response, status: int, slug: str) -> dict[str, object]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body: dict[str, object] = response.json()
    assert body["status"] == status
    assert str(body["type"]).endswith("/" + slug)
    return body


class TestCreateSubscription:
    async def test_pull_subscription_needs_no_secret(
        self, events_app: FastAPI, api: httpx.AsyncClient, audit_sink: ListAuditSink
    ) -> None:
        act_as(events_app, "welfare", "consumer")
        response = await api.post(
            "/v1/subscriptions",
            json={"fields": ["address", "date_of_death"], "purpose": "benefit-eligibility"},
        )
        assert response.status_code == 201, response.text
        body = response.json()
        assert body["department"] == "welfare"
        assert body["fields"] == ["address", "date_of_death"]
        assert body["purpose"] == "benefit-eligibility"
        assert body["webhook_url"] is None
        assert body["secret"] is None
        assert body["status"] == "active"
        [entry] = audit_sink.of("subscribe")
        assert entry["decision"] == "permit"
        assert entry["department"] == "welfare"
        assert entry["fields_released"] == ["address", "date_of_death"]
        assert entry["owners"] == ["register"]
        assert entry["purpose"] == "benefit-eligibility"
        assert entry["legal_basis"] == [
            "Social Security Administration Act 1992, s.122",
            "Social Security Administration Act 1992, s.124",
        ]
        assert {(r["field"], r["agreement"]) for r in entry["reasons"]} == {
            ("address", "addresses-to-welfare"),
            ("date_of_death", "deaths-to-welfare"),
        }

    async def test_webhook_secret_is_shown_once_and_stored_encrypted(
        self,
        events_app: FastAPI,
        api: httpx.AsyncClient,
        runtime: EventsRuntime,
        events_engine: AsyncEngine,
    ) -> None:
        act_as(events_app, "dvla", "consumer")
        response = await api.post(
            "/v1/subscriptions",
            json={
                "fields": ["date_of_death"],
                "purpose": "licence-administration",
                "webhook_url": "http://127.0.0.1:9/hooks",
            },
        )
        assert response.status_code == 201, response.text
        created = response.json()
        secret = created["secret"]
        assert secret.startswith("whsec_")
        async with events_engine.connect() as conn:
            stored = (
                await conn.execute(
                    select(Subscription.secret_ciphertext).where(Subscription.id == created["id"])
                )
            ).scalar_one()
        assert stored is not None
        assert secret.encode() not in stored
        assert secret.removeprefix("whsec_").encode() not in stored
        assert runtime.secret_box.open(stored, created["id"]) == secret
        # Under another root key the stored secret is useless.
        assert "key hidden" in repr(runtime.secret_box)
        with pytest.raises(SecretUndecryptable):
            SecretBox(b"\x01" * 32).open(stored, created["id"])
        # Nor does it decrypt as another subscription's.
        with pytest.raises(SecretUndecryptable):
            runtime.secret_box.open(stored, "another-subscription")
        shown = (await api.get(f"/v1/subscriptions/{created['id']}")).json()
        assert "secret" not in shown
        listed = (await api.get("/v1/subscriptions")).json()
        assert all("secret" not in item for item in listed["items"])

    async def test_refused_without_subscribe_agreement_for_every_field(
        self, events_app: FastAPI, api: httpx.AsyncClient, audit_sink: ListAuditSink
    ) -> None:
        act_as(events_app, "welfare", "consumer")
        response = await api.post(
            "/v1/subscriptions", json={"fields": ["address", "tax_code"], "purpose": "benefit-eligibility"}
        )
        body = _assert_problem(response, 403, "subscribe-not-permitted")
        assert "tax_code" in str(body["detail"])
        assert "address," not in str(body["detail"])
        [entry] = audit_sink.of("subscribe")
        assert entry["decision"] == "partial"
        assert entry["status"] == 403
        assert (await api.get("/v1/subscriptions")).json()["items"] == []

    async def test_refused_for_another_purpose(self, events_app: FastAPI, api: httpx.AsyncClient) -> None:
        act_as(events_app, "welfare", "consumer")
        response = await api.post(
            "/v1/subscriptions", json={"fields": ["address"], "purpose": "fraud-investigation"}
        )
        _assert_problem(response, 403, "subscribe-not-permitted")

    async def test_unknown_field_and_purpose_are_422(
        self, events_app: FastAPI, api: httpx.AsyncClient
    ) -> None:
        act_as(events_app, "welfare", "consumer")
        response = await api.post(
            "/v1/subscriptions", json={"fields": ["address", "shoe_size"], "purpose": "gossip"}
        )
        body = _assert_problem(response, 422, "invalid-subscription")
        assert body["errors"] == [
            {"loc": ["body", "fields", 1], "msg": "unknown field"},
            {"loc": ["body", "purpose"], "msg": "unknown purpose"},
        ]
        assert "shoe_size" not in response.text
        assert "gossip" not in response.text

    async def test_malformed_body_is_422(self, events_app: FastAPI, api: httpx.AsyncClient) -> None:
        act_as(events_app, "welfare", "consumer")
        response = await api.post(
            "/v1/subscriptions", json={"fields": [], "purpose": "benefit-eligibility", "x": 1}
        )
        _assert_problem(response, 422, "validation-failed")
        errors = response.json()["errors"]
        locs = [tuple(e["loc"]) for e in errors]
        assert ("body", "fields") in locs
        assert ("body", "x") in locs

    async def test_needs_the_subscribe_scope(self, events_app: FastAPI, api: httpx.AsyncClient) -> None:
        act_as(events_app, "register", "writer")
        response = await api.post(
            "/v1/subscriptions", json={"fields": ["address"], "purpose": "civil-registration"}
        )
        body = _assert_problem(response, 403, "forbidden")
        assert "events:subscribe" in str(body["detail"])

    async def test_needs_authentication(self, api: httpx.AsyncClient) -> None:
        response = await api.get("/v1/subscriptions")
        _assert_problem(response, 401, "unauthenticated")


class TestReadAndDeleteSubscriptions:
    async def _make(self, api: httpx.AsyncClient, fields: list[str], purpose: str) -> str:
        response = await api.post("/v1/subscriptions", json={"fields": fields, "purpose": purpose})
        assert response.status_code == 201, response.text
        subscription_id: str = response.json()["id"]
        return subscription_id

    async def test_lists_only_own_department_with_a_cursor(
        self, events_app: FastAPI, api: httpx.AsyncClient
    ) -> None:
        act_as(events_app, "welfare", "consumer")
        mine = [
            await self._make(api, [f], "benefit-eligibility")
            for f in ("address", "date_of_death", "given_name")
        ]
        act_as(events_app, "dvla", "consumer")
        theirs = await self._make(api, ["date_of_death"], "licence-administration")
        act_as(events_app, "welfare", "consumer")
        first = (await api.get("/v1/subscriptions", params={"limit": 2})).json()
        assert len(first["items"]) == 2
        assert first["next_cursor"]
        second = (
            await api.get("/v1/subscriptions", params={"limit": 2, "cursor": first["next_cursor"]})
        ).json()
        assert second["next_cursor"] is None
        seen = [item["id"] for item in first["items"] + second["items"]]
        assert sorted(seen) == sorted(mine)
        assert theirs not in seen

    async def test_another_departments_subscription_is_404(
        self, events_app: FastAPI, api: httpx.AsyncClient
    ) -> None:
        act_as(events_app, "dvla", "consumer")
        theirs = await self._make(api, ["date_of_death"], "licence-administration")
        assert (await api.get(f"/v1/subscriptions/{theirs}")).status_code == 200
        act_as(events_app, "welfare", "consumer")
        _assert_problem(await api.get(f"/v1/subscriptions/{theirs}"), 404, "subscription-not-found")
        _assert_problem(await api.delete(f"/v1/subscriptions/{theirs}"), 404, "subscription-not-found")
        _assert_problem(
            await api.get(f"/v1/subscriptions/{theirs}/deliveries"), 404, "subscription-not-found"
        )
        _assert_problem(
            await api.post(f"/v1/subscriptions/{theirs}/redeliver"), 404, "subscription-not-found"
        )
        act_as(events_app, "dvla", "consumer")
        assert (await api.get(f"/v1/subscriptions/{theirs}")).status_code == 200

    async def test_delete_ends_it(self, events_app: FastAPI, api: httpx.AsyncClient) -> None:
        act_as(events_app, "welfare", "consumer")
        subscription_id = await self._make(api, ["address"], "benefit-eligibility")
        response = await api.delete(f"/v1/subscriptions/{subscription_id}")
        assert response.status_code == 204
        assert response.content == b""
        _assert_problem(await api.get(f"/v1/subscriptions/{subscription_id}"), 404, "subscription-not-found")
        _assert_problem(
            await api.delete(f"/v1/subscriptions/{subscription_id}"), 404, "subscription-not-found"
        )
        assert (await api.get("/v1/subscriptions")).json() == {"items": [], "next_cursor": None}

    async def test_a_subscription_is_not_made_while_the_audit_is_down(
        self, events_app: FastAPI, api: httpx.AsyncClient, audit_sink: ListAuditSink
    ) -> None:
        act_as(events_app, "welfare", "consumer")
        audit_sink.failing = True
        refused = await api.post(
            "/v1/subscriptions", json={"fields": ["address"], "purpose": "benefit-eligibility"}
        )
        _assert_problem(refused, 503, "unavailable")
        assert (await api.get("/v1/subscriptions")).json() == {"items": [], "next_cursor": None}
        assert audit_sink.of("subscribe") == []

    async def test_a_deletion_is_audited_with_it_and_refused_while_the_audit_is_down(
        self, events_app: FastAPI, api: httpx.AsyncClient, audit_sink: ListAuditSink
    ) -> None:
        act_as(events_app, "welfare", "consumer")
        subscription_id = await self._make(api, ["address"], "benefit-eligibility")
        audit_sink.failing = True
        _assert_problem(await api.delete(f"/v1/subscriptions/{subscription_id}"), 503, "unavailable")
        assert (await api.get(f"/v1/subscriptions/{subscription_id}")).json()["status"] == "active"
        assert audit_sink.of("subscription-change") == []
        audit_sink.failing = False
        assert (await api.delete(f"/v1/subscriptions/{subscription_id}")).status_code == 204
        [entry] = audit_sink.of("subscription-change")
        assert (entry["department"], entry["fields_requested"], entry["owners"]) == (
            "welfare",
            ["address"],
            ["register"],
        )
        assert entry["reasons"][0]["reason"] == f"subscription {subscription_id} deleted"
        # One already deleted: 404, and the refused attempt is accounted for too.
        _assert_problem(
            await api.delete(f"/v1/subscriptions/{subscription_id}"), 404, "subscription-not-found"
        )
        _deleted, refused = audit_sink.of("subscription-change")
        assert (refused["decision"], refused["status"]) == ("deny", 404)

    async def test_bad_list_cursor_is_422(self, events_app: FastAPI, api: httpx.AsyncClient) -> None:
        act_as(events_app, "welfare", "consumer")
        for cursor in ("%%%", "bm90LWEtY3Vyc29y"):
            body = _assert_problem(
                await api.get("/v1/subscriptions", params={"cursor": cursor}), 422, "invalid-cursor"
            )
            assert body["errors"] == [{"loc": ["query", "cursor"], "msg": "invalid cursor"}]


class TestRefusedChangesAreAudited:
    """A change refused because the subscription is not the caller's department's (another
    department's, an unknown or a deleted one) is audited as refused, as a refused read or
    a refused case closing is; the answer and the entry are the same whichever it was, so
    neither tells one department of another's subscriptions."""

    async def _theirs(self, events_app: FastAPI, api: httpx.AsyncClient) -> str:
        act_as(events_app, "dvla", "consumer")
        response = await api.post(
            "/v1/subscriptions", json={"fields": ["date_of_death"], "purpose": "licence-administration"}
        )
        assert response.status_code == 201, response.text
        subscription_id: str = response.json()["id"]
        return subscription_id

    @staticmethod
    def _without_time(entry: dict[str, Any], subscription_id: str) -> dict[str, Any]:
        kept = {k: v for k, v in entry.items() if k not in ("time", "request_id")}
        kept["reasons"] = [
            {**r, "reason": r["reason"].replace(subscription_id, "ID")} for r in entry["reasons"]
        ]
        return kept

    async def test_another_departments_and_an_unknown_one_are_refused_alike_and_audited(
        self, events_app: FastAPI, api: httpx.AsyncClient, audit_sink: ListAuditSink
    ) -> None:
        theirs = await self._theirs(events_app, api)
        unknown = str(uuid.uuid4())
        act_as(events_app, "welfare", "consumer", client_id="welfare-cases")
        answers = [await api.delete(f"/v1/subscriptions/{asked}") for asked in (theirs, unknown)]
        bodies = [_assert_problem(answer, 404, "subscription-not-found") for answer in answers]
        assert bodies[0] == bodies[1]
        first, second = audit_sink.of("subscription-change")
        assert (first["client_id"], first["department"]) == ("welfare-cases", "welfare")
        assert (first["decision"], first["status"], first["citizen_id"]) == ("deny", 404, None)
        # Nothing of the other department's subscription: not its fields, owners or purpose.
        assert (first["fields_requested"], first["owners"], first["purpose"]) == ([], [], None)
        assert first["reasons"] == [
            {
                "field": "",
                "effect": "deny",
                "agreement": None,
                "version": None,
                "digest": None,
                "reason": f"subscription {theirs} not deleted: welfare has no such subscription",
                "held_for": None,
            }
        ]
        assert self._without_time(first, theirs) == self._without_time(second, unknown)
        # Its owner's subscription is untouched.
        act_as(events_app, "dvla", "consumer")
        assert (await api.get(f"/v1/subscriptions/{theirs}")).json()["status"] == "active"

    async def test_a_refusal_the_audit_cannot_record_is_503(
        self, events_app: FastAPI, api: httpx.AsyncClient, audit_sink: ListAuditSink
    ) -> None:
        theirs = await self._theirs(events_app, api)
        act_as(events_app, "welfare", "consumer")
        audit_sink.failing = True
        _assert_problem(await api.delete(f"/v1/subscriptions/{theirs}"), 503, "unavailable")
        assert audit_sink.of("subscription-change") == []

    @pytest.mark.parametrize("asked", ["not-a-subscription", "0" * 36, str(uuid.uuid4()).upper()])
    async def test_an_id_not_of_the_form_the_service_issues_is_422_and_not_audited(
        self, events_app: FastAPI, api: httpx.AsyncClient, audit_sink: ListAuditSink, asked: str
    ) -> None:
        act_as(events_app, "welfare", "consumer")
        for method, path in (
            ("DELETE", f"/v1/subscriptions/{asked}"),
            ("GET", f"/v1/subscriptions/{asked}"),
            ("GET", f"/v1/subscriptions/{asked}/deliveries"),
            ("POST", f"/v1/subscriptions/{asked}/redeliver"),
        ):
            body = _assert_problem(await api.request(method, path), 422, "validation-failed")
            errors: Any = body["errors"]
            assert [e["loc"] for e in errors] == [["path", "subscription_id"]], (method, body)
        assert audit_sink.entries == []
