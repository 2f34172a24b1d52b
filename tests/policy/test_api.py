"""The policy API: owner isolation, versions, If-Match, revocation, explain and simulate."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from service.audit.models import AuditEntryRow
from service.auth.dependencies import get_principal, optional_principal
from service.policy import repository
from service.policy import service as policy_service
from service.policy.epoch import bump_epoch
from service.policy.errors import AgreementExists, StaleAgreement
from service.policy.models import AgreementVersion
from service.policy.schemas import AgreementSpec
from service.policy.simulate import ListSource, RecordedRequest
from tests.fixtures.auth import act_as

pytestmark = pytest.mark.usefixtures("policies_loaded")

NEW_AGREEMENT: dict[str, Any] = {
    "id": "points-for-revenue",
    "consumer": "revenue",
    "fields": ["points"],
    "actions": ["read"],
    "purposes": ["tax-administration"],
    "legal_basis": "Finance Act 2008, Sch. 36",
}

# A delayed-disclosure agreement of the register's: revenue's only one.
DELAYED: dict[str, Any] = {
    "id": "fraud-names-for-revenue",
    "consumer": "revenue",
    "fields": ["given_name"],
    "actions": ["read"],
    "purposes": ["fraud-investigation"],
    "legal_basis": "Test Act s.20",
    "disclosure": "after-case-closed",
    "max_delay": "P30D",
}


def assert_problem(response: httpx.Response, status: int, slug: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["type"].endswith("/" + slug)
    return body


async def explain(client: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    response = await client.post("/v1/decisions/explain", json=body)
    assert response.status_code == 200, response.text
    decisions: dict[str, Any] = response.json()["decisions"]
    return decisions


class TestReadAgreements:
    async def test_owner_lists_only_its_own(self, app: FastAPI, client: httpx.AsyncClient) -> None:
        act_as(app, "dvla", "data-owner")
        response = await client.get("/v1/policies")
        assert response.status_code == 200
        body = response.json()
        assert [a["id"] for a in body["items"]] == [
            "licence-for-revenue",
            "licence-status-for-welfare",
            "no-points-for-welfare",
        ]
        assert body["next_cursor"] is None
        first = body["items"][0]
        assert first["owner"] == "dvla"
        assert first["version"] == 1
        assert first["status"] == "active"
        assert first["valid_until"] == "2020-01-01"
        assert first["author"] == "tests"

    async def test_auditor_reads_all_with_cursor_paging(
        self, app: FastAPI, client: httpx.AsyncClient
    ) -> None:
        act_as(app, "audit-office", "auditor")
        seen: list[str] = []
        cursor: str | None = None
        while True:
            params = {"limit": "3", **({"cursor": cursor} if cursor else {})}
            body = (await client.get("/v1/policies", params=params)).json()
            seen.extend(a["id"] for a in body["items"])
            cursor = body["next_cursor"]
            if cursor is None:
                break
        assert len(seen) == 8
        assert seen == sorted(seen)

    async def test_another_owners_agreement_is_404(self, app: FastAPI, client: httpx.AsyncClient) -> None:
        act_as(app, "revenue", "data-owner")
        body = assert_problem(
            await client.get("/v1/policies/licence-for-revenue"), 404, "agreement-not-found"
        )
        assert body["detail"] == "No agreement 'licence-for-revenue'."
        assert_problem(
            await client.get("/v1/policies/licence-for-revenue/versions"), 404, "agreement-not-found"
        )
        assert_problem(await client.delete("/v1/policies/licence-for-revenue"), 404, "agreement-not-found")
        response = await client.put(
            "/v1/policies/licence-for-revenue", json=NEW_AGREEMENT, headers={"If-Match": '"1"'}
        )
        assert_problem(response, 404, "agreement-not-found")

    async def test_get_has_etag(self, app: FastAPI, client: httpx.AsyncClient) -> None:
        act_as(app, "audit-office", "auditor")
        response = await client.get("/v1/policies/tax-code-for-fraud")
        assert response.status_code == 200
        assert response.headers["etag"] == '"1"'
        assert response.json()["require_case_ref"] is True

    async def test_scopes_are_required(self, app: FastAPI, client: httpx.AsyncClient) -> None:
        act_as(app, "welfare", "consumer")
        assert_problem(await client.get("/v1/policies"), 403, "forbidden")
        act_as(app, "audit-office", "auditor")
        assert_problem(await client.post("/v1/policies", json=NEW_AGREEMENT), 403, "forbidden")

    async def test_bad_cursor_is_422(self, app: FastAPI, client: httpx.AsyncClient) -> None:
        act_as(app, "dvla", "data-owner")
        body = assert_problem(
            await client.get("/v1/policies/licence-for-revenue/versions?cursor=!!"), 422, "invalid-cursor"
        )
        assert body["errors"] == [{"loc": ["query", "cursor"], "msg": "invalid cursor"}]
        assert_problem(await client.get("/v1/policies?cursor=!!"), 422, "invalid-cursor")


class TestWriteAgreements:
    async def test_create_then_409(self, app: FastAPI, client: httpx.AsyncClient) -> None:
        act_as(app, "dvla", "data-owner")
        response = await client.post("/v1/policies", json={**NEW_AGREEMENT, "reason": "new pilot"})
        assert response.status_code == 201, response.text
        assert response.headers["etag"] == '"1"'
        body = response.json()
        assert body["owner"] == "dvla"
        assert body["reason"] == "new pilot"
        assert body["author"] == "dvla-data-owner"
        again = await client.post("/v1/policies", json=NEW_AGREEMENT)
        assert_problem(again, 409, "agreement-exists")
        taken = await client.post("/v1/policies", json={**NEW_AGREEMENT, "id": "tax-code-for-fraud"})
        assert_problem(taken, 409, "agreement-exists")

    async def test_an_id_another_route_names_is_422(self, app: FastAPI, client: httpx.AsyncClient) -> None:
        """``/v1/policies/simulate`` is the simulate route: an agreement of that id could be
        neither read, replaced nor revoked."""
        act_as(app, "dvla", "data-owner")
        response = await client.post("/v1/policies", json={**NEW_AGREEMENT, "id": "simulate"})
        body = assert_problem(response, 422, "validation-failed")
        assert body["errors"] == [
            {
                "loc": ["body", "id"],
                "msg": "the id 'simulate' is reserved (/v1/policies/simulate is another route)",
            }
        ]

    @pytest.mark.parametrize(
        ("change", "loc"),
        [
            ({"legal_basis": "Finance Act\x00 2008"}, ["body", "legal_basis"]),
            ({"when": 'citizen.status == "active\x00"'}, ["body", "when"]),
            ({"reason": "new\x00pilot"}, ["body", "reason"]),
        ],
    )
    async def test_a_nul_in_its_text_is_422_on_every_database(
        self, app: FastAPI, client: httpx.AsyncClient, change: dict[str, str], loc: list[str]
    ) -> None:
        """PostgreSQL cannot keep a NUL in text and SQLite would: the agreement is refused
        alike on both, before the store is asked."""
        act_as(app, "dvla", "data-owner")
        response = await client.post("/v1/policies", json={**NEW_AGREEMENT, **change})
        body = assert_problem(response, 422, "validation-failed")
        assert {"loc": loc, "msg": "must not contain a NUL character"} in body["errors"]
        assert_problem(await client.get("/v1/policies/points-for-revenue"), 404, "agreement-not-found")

    async def test_a_revoke_whose_reason_holds_a_nul_is_422_and_revokes_nothing(
        self, app: FastAPI, client: httpx.AsyncClient
    ) -> None:
        act_as(app, "dvla", "data-owner")
        path = "/v1/policies/licence-status-for-welfare"
        response = await client.delete(path, params={"reason": "ended\x00"})
        body = assert_problem(response, 422, "validation-failed")
        assert body["errors"] == [{"loc": ["query", "reason"], "msg": "must not contain a NUL character"}]
        assert (await client.get(path)).json()["status"] == "active"

    async def test_granting_another_owners_field_is_403(
        self, app: FastAPI, client: httpx.AsyncClient
    ) -> None:
        act_as(app, "dvla", "data-owner")
        response = await client.post("/v1/policies", json={**NEW_AGREEMENT, "fields": ["points", "tax_code"]})
        body = assert_problem(response, 403, "not-field-owner")
        assert body["detail"] == "dvla may grant only its own fields; this covers fields of revenue."

    async def test_invalid_agreement_is_422_with_every_error(
        self, app: FastAPI, client: httpx.AsyncClient
    ) -> None:
        act_as(app, "dvla", "data-owner")
        response = await client.post(
            "/v1/policies",
            json={**NEW_AGREEMENT, "consumer": "nobody", "purposes": ["gossip"], "when": "citizen.x =="},
        )
        body = assert_problem(response, 422, "validation-failed")
        assert [e["loc"] for e in body["errors"]] == [
            ["body", "consumer"],
            ["body", "purposes", 0],
            ["body", "when"],
        ]
        schema = await client.post("/v1/policies", json={**NEW_AGREEMENT, "actions": ["delete"]})
        assert_problem(schema, 422, "validation-failed")

    async def test_shape_and_catalog_problems_come_back_together_in_words(
        self, app: FastAPI, client: httpx.AsyncClient
    ) -> None:
        act_as(app, "dvla", "data-owner")
        body = {
            **NEW_AGREEMENT,
            "id": "Points For Revenue",  # the schema's pattern
            "actions": ["read", "delete"],  # the schema's list of actions
            "purposes": ["gossip"],  # the catalog's purposes
            "legal_basis": " ",  # the rule for permits
            "valid_until": "2027-02-30",  # not a date
            "colour": "blue",  # not part of an agreement
        }
        response = await client.post("/v1/policies", json=body)
        problem = assert_problem(response, 422, "validation-failed")
        assert [(e["loc"], e["msg"]) for e in problem["errors"]] == [
            (
                ["body", "id"],
                "the agreement id must be lower-case letters, digits and hyphens, starting with a letter",
            ),
            (
                ["body", "actions", 1],
                "'delete' is not an action; the actions are "
                "read, lookup, verify, history, subscribe, write, erase",
            ),
            (["body", "purposes", 0], "unknown purpose 'gossip'"),
            (["body", "legal_basis"], "a permit needs a legal basis"),
            (["body", "valid_until"], "the end date must be a real date, like 2027-01-31"),
            (
                ["body", "colour"],
                "an agreement has no part called 'colour'; its parts are id, consumer, fields, actions, "
                "purposes, legal_basis, valid_from, valid_until, when, require_case_ref, disclosure, "
                "max_delay, effect, basis, signature, "
                "verify, reason",
            ),
        ]
        assert all(set(e) == {"loc", "msg"} for e in problem["errors"])
        assert (await client.get("/v1/policies/points-for-revenue")).status_code == 404

    async def test_a_malformed_item_does_not_hide_the_others_catalog_problems(
        self, app: FastAPI, client: httpx.AsyncClient
    ) -> None:
        act_as(app, "dvla", "data-owner")
        body = {**NEW_AGREEMENT, "fields": ["Bad", "shoe_size"], "purposes": ["gossip", "Not A Purpose"]}
        response = await client.post("/v1/policies", json=body)
        problem = assert_problem(response, 422, "validation-failed")
        assert [(e["loc"], e["msg"]) for e in problem["errors"]] == [
            (["body", "fields", 0], "'Bad' is not a field name: lower-case letters, digits and underscores"),
            (["body", "fields", 1], "unknown field 'shoe_size'"),
            (
                ["body", "purposes", 1],
                "'Not A Purpose' is not a purpose id: lower-case letters, digits and hyphens",
            ),
            (["body", "purposes", 0], "unknown purpose 'gossip'"),
        ]

    @pytest.mark.parametrize("method", ["POST", "PUT"])
    async def test_independent_problems_come_back_in_one_422(
        self, app: FastAPI, client: httpx.AsyncClient, method: str
    ) -> None:
        """A forbid with a consent basis and a delayed disclosure, no fields, an action that
        is none, a start date in month 13, an unknown purpose and a malformed delay: each
        problem is reported at its loc in the one answer, the forbid's refusals with the rest."""
        act_as(app, "dvla", "data-owner")
        agreement_id = "points-for-revenue" if method == "POST" else "licence-for-revenue"
        body = {
            **NEW_AGREEMENT,
            "id": agreement_id,
            "fields": [],
            "actions": ["read", "delete"],
            "purposes": ["gossip"],
            "valid_from": "2027-13-01",
            "require_case_ref": True,
            "disclosure": "after-case-closed",
            "max_delay": "P1Y",
            "effect": "forbid",
            "basis": "consent",
        }
        if method == "POST":
            response = await client.post("/v1/policies", json=body)
        else:
            response = await client.put(
                f"/v1/policies/{agreement_id}", json=body, headers={"If-Match": '"1"'}
            )
        problem = assert_problem(response, 422, "validation-failed")
        assert [(e["loc"], e["msg"]) for e in problem["errors"]] == [
            (["body", "fields"], "an agreement needs at least one field"),
            (
                ["body", "actions", 1],
                "'delete' is not an action; the actions are "
                "read, lookup, verify, history, subscribe, write, erase",
            ),
            (["body", "purposes", 0], "unknown purpose 'gossip'"),
            (["body", "valid_from"], "the start date must be a real date, like 2027-01-31"),
            (["body", "require_case_ref"], "only a permit can require a case reference"),
            (["body", "disclosure"], "only a permit can delay disclosure"),
            (
                ["body", "max_delay"],
                "'P1Y' is not an ISO 8601 duration in weeks, days, hours, minutes or seconds (e.g. P365D)",
            ),
            (["body", "basis"], "only a permit can have basis consent"),
        ]

    async def test_a_bad_effect_hides_only_the_rules_that_read_it(
        self, app: FastAPI, client: httpx.AsyncClient
    ) -> None:
        """An effect that is none leaves the permit-only rules unjudged, and nothing else."""
        act_as(app, "dvla", "data-owner")
        body = {**NEW_AGREEMENT, "effect": "allow", "purposes": ["gossip"], "legal_basis": "Act\x00 2008"}
        response = await client.post("/v1/policies", json=body)
        problem = assert_problem(response, 422, "validation-failed")
        assert [(e["loc"], e["msg"]) for e in problem["errors"]] == [
            (["body", "purposes", 0], "unknown purpose 'gossip'"),
            (["body", "legal_basis"], "must not contain a NUL character"),
            (["body", "effect"], "the effect must be permit or forbid"),
        ]

    async def test_dates_that_passed_are_judged_as_dates_when_another_part_failed(
        self, app: FastAPI, client: httpx.AsyncClient
    ) -> None:
        act_as(app, "dvla", "data-owner")
        # A number is a date to the schema (seconds since 1970: 2027-01-01), text is too.
        dates = {"valid_from": 1798761600, "valid_until": "2027-06-01"}
        expected = [
            (
                ["body", "id"],
                "the agreement id must be lower-case letters, digits and hyphens, starting with a letter",
            )
        ]
        created = await client.post("/v1/policies", json={**NEW_AGREEMENT, "id": "BAD", **dates})
        problem = assert_problem(created, 422, "validation-failed")
        assert [(e["loc"], e["msg"]) for e in problem["errors"]] == expected
        replaced = await client.put(
            "/v1/policies/licence-for-revenue",
            json={**NEW_AGREEMENT, "id": "BAD", "fields": ["licence_status"], **dates},
            headers={"If-Match": '"1"'},
        )
        assert_problem(replaced, 422, "validation-failed")
        simulated = await client.post(
            "/v1/policies/simulate", json={"upsert": [{**NEW_AGREEMENT, "id": "BAD", **dates}]}
        )
        assert_problem(simulated, 422, "validation-failed")
        # And the order of the dates is still judged.
        backwards = {"valid_from": 1798761600, "valid_until": "2026-06-01", "effect": "allow"}
        response = await client.post("/v1/policies", json={**NEW_AGREEMENT, **backwards})
        problem = assert_problem(response, 422, "validation-failed")
        assert [e["loc"] for e in problem["errors"]] == [["body", "valid_until"], ["body", "effect"]]

    async def test_a_replacement_hears_every_problem_at_once(
        self, app: FastAPI, client: httpx.AsyncClient
    ) -> None:
        act_as(app, "dvla", "data-owner")
        path = "/v1/policies/licence-for-revenue"
        current = (await client.get(path)).json()
        body = {
            key: current[key] for key in ("consumer", "fields", "actions", "purposes") if key in current
        } | {"id": "another-id", "effect": "allow", "when": "citizen.status =="}
        response = await client.put(path, json=body, headers={"If-Match": '"1"'})
        problem = assert_problem(response, 422, "validation-failed")
        messages = {tuple(e["loc"]): e["msg"] for e in problem["errors"]}
        assert messages[("body", "id")] == "the id must be the agreement's own id, licence-for-revenue"
        assert messages[("body", "effect")] == "the effect must be permit or forbid"
        assert messages[("body", "when")].startswith("invalid condition")
        # The legal basis is judged as a permit's only once the effect is one.
        assert set(messages) == {("body", "id"), ("body", "effect"), ("body", "when")}

    async def test_put_needs_fresh_if_match(self, app: FastAPI, client: httpx.AsyncClient) -> None:
        act_as(app, "dvla", "data-owner")
        path = "/v1/policies/licence-for-revenue"
        update = {
            "id": "licence-for-revenue",
            "consumer": "revenue",
            "fields": ["licence_status"],
            "actions": ["read"],
            "purposes": ["tax-administration"],
            "legal_basis": "Finance Act 2008, Sch. 36",
            "valid_until": "2030-12-31",
            "reason": "renewed",
        }
        assert_problem(await client.put(path, json=update), 428, "if-match-required")
        # "*" names no version: a replacement must say which one it was made from.
        assert_problem(
            await client.put(path, json=update, headers={"If-Match": "*"}), 428, "if-match-required"
        )
        assert_problem(
            await client.put(path, json=update, headers={"If-Match": 'W/"1"'}), 412, "stale-agreement"
        )
        assert_problem(await client.put(path, json=update, headers={"If-Match": '"1'}), 400, "bad-request")
        assert_problem(
            await client.put(path, json=update, headers={"If-Match": '"7"'}), 412, "stale-agreement"
        )
        response = await client.put(path, json=update, headers={"If-Match": '"9", "1"'})
        assert response.status_code == 200, response.text
        assert response.headers["etag"] == '"2"'
        assert response.json()["valid_until"] == "2030-12-31"
        stale = await client.put(path, json=update, headers={"If-Match": '"1"'})
        assert_problem(stale, 412, "stale-agreement")
        mismatch = await client.put(path, json={**update, "id": "other"}, headers={"If-Match": '"2"'})
        assert_problem(mismatch, 422, "validation-failed")

    async def test_revoke_is_a_new_version_and_applies_at_once(
        self, app: FastAPI, client: httpx.AsyncClient
    ) -> None:
        act_as(app, "dvla", "data-owner")
        ask = {
            "consumer": "welfare",
            "action": "read",
            "fields": ["licence_status"],
            "purpose": "benefit-eligibility",
            "citizen_status": "active",
        }
        assert (await explain(client, **ask))["licence_status"]["effect"] == "permit"
        response = await client.delete("/v1/policies/licence-status-for-welfare", params={"reason": "ended"})
        assert response.status_code == 200, response.text
        body = response.json()
        assert (body["version"], body["status"], body["reason"]) == (2, "revoked", "ended")
        decision = (await explain(client, **ask))["licence_status"]
        assert decision["effect"] == "deny"
        assert decision["reason"] == "no agreement lets welfare read licence_status for benefit-eligibility"
        assert_problem(
            await client.delete("/v1/policies/licence-status-for-welfare"), 409, "agreement-revoked"
        )

        versions = (await client.get("/v1/policies/licence-status-for-welfare/versions")).json()
        assert [(v["version"], v["status"]) for v in versions["items"]] == [(1, "active"), (2, "revoked")]
        # Reinstating is a new version too.
        again = dict(versions["items"][0])
        for key in ("owner", "version", "status", "author", "reason", "created_at"):
            again.pop(key)
        response = await client.put(
            "/v1/policies/licence-status-for-welfare", json=again, headers={"If-Match": '"2"'}
        )
        assert response.json()["version"] == 3
        assert (await explain(client, **ask))["licence_status"]["effect"] == "permit"

    async def test_revoking_a_stale_version_is_412(self, app: FastAPI, client: httpx.AsyncClient) -> None:
        act_as(app, "dvla", "data-owner")
        path = "/v1/policies/licence-for-revenue"
        for if_match in ('"7"', '"not-a-version"', 'W/"1"', ""):
            refused = await client.delete(path, headers={"If-Match": if_match})
            assert_problem(refused, 412, "stale-agreement")
        assert_problem(await client.delete(path, headers={"If-Match": "not-a-version"}), 400, "bad-request")
        assert (await client.get(path)).json()["status"] == "active"
        revoked = await client.delete(path, headers={"If-Match": '"1"'})
        assert revoked.status_code == 200
        assert revoked.json()["status"] == "revoked"

    async def test_versions_page_with_cursor(self, app: FastAPI, client: httpx.AsyncClient) -> None:
        act_as(app, "dvla", "data-owner")
        await client.delete("/v1/policies/licence-for-revenue", headers={"If-Match": '"1"'})
        first = (await client.get("/v1/policies/licence-for-revenue/versions", params={"limit": 1})).json()
        assert [v["version"] for v in first["items"]] == [1]
        second = (
            await client.get(
                "/v1/policies/licence-for-revenue/versions",
                params={"limit": 1, "cursor": first["next_cursor"]},
            )
        ).json()
        assert [v["version"] for v in second["items"]] == [2]
        assert second["next_cursor"] is None


NUL_CURSORS = ("AA", "YQBi")


class TestWhatReachesTheStore:
    async def test_an_author_over_200_characters_is_cut_and_marked(
        self, app: FastAPI, client: httpx.AsyncClient
    ) -> None:
        # The longest client id and the longest X-On-Behalf-Of: 269 characters in all.
        client_id, officer = "tc_" + "x" * 61, "officer " + "7" * 192
        principal = dataclasses.replace(
            act_as(app, "dvla", "data-owner", client_id=client_id), on_behalf_of=officer
        )

        async def _principal() -> Any:
            return principal

        app.dependency_overrides[get_principal] = _principal
        app.dependency_overrides[optional_principal] = _principal
        digest = hashlib.sha256(officer.encode()).hexdigest()[:16]
        created = await client.post("/v1/policies", json=NEW_AGREEMENT)
        assert created.status_code == 201, created.text
        recorded = created.json()["author"]
        assert len(recorded) == 200
        assert recorded.startswith(f"{client_id} for officer 777")
        assert recorded.endswith(f"… (sha256 {digest})")
        path = "/v1/policies/points-for-revenue"
        replaced = await client.put(path, json=NEW_AGREEMENT, headers={"If-Match": '"1"'})
        assert replaced.status_code == 200, replaced.text
        revoked = await client.delete(path, headers={"If-Match": '"2"'})
        assert revoked.status_code == 200, revoked.text
        assert revoked.json()["author"] == recorded
        # One that fits is kept whole.
        principal = dataclasses.replace(principal, on_behalf_of="officer 4411")
        short = await client.post("/v1/policies", json={**NEW_AGREEMENT, "id": "points-for-revenue-2"})
        assert short.json()["author"] == f"{client_id} for officer 4411"

    @pytest.mark.parametrize("agreement_id", ["%00", "a%00b", "Licence-For-Revenue", "x" * 64])
    async def test_an_id_no_agreement_can_have_is_422(
        self, app: FastAPI, client: httpx.AsyncClient, agreement_id: str
    ) -> None:
        act_as(app, "dvla", "data-owner")
        path = f"/v1/policies/{agreement_id}"
        assert_problem(await client.get(path), 422, "validation-failed")
        assert_problem(await client.get(path + "/versions"), 422, "validation-failed")
        assert_problem(await client.delete(path, headers={"If-Match": '"1"'}), 422, "validation-failed")
        put = await client.put(path, json=NEW_AGREEMENT, headers={"If-Match": '"1"'})
        assert_problem(put, 422, "validation-failed")

    @pytest.mark.parametrize(
        "cursor",
        [
            *NUL_CURSORS,  # a NUL; a, NUL, b
            "OTk5OTk5OTk5OTk",  # 99999999999: no version has more than 9 digits
            "MDAwMDAwMDAwMQ",  # 0000000001: 10 digits
        ],
    )
    async def test_a_forged_cursor_is_422(self, app: FastAPI, client: httpx.AsyncClient, cursor: str) -> None:
        act_as(app, "dvla", "data-owner")
        if cursor in NUL_CURSORS:  # the list's cursor is an agreement id: digits are text to it
            listed = await client.get("/v1/policies", params={"cursor": cursor})
            assert_problem(listed, 422, "invalid-cursor")
        versions = await client.get("/v1/policies/licence-for-revenue/versions", params={"cursor": cursor})
        assert_problem(versions, 422, "invalid-cursor")


class TestConcurrentChanges:
    """Two changes made from the same read: the second to write is refused as stale (412)
    or as a duplicate (409), never a 500 from the store's unique indexes."""

    async def test_a_change_from_a_version_another_change_retired_is_412(
        self, app: FastAPI, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        # Read as the first of two concurrent changes would have read it ...
        row = await repository.current_version(session, "licence-for-revenue")
        assert row is not None
        read_version = row.version
        # ... then another change commits first ...
        act_as(app, "dvla", "data-owner")
        path = "/v1/policies/licence-for-revenue"
        revoked = await client.delete(path, headers={"If-Match": f'"{read_version}"'})
        assert revoked.status_code == 200, revoked.text
        # ... and this one writes from the version it read.
        with pytest.raises(StaleAgreement):
            await policy_service.revoke(session, row, author="t", reason="second")
        versions = (await client.get(path + "/versions")).json()["items"]
        assert [(v["version"], v["status"]) for v in versions] == [(1, "active"), (2, "revoked")]

    async def test_a_second_first_version_of_one_agreement_is_409(
        self, app: FastAPI, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        act_as(app, "dvla", "data-owner")
        assert (await client.post("/v1/policies", json=NEW_AGREEMENT)).status_code == 201
        # A create that checked the id before the first one committed.
        spec = AgreementSpec.model_validate(NEW_AGREEMENT)
        with pytest.raises(AgreementExists):
            await policy_service.put_agreement(session, None, spec, owner="dvla", author="t", reason="again")
        assert (await client.get("/v1/policies/points-for-revenue")).json()["version"] == 1


class TestAgreementsThatCouldBreakCompilation:
    async def test_an_end_date_of_9999_12_31_means_no_end(
        self, app: FastAPI, client: httpx.AsyncClient
    ) -> None:
        act_as(app, "dvla", "data-owner")
        created = await client.post("/v1/policies", json={**NEW_AGREEMENT, "valid_until": "9999-12-31"})
        assert created.status_code == 201, created.text
        assert created.json()["valid_until"] == "9999-12-31"
        # Every request recompiles the policy after the change: it answers, and grants.
        decisions = await explain(
            client, consumer="revenue", action="read", fields=["points"], purpose="tax-administration"
        )
        assert decisions["points"]["effect"] == "permit"
        assert decisions["points"]["agreement"] == "points-for-revenue"
        act_as(app, "revenue", "data-owner")
        assert (await client.get("/v1/policies")).status_code == 200

    async def test_a_stored_agreement_that_does_not_compile_grants_nothing_and_breaks_nothing(
        self, app: FastAPI, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        # A row written past the API (an old release, a manual edit): its condition does not compile.
        row = await repository.current_version(session, "licence-status-for-welfare")
        assert row is not None
        await session.execute(
            update(AgreementVersion)
            .where(AgreementVersion.id == row.id)
            .values(content={**row.content, "when": "citizen.status =="})
        )
        await bump_epoch(session)
        act_as(app, "audit-office", "auditor")
        ask: dict[str, Any] = {"action": "read", "citizen_status": "active"}
        broken = await explain(
            client, consumer="welfare", fields=["licence_status"], purpose="benefit-eligibility", **ask
        )
        assert broken["licence_status"]["effect"] == "deny"
        # Another department's agreement still applies.
        others = await explain(
            client,
            consumer="welfare",
            fields=["tax_code"],
            purpose="fraud-investigation",
            case_ref="case-1",
            **ask,
        )
        assert others["tax_code"]["effect"] == "permit"

    async def test_a_refused_forbid_fails_closed_for_its_owner_s_fields(
        self, app: FastAPI, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        # DVLA permits welfare its points, and its forbid outranks the permit.
        act_as(app, "dvla", "data-owner")
        permit = {
            "id": "points-for-welfare",
            "consumer": "welfare",
            "fields": ["points"],
            "actions": ["read"],
            "purposes": ["benefit-eligibility"],
            "legal_basis": "Test Act 2026, s.1",
        }
        assert (await client.post("/v1/policies", json=permit)).status_code == 201
        act_as(app, "audit-office", "auditor")
        ask: dict[str, Any] = {"action": "read", "citizen_status": "active", "purpose": "benefit-eligibility"}
        before = await explain(client, consumer="welfare", fields=["points"], **ask)
        assert before["points"]["agreement"] == "no-points-for-welfare"
        assert before["points"]["effect"] == "deny"
        # The forbid's row is edited past the API until it no longer parses: left out, it
        # would let the permit through. It fails closed instead, for every DVLA field.
        row = await repository.current_version(session, "no-points-for-welfare")
        assert row is not None
        await session.execute(
            update(AgreementVersion).where(AgreementVersion.id == row.id).values(content={"id": 7})
        )
        await bump_epoch(session)
        after = await explain(
            client, consumer="welfare", fields=["points", "licence_status", "given_name"], **ask
        )
        for name in ("points", "licence_status"):
            assert after[name]["effect"] == "deny", after
            assert after[name]["agreement"] == "no-points-for-welfare"
            assert "refused when the policy compiled" in after[name]["reason"]
        # Another owner's agreement still applies, and DVLA still reads its own fields.
        assert after["given_name"]["effect"] == "permit", after
        owner = await explain(client, consumer="dvla", fields=["points"], **ask)
        assert owner["points"]["effect"] == "permit"


class TestExplain:
    async def test_reasons_and_near_misses(self, app: FastAPI, client: httpx.AsyncClient) -> None:
        act_as(app, "audit-office", "auditor")
        decisions = await explain(
            client,
            consumer="welfare",
            action="read",
            fields=["tax_code", "points", "given_name", "benefit_status"],
            purpose="benefit-eligibility",
        )
        assert decisions["tax_code"] == {
            "effect": "deny",
            "agreement": None,
            "version": None,
            "reason": "agreement tax-code-for-fraud covers fraud-investigation, not benefit-eligibility",
            "legal_basis": None,
            "allowed_claims": None,
            "held_for": None,
            "near_misses": [
                {
                    "agreement": "tax-code-for-fraud",
                    "version": 1,
                    "effect": "permit",
                    "reason": (
                        "agreement tax-code-for-fraud covers fraud-investigation, not benefit-eligibility"
                    ),
                }
            ],
        }
        assert decisions["points"]["agreement"] == "no-points-for-welfare"
        assert decisions["points"]["effect"] == "deny"
        assert decisions["given_name"]["effect"] == "permit"
        assert (
            decisions["benefit_status"]["reason"] == "owner"
            or decisions["benefit_status"]["effect"] == "deny"
        )

    async def test_expired_and_case_ref(self, app: FastAPI, client: httpx.AsyncClient) -> None:
        act_as(app, "audit-office", "auditor")
        expired = await explain(
            client, consumer="revenue", action="read", fields=["licence_status"], purpose="tax-administration"
        )
        assert expired["licence_status"]["reason"] == "agreement licence-for-revenue expired 2020-01-01"
        needs = await explain(
            client, consumer="welfare", action="read", fields=["tax_code"], purpose="fraud-investigation"
        )
        assert needs["tax_code"]["reason"] == "agreement tax-code-for-fraud needs a case reference"
        with_ref = await explain(
            client,
            consumer="welfare",
            action="read",
            fields=["tax_code"],
            purpose="fraud-investigation",
            case_ref="F-1",
        )
        assert with_ref["tax_code"]["effect"] == "permit"
        assert with_ref["tax_code"]["legal_basis"] == "Welfare Reform Act 2012, s.127"

    async def test_a_held_refusal_says_how_long_it_is_held_without_naming_the_agreement(
        self, app: FastAPI, client: httpx.AsyncClient
    ) -> None:
        # revenue's only delayed-disclosure agreement is the register's. Under a case, a
        # refusal of dvla's field cites no agreement of dvla's, and is held from the citizen
        # for the register's max_delay: dvla is told it is held and for how long, never
        # the register's agreement.
        act_as(app, "register", "data-owner")
        made = await client.post("/v1/policies", json={**DELAYED, "reason": "test"})
        assert made.status_code == 201, made.text
        act_as(app, "dvla", "data-owner")
        ask: dict[str, Any] = {
            "consumer": "revenue",
            "action": "read",
            "fields": ["points"],
            "purpose": "fraud-investigation",
        }
        response = await client.post("/v1/decisions/explain", json={**ask, "case_ref": "FRAUD-1"})
        assert response.status_code == 200, response.text
        held = response.json()["decisions"]["points"]
        assert (held["effect"], held["agreement"], held["version"]) == ("deny", None, None)
        assert held["held_for"] == "P30D"
        assert DELAYED["id"] not in response.text
        assert DELAYED["legal_basis"] not in response.text
        # Without a case nothing is held.
        assert (await explain(client, **ask))["points"]["held_for"] is None
        # The register's own field cites its own agreement, which says how long it holds.
        act_as(app, "register", "data-owner")
        own = await explain(
            client, **{**ask, "fields": ["given_name"], "purpose": "tax-administration"}, case_ref="FRAUD-1"
        )
        assert (own["given_name"]["agreement"], own["given_name"]["held_for"]) == (DELAYED["id"], None)

    async def test_owner_explains_own_fields_or_own_requests_only(
        self, app: FastAPI, client: httpx.AsyncClient
    ) -> None:
        act_as(app, "revenue", "data-owner")
        own_field = await explain(
            client, consumer="welfare", action="read", fields=["tax_code"], purpose="benefit-eligibility"
        )
        assert own_field["tax_code"]["effect"] == "deny"
        as_consumer = await explain(
            client, consumer="revenue", action="read", fields=["licence_status"], purpose="tax-administration"
        )
        assert as_consumer["licence_status"]["effect"] == "deny"
        response = await client.post(
            "/v1/decisions/explain",
            json={
                "consumer": "welfare",
                "action": "read",
                "fields": ["points"],
                "purpose": "benefit-eligibility",
            },
        )
        assert_problem(response, 403, "not-field-owner")

    async def test_bad_input_is_422(self, app: FastAPI, client: httpx.AsyncClient) -> None:
        act_as(app, "audit-office", "auditor")
        response = await client.post(
            "/v1/decisions/explain",
            json={"consumer": "welfare", "action": "peek", "fields": [], "purpose": "x"},
        )
        body = assert_problem(response, 422, "validation-failed")
        assert {tuple(e["loc"]) for e in body["errors"]} == {("body", "action"), ("body", "fields")}

    @pytest.mark.parametrize("case_ref", ["", "   ", "CASE\t1", "C" * 101, "CASÉ-1"])
    async def test_a_case_ref_no_request_could_send_is_422(
        self, app: FastAPI, client: httpx.AsyncClient, case_ref: str
    ) -> None:
        # tax-code-for-fraud requires a case reference; a read with this one would be 422,
        # so it is never explained as one that permits.
        act_as(app, "audit-office", "auditor")
        ask = {
            "consumer": "welfare",
            "action": "read",
            "fields": ["tax_code"],
            "purpose": "fraud-investigation",
        }
        response = await client.post("/v1/decisions/explain", json={**ask, "case_ref": case_ref})
        body = assert_problem(response, 422, "validation-failed")
        assert [tuple(e["loc"]) for e in body["errors"]] == [("body", "case_ref")]
        assert (await explain(client, **ask, case_ref="FRAUD-1"))["tax_code"]["effect"] == "permit"


def recorded(
    consumer: str, fields: list[str], purpose: str, count: int = 1, **extra: Any
) -> list[RecordedRequest]:
    return [
        RecordedRequest(
            consumer=consumer,
            action=str(extra.get("action", "read")),
            fields=tuple(fields),
            purpose=purpose,
            case_ref=extra.get("case_ref"),
            citizen_status=extra.get("citizen_status", "active"),
            time=extra.get("time", datetime(2026, 11, 1, tzinfo=UTC)),
        )
        for _ in range(count)
    ]


@pytest.fixture
async def recorded_source(app: FastAPI) -> AsyncIterator[ListSource]:
    source = ListSource(
        (
            *recorded("welfare", ["licence_status", "given_name"], "benefit-eligibility", 3),
            *recorded("welfare", ["licence_status"], "benefit-eligibility", 1, citizen_status="deceased"),
            *recorded("revenue", ["points"], "tax-administration", 2),
            *recorded("revenue", ["points"], "tax-administration", 5, time=datetime(2026, 1, 1, tzinfo=UTC)),
        )
    )
    app.state.recorded_requests = source
    yield source
    app.state.recorded_requests = None


class TestSimulate:
    @pytest.mark.usefixtures("recorded_source")
    async def test_reports_changes_and_leaves_live_policy(
        self, app: FastAPI, client: httpx.AsyncClient
    ) -> None:
        act_as(app, "dvla", "data-owner")
        response = await client.post(
            "/v1/policies/simulate",
            json={
                "upsert": [NEW_AGREEMENT],
                "remove": ["licence-status-for-welfare"],
                "since": "2026-10-01T00:00:00Z",
            },
        )
        assert response.status_code == 200, response.text
        assert response.json() == {
            "evaluated": 6,
            "changed": 5,
            "changes": [
                {
                    "consumer": "revenue",
                    "field": "points",
                    "action": "read",
                    "purpose": "tax-administration",
                    "before": "deny",
                    "after": "permit",
                    "count": 2,
                },
                {
                    "consumer": "welfare",
                    "field": "licence_status",
                    "action": "read",
                    "purpose": "benefit-eligibility",
                    "before": "permit",
                    "after": "deny",
                    "count": 3,
                },
            ],
            "withheld_by_choice": {},
        }
        # Nothing changed for real.
        assert (await client.get("/v1/policies/licence-status-for-welfare")).json()["status"] == "active"
        assert_problem(await client.get("/v1/policies/points-for-revenue"), 404, "agreement-not-found")

    @pytest.mark.usefixtures("recorded_source")
    async def test_the_replay_is_audited_as_an_audit_query(
        self, app: FastAPI, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        # It reads the audit log, as a usage report does, so it is audited as one.
        act_as(app, "dvla", "data-owner")
        response = await client.post("/v1/policies/simulate", json={"upsert": [NEW_AGREEMENT]})
        assert response.status_code == 200, response.text
        rows = await session.execute(
            select(AuditEntryRow.canonical).where(AuditEntryRow.action == "audit-query")
        )
        (entry,) = [json.loads(canonical) for (canonical,) in rows]
        assert (entry["client_id"], entry["department"], entry["owners"]) == (
            "dvla-data-owner",
            "dvla",
            ["dvla"],
        )

    @pytest.mark.usefixtures("recorded_source")
    async def test_owner_may_only_simulate_its_own(self, app: FastAPI, client: httpx.AsyncClient) -> None:
        act_as(app, "revenue", "data-owner")
        removal = await client.post("/v1/policies/simulate", json={"remove": ["licence-status-for-welfare"]})
        assert_problem(removal, 404, "agreement-not-found")
        upsert = await client.post("/v1/policies/simulate", json={"upsert": [NEW_AGREEMENT]})
        assert_problem(upsert, 403, "not-field-owner")

    async def test_every_problem_with_the_body_and_its_drafts_at_once(
        self, app: FastAPI, client: httpx.AsyncClient
    ) -> None:
        act_as(app, "dvla", "data-owner")
        body = {
            "upsert": [
                NEW_AGREEMENT,
                # A shape problem and a catalog rule in the same draft: both are heard.
                NEW_AGREEMENT | {"id": "Bad Id", "purposes": ["gossip"], "reason": "why"},
                "not an agreement",
                NEW_AGREEMENT | {"id": "points-again", "legal_basis": " "},
            ],
            "remove": ["Not An Id"],
            "since": "yesterday",
            "colour": "blue",
        }
        response = await client.post("/v1/policies/simulate", json=body)
        problem = assert_problem(response, 422, "validation-failed")
        assert [(e["loc"], e["msg"]) for e in problem["errors"]] == [
            (["body", "remove", 0], "'Not An Id' is not an agreement id"),
            (["body", "since"], "since must be a date and time with a time zone, like 2026-11-01T00:00:00Z"),
            (
                ["body", "colour"],
                "a simulation has no part called 'colour'; its parts are upsert, remove and since",
            ),
            (
                ["body", "upsert", 1, "id"],
                "the agreement id must be lower-case letters, digits and hyphens, starting with a letter",
            ),
            (["body", "upsert", 1, "purposes", 0], "unknown purpose 'gossip'"),
            (
                ["body", "upsert", 1, "reason"],
                "an agreement has no part called 'reason'; its parts are id, consumer, fields, actions, "
                "purposes, legal_basis, valid_from, valid_until, when, require_case_ref, disclosure, "
                "max_delay, effect, basis, signature, "
                "verify",
            ),
            (["body", "upsert", 2], "each draft must be an agreement: a mapping of its parts"),
            (["body", "upsert", 3, "legal_basis"], "a permit needs a legal basis"),
        ]

    async def test_a_part_that_may_be_personal_data_is_not_named(
        self, app: FastAPI, client: httpx.AsyncClient
    ) -> None:
        """A national id sent as a key is said generically, in the envelope and in a draft,
        and in an agreement created or replaced as in one simulated."""
        act_as(app, "dvla", "data-owner")
        body = {"upsert": [NEW_AGREEMENT | {"AB123456C": "x"}], "ab123456c": "y"}
        response = await client.post("/v1/policies/simulate", json=body)
        problem = assert_problem(response, 422, "validation-failed")
        assert [(e["loc"], e["msg"]) for e in problem["errors"]] == [
            (["body"], "a simulation has no such part; its parts are upsert, remove and since"),
            (
                ["body", "upsert", 0],
                "an agreement has no such part; its parts are id, consumer, fields, actions, "
                "purposes, legal_basis, valid_from, valid_until, when, require_case_ref, disclosure, "
                "max_delay, effect, basis, signature, verify",
            ),
        ]
        created = await client.post("/v1/policies", json=NEW_AGREEMENT | {"reason": "new", "AB123456C": "x"})
        problem = assert_problem(created, 422, "validation-failed")
        assert [e["loc"] for e in problem["errors"]] == [["body"]]
        assert problem["errors"][0]["msg"].startswith("an agreement has no such part; ")
        for refused in (response, created):
            assert "123456" not in refused.text

    async def test_a_draft_whose_condition_could_hold_the_server_is_422(
        self, app: FastAPI, client: httpx.AsyncClient
    ) -> None:
        # Never compiled nor replayed: a comprehension costs the product of its lists' lengths.
        act_as(app, "dvla", "data-owner")
        items = "[" + ",".join(["0"] * 40) + "]"
        when = f"{items}.all(a, {items}.all(b, {items}.all(c, {items}.all(d, {items}.all(e, true)))))"
        response = await client.post(
            "/v1/policies/simulate", json={"upsert": [{**NEW_AGREEMENT, "when": when}]}
        )
        body = assert_problem(response, 422, "validation-failed")
        assert body["errors"] == [
            {
                "loc": ["body", "upsert", 0, "when"],
                "msg": "condition uses all: comprehensions are not supported in conditions",
            }
        ]

    @pytest.mark.parametrize("since", ["2026-11-01T00:00:00", "9999-12-31T23:59:59-12:00"])
    async def test_since_without_a_time_zone_or_past_the_last_instant_is_422(
        self, app: FastAPI, client: httpx.AsyncClient, since: str
    ) -> None:
        act_as(app, "dvla", "data-owner")
        body = {"upsert": [NEW_AGREEMENT], "since": since}
        response = await client.post("/v1/policies/simulate", json=body)
        problem = assert_problem(response, 422, "validation-failed")
        assert [(e["loc"], e["msg"]) for e in problem["errors"]] == [
            (["body", "since"], "since must be a date and time with a time zone, like 2026-11-01T00:00:00Z"),
        ]
        aware = await client.post(
            "/v1/policies/simulate", json={"upsert": [NEW_AGREEMENT], "since": "2026-11-01T00:00:00-12:00"}
        )
        assert aware.status_code == 200, aware.text

    async def test_a_list_that_is_not_one(self, app: FastAPI, client: httpx.AsyncClient) -> None:
        act_as(app, "dvla", "data-owner")
        response = await client.post("/v1/policies/simulate", json={"upsert": "points", "remove": "x"})
        problem = assert_problem(response, 422, "validation-failed")
        assert [(e["loc"], e["msg"]) for e in problem["errors"]] == [
            (["body", "upsert"], "upsert must be a list of draft agreements"),
            (["body", "remove"], "remove must be a list of agreement ids"),
        ]

    async def test_without_a_source_evaluates_nothing(self, app: FastAPI, client: httpx.AsyncClient) -> None:
        # The server's source is the audit store; a deployment without one evaluates nothing.
        app.state.recorded_requests = None
        act_as(app, "audit-office", "auditor")
        response = await client.post("/v1/policies/simulate", json={"upsert": [NEW_AGREEMENT]})
        assert response.json() == {"evaluated": 0, "changed": 0, "changes": [], "withheld_by_choice": {}}
