"""Two promises, route by route: every access to a citizen's data lands in the audit log
(naming the citizen, the caller's client and department, the action and the decision), and
the citizen sees it in their access log (``GET /v1/citizens/{id}/access-log``, as the
portal reads it), unless the README says why not.

The routes come from ``app.openapi()``: a route added later that is in none of ``CASES``,
``NOT_ABOUT_ONE_CITIZEN`` and ``NOT_AUDITED_REPEATS`` fails ``test_every_route_is_classified``.
Each case registers its own citizen, so the entries it looks for are its own."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from tests.records.conftest import RecordsEnv, as_
from tests.security.conftest import AUDITOR, problem

REGISTRAR = as_("register", "registrar")
OWNER = as_("register", "data-owner")
PORTAL = as_("portal", "citizen-portal")
WELFARE = as_("welfare", "consumer")
DVLA = as_("dvla", "consumer")
REVENUE = as_("revenue", "consumer")

# Agreements this module adds to the security policies (owner: register).
AGREEMENTS: list[dict[str, Any]] = [
    {
        "id": "seen-fraud-names-for-revenue",
        "consumer": "revenue",
        "fields": ["given_name"],
        "actions": ["read"],
        "purposes": ["fraud-investigation"],
        "legal_basis": "Test Act s.20",
        "disclosure": "after-case-closed",
        "max_delay": "P30D",
    },
    {
        "id": "seen-names-for-dvla-with-consent",
        "consumer": "dvla",
        "fields": ["given_name"],
        "actions": ["read"],
        "purposes": ["licence-administration"],
        "legal_basis": "Test Act s.6(1)(a)",
        "basis": "consent",
    },
    {
        "id": "seen-birth-dates-for-revenue-unless-objected",
        "consumer": "revenue",
        "fields": ["date_of_birth"],
        "actions": ["read"],
        "purposes": ["tax-administration"],
        "legal_basis": "Test Act s.2",
        "basis": "objectable",
    },
    {
        "id": "seen-addresses-to-welfare",
        "consumer": "welfare",
        "fields": ["address"],
        "actions": ["subscribe"],
        "purposes": ["benefit-eligibility"],
        "legal_basis": "Test Act s.122",
    },
]
CONSENT_AGREEMENT = "seen-names-for-dvla-with-consent"
OBJECTABLE_AGREEMENT = "seen-birth-dates-for-revenue-unless-objected"

# Routes that name no one citizen, and why. A route here that comes to touch a citizen
# belongs in CASES instead.
NOT_ABOUT_ONE_CITIZEN: dict[tuple[str, str], str] = {
    ("GET", "/healthz"): "liveness",
    ("GET", "/readyz"): "readiness",
    ("GET", "/v1/catalog"): "the catalog of fields",
    ("GET", "/v1/policies"): "agreements",
    ("POST", "/v1/policies"): "agreements",
    ("GET", "/v1/policies/{agreement_id}"): "agreements",
    ("PUT", "/v1/policies/{agreement_id}"): "agreements",
    ("DELETE", "/v1/policies/{agreement_id}"): "agreements",
    ("GET", "/v1/policies/{agreement_id}/versions"): "agreements",
    ("POST", "/v1/policies/simulate"): "counts of decisions over the recorded requests, no citizen",
    ("POST", "/oauth/token"): "tokens",
    ("GET", "/.well-known/jwks.json"): "keys",
    ("GET", "/.well-known/evidence-keys.json"): "keys",
    ("GET", "/.well-known/oauth-authorization-server"): "metadata",
    ("GET", "/v1/clients"): "clients",
    ("POST", "/v1/clients"): "clients",
    ("POST", "/v1/clients/{client_id}/disable"): "clients",
    ("GET", "/v1/audit/checkpoint"): "a signed tree head",
    ("GET", "/v1/audit/verifier-key"): "a key",
    ("GET", "/v1/audit/consistency"): "hashes",
    ("GET", "/v1/audit/reports/usage"): "counts per consumer, owner, field and purpose",
    ("POST", "/v1/cases/{case_ref}/close"): "a case spans citizens; exercised by the held read below",
    ("GET", "/v1/subscriptions"): "subscriptions",
    ("POST", "/v1/subscriptions"): "subscriptions (fields and a purpose, no citizen)",
    ("GET", "/v1/subscriptions/{subscription_id}"): "subscriptions",
    ("DELETE", "/v1/subscriptions/{subscription_id}"): "subscriptions",
    ("POST", "/v1/subscriptions/{subscription_id}/disable"): "subscriptions",
    ("POST", "/v1/subscriptions/{subscription_id}/enable"): "subscriptions",
    ("POST", "/v1/subscriptions/{subscription_id}/rotate-secret"): "subscriptions",
}

# Routes that show a citizen's id or entries again without an entry naming the citizen,
# each a repeat of something already audited. Design questions (see the report), not
# accesses the citizen is shown.
NOT_AUDITED_REPEATS: dict[tuple[str, str], str] = {
    ("GET", "/v1/audit/tile/{tile}"): (
        "an entry bundle (256 entries, many citizens) is audited as one audit-query naming none; "
        "hash tiles name no one"
    ),
    ("GET", "/v1/subscriptions/{subscription_id}/deliveries"): (
        "names the citizen of a delivery only once it was released, which its `deliver` entry "
        "recorded; listing it again is not audited"
    ),
    ("POST", "/v1/subscriptions/{subscription_id}/redeliver"): (
        "queues dead deliveries again; the send is the dispatcher's, audited as `deliver`"
    ),
}

# Accesses audited but deliberately not on the citizen's access log, with the README's reason.
NOT_SHOWN: dict[str, str] = {
    "access-log": "README, Audit trail: the portal's own reads are audited as access-log but not shown back",
    "consent-change": "README, Consent and objection: the choices themselves are not on the access log",
    "objection-change": "README, Consent and objection: the choices themselves are not on the access log",
    "consent-list": "README, Consent and objection: the portal reading the citizen's own choices",
    "objection-list": "README, Consent and objection: the portal reading the citizen's own choices",
    "explain": "README, Consent and objection: like the choices themselves, not on the access log",
    "audit-query": (
        "README, Audit trail: the access log shows accesses to the record (reads, lookups, checks, "
        "writes, registration, erasure, deliver, feed); an auditor's query of the log is not one"
    ),
}


async def _register(env: RecordsEnv) -> tuple[str, str]:
    return await env.register(given_name="Seen", address="1 Watched Row", date_of_birth="1970-05-06")


async def audited(
    env: RecordsEnv,
    citizen: str,
    action: str,
    department: str,
    decision: str,
    *,
    purpose: str | None = None,
    case_ref: str | None = None,
) -> dict[str, Any]:
    """The one audit entry of ``action`` on ``citizen`` by ``department`` with ``decision``."""
    response = await env.client.get(
        "/v1/audit/entries", params={"citizen_id": citizen, "action": action}, headers=AUDITOR
    )
    assert response.status_code == 200, response.text
    entries = [item["entry"] for item in response.json()["items"]]
    found = [e for e in entries if e["department"] == department and e["decision"] == decision]
    assert found, f"no {action}/{decision} entry by {department} naming the citizen: {entries}"
    entry: dict[str, Any] = found[-1]
    assert entry["citizen_id"] == citizen
    assert entry["client_id"] == f"{department}-client"
    assert entry["purpose"] == purpose
    assert entry.get("case_ref") == case_ref
    return entry


async def access_log(env: RecordsEnv, citizen: str) -> list[dict[str, Any]]:
    response = await env.client.get(f"/v1/citizens/{citizen}/access-log", headers=PORTAL)
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


async def shown(
    env: RecordsEnv,
    citizen: str,
    action: str,
    department: str,
    decision: str,
    *,
    purpose: str | None,
    fields: set[str],
) -> dict[str, Any]:
    """The citizen's access-log line for the access: who, for what, when and which fields."""
    items = await access_log(env, citizen)
    found = [
        item
        for item in items
        if (item["action"], item["department"], item["decision"], item["purpose"])
        == (action, department, decision, purpose)
    ]
    assert found, f"the citizen does not see {action}/{decision} by {department}: {items}"
    item = found[-1]
    assert fields <= set(item["fields"]), item
    assert item["time"]
    assert "client_id" not in item
    assert "on_behalf_of" not in item
    return item


async def not_shown(env: RecordsEnv, citizen: str, action: str) -> None:
    assert action in NOT_SHOWN
    assert all(item["action"] != action for item in await access_log(env, citizen))


async def seen(
    env: RecordsEnv,
    citizen: str,
    action: str,
    department: str,
    decision: str,
    *,
    purpose: str | None,
    fields: set[str],
    case_ref: str | None = None,
) -> None:
    """Audited and on the citizen's access log."""
    await audited(env, citizen, action, department, decision, purpose=purpose, case_ref=case_ref)
    await shown(env, citizen, action, department, decision, purpose=purpose, fields=fields)


# --- one case per route ----------------------------------------------------------------


async def _read(env: RecordsEnv) -> None:
    citizen, _ = await _register(env)
    ok = await env.client.get(
        f"/v1/citizens/{citizen}",
        params={"fields": "given_name,address", "purpose": "benefit-eligibility"},
        headers=WELFARE,
    )
    assert ok.status_code == 200, ok.text
    await seen(
        env,
        citizen,
        "read",
        "welfare",
        "permit",
        purpose="benefit-eligibility",
        fields={"given_name", "address"},
    )
    refused = await env.client.get(
        f"/v1/citizens/{citizen}",
        params={"fields": "tax_code", "purpose": "licence-administration"},
        headers=DVLA,
    )
    problem(refused, 403)
    await seen(env, citizen, "read", "dvla", "deny", purpose="licence-administration", fields={"tax_code"})

    # Under an open case: audited at once, held from the citizen until the case closes.
    case_ref = f"SEEN-{uuid.uuid4().hex[:8]}"
    held = await env.client.get(
        f"/v1/citizens/{citizen}",
        params={"fields": "given_name", "purpose": "fraud-investigation"},
        headers={**REVENUE, "X-Case-Ref": case_ref},
    )
    assert held.status_code == 200, held.text
    await audited(env, citizen, "read", "revenue", "permit", purpose="fraud-investigation", case_ref=case_ref)
    assert all(item["department"] != "revenue" for item in await access_log(env, citizen))
    closed = await env.client.post(f"/v1/cases/{case_ref}/close", headers=REVENUE)
    assert closed.status_code == 200, closed.text
    item = await shown(
        env, citizen, "read", "revenue", "permit", purpose="fraud-investigation", fields={"given_name"}
    )
    assert item["disclosed_by"] == "case-closed"


async def _batch_get(env: RecordsEnv) -> None:
    citizen, _ = await _register(env)
    ok = await env.client.post(
        "/v1/citizens/batch-get",
        json={"ids": [citizen], "fields": ["given_name"], "purpose": "benefit-eligibility"},
        headers=WELFARE,
    )
    assert ok.status_code == 200, ok.text
    await seen(
        env, citizen, "batch-get", "welfare", "permit", purpose="benefit-eligibility", fields={"given_name"}
    )
    refused = await env.client.post(
        "/v1/citizens/batch-get",
        json={"ids": [citizen], "fields": ["tax_code"], "purpose": "licence-administration"},
        headers=DVLA,
    )
    assert refused.status_code == 200, refused.text
    await seen(
        env, citizen, "batch-get", "dvla", "deny", purpose="licence-administration", fields={"tax_code"}
    )


async def _lookup(env: RecordsEnv) -> None:
    citizen, national_id = await _register(env)
    ok = await env.client.post(
        "/v1/citizens/lookup",
        json={"national_id": national_id, "purpose": "benefit-eligibility"},
        headers=WELFARE,
    )
    assert ok.status_code == 200, ok.text
    await seen(
        env, citizen, "lookup", "welfare", "permit", purpose="benefit-eligibility", fields={"national_id"}
    )
    refused = await env.client.post(
        "/v1/citizens/lookup",
        json={"national_id": national_id, "purpose": "tax-administration"},
        headers=REVENUE,
    )
    assert refused.status_code in {403, 404}, refused.text
    await seen(
        env, citizen, "lookup", "revenue", "deny", purpose="tax-administration", fields={"national_id"}
    )


async def _verify(env: RecordsEnv) -> None:
    citizen, _ = await _register(env)
    ok = await env.client.post(
        f"/v1/citizens/{citizen}/verify",
        json={"purpose": "benefit-eligibility", "claims": {"date_of_birth": {"lte": "1990-01-01"}}},
        headers=as_("portal", "consumer"),
    )
    assert ok.status_code == 200, ok.text
    await seen(
        env, citizen, "verify", "portal", "permit", purpose="benefit-eligibility", fields={"date_of_birth"}
    )
    refused = await env.client.post(
        f"/v1/citizens/{citizen}/verify",
        json={"purpose": "licence-administration", "claims": {"date_of_birth": {"lte": "1990-01-01"}}},
        headers=DVLA,
    )
    problem(refused, 403)
    await seen(
        env, citizen, "verify", "dvla", "deny", purpose="licence-administration", fields={"date_of_birth"}
    )


async def _history(env: RecordsEnv) -> None:
    citizen, _ = await _register(env)
    ok = await env.client.get(
        f"/v1/citizens/{citizen}/fields/address/history",
        params={"purpose": "fraud-investigation"},
        headers={**WELFARE, "X-Case-Ref": "SEEN-HISTORY-1"},
    )
    assert ok.status_code == 200, ok.text
    entry = await audited(
        env, citizen, "history", "welfare", "permit", purpose="fraud-investigation", case_ref="SEEN-HISTORY-1"
    )
    assert entry["fields_released"] == ["address"]
    await shown(
        env, citizen, "history", "welfare", "permit", purpose="fraud-investigation", fields={"address"}
    )
    refused = await env.client.get(
        f"/v1/citizens/{citizen}/fields/address/history",
        params={"purpose": "licence-administration"},
        headers=DVLA,
    )
    problem(refused, 403)
    await seen(env, citizen, "history", "dvla", "deny", purpose="licence-administration", fields={"address"})


async def _write(env: RecordsEnv) -> None:
    citizen, _ = await _register(env)
    ok = await env.client.patch(
        f"/v1/citizens/{citizen}/fields",
        json={"fields": {"address": "2 Moved Row"}, "reason": "moved", "purpose": "address-update"},
        headers=as_("dvla", "writer"),
    )
    assert ok.status_code == 200, ok.text
    await seen(env, citizen, "write", "dvla", "permit", purpose="address-update", fields={"address"})
    refused = await env.client.patch(
        f"/v1/citizens/{citizen}/fields",
        json={"fields": {"address": "3 Other Row"}, "reason": "moved", "purpose": "benefit-eligibility"},
        headers=as_("welfare", "writer"),
    )
    problem(refused, 403)
    await seen(env, citizen, "write", "welfare", "deny", purpose="benefit-eligibility", fields={"address"})


async def _register_route(env: RecordsEnv) -> None:
    citizen, _ = await _register(env)
    await seen(
        env,
        citizen,
        "register",
        "register",
        "permit",
        purpose=None,
        fields={"national_id", "given_name", "address", "date_of_birth"},
    )


async def _erase(env: RecordsEnv) -> None:
    citizen, _ = await _register(env)
    params = {"reason": "duplicate-record", "legal_basis": "Test Act s.29", "purpose": "civil-registration"}
    refused = await env.client.delete(
        f"/v1/citizens/{citizen}", params=params, headers=as_("welfare", "registrar")
    )
    problem(refused, 403)
    await seen(env, citizen, "erase", "welfare", "deny", purpose="civil-registration", fields=set())
    ok = await env.client.delete(
        f"/v1/citizens/{citizen}", params=params, headers=as_("revenue", "registrar")
    )
    assert ok.status_code == 204, ok.text
    await seen(env, citizen, "erase", "revenue", "permit", purpose="civil-registration", fields=set())


async def _consents(env: RecordsEnv, citizen: str) -> str:
    made = await env.client.post(
        f"/v1/citizens/{citizen}/consents", json={"agreement": CONSENT_AGREEMENT}, headers=PORTAL
    )
    assert made.status_code == 201, made.text
    return str(made.json()["id"])


async def _give_consent(env: RecordsEnv) -> None:
    citizen, _ = await _register(env)
    await _consents(env, citizen)
    await audited(env, citizen, "consent-change", "portal", "permit", purpose="licence-administration")
    await not_shown(env, citizen, "consent-change")


async def _change_consent(env: RecordsEnv) -> None:
    citizen, _ = await _register(env)
    consent = await _consents(env, citizen)
    revoked = await env.client.patch(
        f"/v1/citizens/{citizen}/consents/{consent}", json={"status": "revoked"}, headers=PORTAL
    )
    assert revoked.status_code == 200, revoked.text
    response = await env.client.get(
        "/v1/audit/entries", params={"citizen_id": citizen, "action": "consent-change"}, headers=AUDITOR
    )
    assert len(response.json()["items"]) == 2, response.text
    await not_shown(env, citizen, "consent-change")


async def _list_consents(env: RecordsEnv) -> None:
    citizen, _ = await _register(env)
    listed = await env.client.get(f"/v1/citizens/{citizen}/consents", headers=PORTAL)
    assert listed.status_code == 200, listed.text
    await audited(env, citizen, "consent-list", "portal", "permit")
    await not_shown(env, citizen, "consent-list")


async def _object(env: RecordsEnv) -> None:
    citizen, _ = await _register(env)
    made = await env.client.post(f"/v1/citizens/{citizen}/objections/{OBJECTABLE_AGREEMENT}", headers=PORTAL)
    assert made.status_code == 201, made.text
    await audited(env, citizen, "objection-change", "portal", "permit")
    await not_shown(env, citizen, "objection-change")


async def _withdraw_objection(env: RecordsEnv) -> None:
    citizen, _ = await _register(env)
    path = f"/v1/citizens/{citizen}/objections/{OBJECTABLE_AGREEMENT}"
    assert (await env.client.post(path, headers=PORTAL)).status_code == 201
    withdrawn = await env.client.delete(path, headers=PORTAL)
    assert withdrawn.status_code == 204, withdrawn.text
    response = await env.client.get(
        "/v1/audit/entries", params={"citizen_id": citizen, "action": "objection-change"}, headers=AUDITOR
    )
    assert len(response.json()["items"]) == 2, response.text
    await not_shown(env, citizen, "objection-change")


async def _list_objections(env: RecordsEnv) -> None:
    citizen, _ = await _register(env)
    listed = await env.client.get(f"/v1/citizens/{citizen}/objections", headers=PORTAL)
    assert listed.status_code == 200, listed.text
    await audited(env, citizen, "objection-list", "portal", "permit")
    await not_shown(env, citizen, "objection-list")


async def _explain(env: RecordsEnv) -> None:
    citizen, _ = await _register(env)
    explained = await env.client.post(
        "/v1/decisions/explain",
        json={
            "consumer": "dvla",
            "action": "read",
            "fields": ["given_name"],
            "purpose": "licence-administration",
            "citizen_id": citizen,
        },
        headers=OWNER,
    )
    assert explained.status_code == 200, explained.text
    await audited(env, citizen, "explain", "register", "permit", purpose="licence-administration")
    await not_shown(env, citizen, "explain")


async def _access_log_route(env: RecordsEnv) -> None:
    citizen, _ = await _register(env)
    await access_log(env, citizen)
    await audited(env, citizen, "access-log", "portal", "permit")
    await not_shown(env, citizen, "access-log")


async def _search(env: RecordsEnv) -> None:
    citizen, _ = await _register(env)
    searched = await env.client.get("/v1/audit/entries", params={"citizen_id": citizen}, headers=AUDITOR)
    assert searched.status_code == 200, searched.text
    await audited(env, citizen, "audit-query", "audit-office", "permit")
    await not_shown(env, citizen, "audit-query")


async def _export(env: RecordsEnv) -> None:
    citizen, _ = await _register(env)
    exported = await env.client.get(
        "/v1/audit/export", params={"citizen_id": citizen, "format": "jsonl"}, headers=AUDITOR
    )
    assert exported.status_code == 200, exported.text
    assert citizen in exported.text
    await audited(env, citizen, "audit-query", "audit-office", "permit")
    await not_shown(env, citizen, "audit-query")


async def _proof(env: RecordsEnv) -> None:
    citizen, _ = await _register(env)
    leaf = None
    for _ in range(100):
        response = await env.client.get(
            "/v1/audit/entries", params={"citizen_id": citizen, "action": "register"}, headers=AUDITOR
        )
        leaf = response.json()["items"][0]["leaf_index"]
        checkpoint = await env.client.get("/v1/audit/checkpoint", headers=AUDITOR)
        if leaf is not None and checkpoint.status_code == 200 and int(checkpoint.text.split("\n")[1]) > leaf:
            break
        await asyncio.sleep(0.1)
    assert leaf is not None
    proved = await env.client.get(f"/v1/audit/entries/{leaf}/proof", headers=AUDITOR)
    assert proved.status_code == 200, proved.text
    assert proved.json()["entry"]["citizen_id"] == citizen
    proof_reads = [
        item["entry"]
        for item in (
            await env.client.get(
                "/v1/audit/entries", params={"citizen_id": citizen, "action": "audit-query"}, headers=AUDITOR
            )
        ).json()["items"]
    ]
    assert any(
        e["department"] == "audit-office" and e["client_id"] == "audit-office-client" for e in proof_reads
    )
    await not_shown(env, citizen, "audit-query")


async def _feed(env: RecordsEnv) -> None:
    citizen, _ = await _register(env)
    subscribed = await env.client.post(
        "/v1/subscriptions", json={"fields": ["address"], "purpose": "benefit-eligibility"}, headers=WELFARE
    )
    assert subscribed.status_code == 201, subscribed.text
    try:
        written = await env.client.patch(
            f"/v1/citizens/{citizen}/fields",
            json={"fields": {"address": "4 Told Row"}, "reason": "moved"},
            headers=as_("register", "writer"),
        )
        assert written.status_code == 200, written.text
        after: str | None = None
        told = False
        while not told:
            params = {"limit": "500", **({"after": after} if after else {})}
            page = await env.client.get("/v1/events", params=params, headers=WELFARE)
            assert page.status_code == 200, page.text
            told = any(item.get("citizen_id") == citizen for item in page.json()["items"])
            if not page.json()["items"]:
                break
            after = page.json()["cursor"]
        assert told
        await seen(
            env, citizen, "feed", "welfare", "permit", purpose="benefit-eligibility", fields={"address"}
        )
    finally:
        gone = await env.client.delete(f"/v1/subscriptions/{subscribed.json()['id']}", headers=WELFARE)
        assert gone.status_code == 204, gone.text


Case = Callable[[RecordsEnv], Awaitable[None]]
CASES: dict[tuple[str, str], Case] = {
    ("GET", "/v1/citizens/{citizen_id}"): _read,
    ("POST", "/v1/citizens/batch-get"): _batch_get,
    ("POST", "/v1/citizens/lookup"): _lookup,
    ("POST", "/v1/citizens/{citizen_id}/verify"): _verify,
    ("GET", "/v1/citizens/{citizen_id}/fields/{field}/history"): _history,
    ("PATCH", "/v1/citizens/{citizen_id}/fields"): _write,
    ("POST", "/v1/citizens"): _register_route,
    ("DELETE", "/v1/citizens/{citizen_id}"): _erase,
    ("POST", "/v1/citizens/{citizen_id}/consents"): _give_consent,
    ("PATCH", "/v1/citizens/{citizen_id}/consents/{consent_id}"): _change_consent,
    ("GET", "/v1/citizens/{citizen_id}/consents"): _list_consents,
    ("POST", "/v1/citizens/{citizen_id}/objections/{agreement}"): _object,
    ("DELETE", "/v1/citizens/{citizen_id}/objections/{agreement}"): _withdraw_objection,
    ("GET", "/v1/citizens/{citizen_id}/objections"): _list_objections,
    ("POST", "/v1/decisions/explain"): _explain,
    ("GET", "/v1/citizens/{citizen_id}/access-log"): _access_log_route,
    ("GET", "/v1/audit/entries"): _search,
    ("GET", "/v1/audit/export"): _export,
    ("GET", "/v1/audit/entries/{index}/proof"): _proof,
    ("GET", "/v1/events"): _feed,
}


@pytest.fixture(scope="module")
async def seen_env(security_env: RecordsEnv) -> RecordsEnv:
    for agreement in AGREEMENTS:
        made = await security_env.client.post(
            "/v1/policies", json={**agreement, "reason": "test"}, headers=OWNER
        )
        assert made.status_code == 201, made.text
    return security_env


def test_every_route_is_classified(seen_env: RecordsEnv) -> None:
    routes = {
        (method.upper(), path)
        for path, operations in seen_env.app.openapi()["paths"].items()
        for method in operations
    }
    lists = [set(CASES), set(NOT_ABOUT_ONE_CITIZEN), set(NOT_AUDITED_REPEATS)]
    unclassified = routes - set().union(*lists)
    assert not unclassified, f"routes with no case and no reason: {sorted(unclassified)}"
    assert sum(len(listed) for listed in lists) == len(set().union(*lists)), "a route is in two lists"
    assert set().union(*lists) <= routes, "a listed route the app no longer has"


@pytest.mark.parametrize("route", list(CASES), ids=[f"{m} {p}" for m, p in CASES])
async def test_access_is_audited_and_seen(seen_env: RecordsEnv, route: tuple[str, str]) -> None:
    await CASES[route](seen_env)
