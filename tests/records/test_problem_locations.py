"""Every 4xx problem's ``errors[].loc`` starts where the input came from (``body``,
``query``, ``path`` or ``header``) and then names that input, as the OpenAPI document's
``ProblemError`` says and FastAPI's own request validation does: a client can point at
the parameter or body member to fix, whichever check refused it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.records.conftest import RecordsEnv, as_

SOURCES = ("body", "query", "path", "header")
CITIZEN = "{citizen}"
ERASURE = {"reason": "registered-in-error", "legal_basis": "UK GDPR Art. 17(1)(d)"}


@dataclass(frozen=True)
class Bad:
    """One refused request and the locations its problem must name, in order."""

    method: str
    url: str
    caller: dict[str, str]
    locs: list[list[str | int]]
    params: dict[str, str] = field(default_factory=dict)
    body: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)


WELFARE = as_("welfare", "consumer")
REGISTRAR = as_("register", "registrar")
REGISTER_WRITER = as_("register", "writer")
OWNER = as_("dvla", "data-owner")
AUDITOR = as_("audit-office", "auditor")
PORTAL = as_("portal", "citizen-portal")
READ = {"purpose": "benefit-eligibility"}

BAD_INPUTS = {
    # records: query
    "read-unknown-purpose": Bad("GET", f"/v1/citizens/{CITIZEN}", WELFARE, [["query", "purpose"]],
                                params={"purpose": "astrology"}),
    "read-missing-purpose": Bad("GET", f"/v1/citizens/{CITIZEN}", WELFARE, [["query", "purpose"]]),
    "read-unknown-field": Bad("GET", f"/v1/citizens/{CITIZEN}", WELFARE, [["query", "fields", 1]],
                              params={**READ, "fields": "given_name,shoe_size"}),
    "history-unknown-purpose": Bad("GET", f"/v1/citizens/{CITIZEN}/fields/address/history", WELFARE,
                                   [["query", "purpose"]], params={"purpose": "astrology"}),
    "erase-unknown-purpose": Bad("DELETE", f"/v1/citizens/{CITIZEN}", REGISTRAR, [["query", "purpose"]],
                                 params={**ERASURE, "purpose": "astrology"}),
    "erase-blank-legal-basis": Bad("DELETE", f"/v1/citizens/{CITIZEN}", REGISTRAR,
                                   [["query", "legal_basis"]], params={**ERASURE, "legal_basis": " "}),
    "history-bad-cursor": Bad("GET", f"/v1/citizens/{CITIZEN}/fields/address/history", WELFARE,
                              [["query", "cursor"]], params={**READ, "cursor": "x"}),
    # records: path
    "read-bad-citizen-id": Bad("GET", "/v1/citizens/not-an-id", WELFARE, [["path", "citizen_id"]],
                               params=READ),
    "history-unknown-field": Bad("GET", f"/v1/citizens/{CITIZEN}/fields/shoe_size/history", WELFARE,
                                 [["path", "field"]], params=READ),
    # records: header
    "read-bad-case-ref": Bad("GET", f"/v1/citizens/{CITIZEN}", WELFARE, [["header", "X-Case-Ref"]],
                             params=READ, headers={"X-Case-Ref": " starts with a space"}),
    # records: body
    "lookup-unknown-purpose": Bad("POST", "/v1/citizens/lookup", WELFARE, [["body", "purpose"]],
                                  body={"national_id": "QQ123456A", "purpose": "astrology"}),
    "batch-get-unknown-purpose-and-field": Bad(
        "POST", "/v1/citizens/batch-get", WELFARE, [["body", "fields", 1], ["body", "purpose"]],
        body={"ids": [CITIZEN], "fields": ["given_name", "shoe_size"], "purpose": "astrology"},
    ),
    "verify-unknown-purpose-and-field": Bad(
        "POST", f"/v1/citizens/{CITIZEN}/verify", WELFARE, [["body", "claims", 0], ["body", "purpose"]],
        body={"purpose": "astrology", "claims": {"shoe_size": {"eq": 9}}},
    ),
    "verify-bad-operator": Bad("POST", f"/v1/citizens/{CITIZEN}/verify", WELFARE,
                               [["body", "claims", "date_of_birth", 0]],
                               body={**READ, "claims": {"date_of_birth": {"near": "2000-01-01"}}}),
    "verify-bad-operand": Bad("POST", f"/v1/citizens/{CITIZEN}/verify", WELFARE,
                              [["body", "claims", "date_of_birth", "lte"]],
                              body={**READ, "claims": {"date_of_birth": {"lte": "yesterday"}}}),
    "write-unknown-purpose": Bad("PATCH", f"/v1/citizens/{CITIZEN}/fields", REGISTER_WRITER,
                                 [["body", "purpose"]],
                                 body={"fields": {"address": "New House"}, "reason": "moved",
                                       "purpose": "astrology"}),
    "write-bad-and-unknown-values": Bad(
        "PATCH", f"/v1/citizens/{CITIZEN}/fields", REGISTER_WRITER,
        [["body", "fields", "date_of_birth"], ["body", "fields", 1]],
        body={"fields": {"date_of_birth": "2023-02-30", "shoe_size": 9}, "reason": "corrected"},
    ),
    "register-bad-national-id-and-values": Bad(
        "POST", "/v1/citizens", REGISTRAR,
        [["body", "fields", "date_of_birth"], ["body", "fields", 1], ["body", "national_id"]],
        body={"national_id": "Q" * 30, "fields": {"date_of_birth": "2023-02-30", "shoe_size": 9}},
    ),
    "register-national-id-among-fields": Bad("POST", "/v1/citizens", REGISTRAR,
                                             [["body", "fields", "national_id"]],
                                             body={"national_id": "QQ123456B",
                                                   "fields": {"national_id": "QQ123456C"}}),
    # policy
    "revoke-nul-reason": Bad("DELETE", "/v1/policies/welfare-reads-licence", OWNER, [["query", "reason"]],
                             params={"reason": "a\x00b"}),
    "policy-bad-cursor": Bad("GET", "/v1/policies", OWNER, [["query", "cursor"]], params={"cursor": "!"}),
    # consent
    "object-unknown-agreement": Bad("POST", f"/v1/citizens/{CITIZEN}/objections/no-such-agreement", PORTAL,
                                    [["path", "agreement"]]),
    # events
    "feed-bad-after": Bad("GET", "/v1/events", WELFARE, [["query", "after"]], params={"after": "!"}),
    # audit
    "audit-bad-since": Bad("GET", "/v1/audit/entries", AUDITOR, [["query", "since"]],
                           params={"since": "last tuesday"}),
    "access-log-bad-cursor": Bad("GET", f"/v1/citizens/{CITIZEN}/access-log", PORTAL, [["query", "cursor"]],
                                 params={"cursor": "!"}),
    # cases
    "close-bad-case-ref": Bad("POST", "/v1/cases/%20x/close", WELFARE, [["path", "case_ref"]]),
}  # fmt: skip


def _placed(value: Any, citizen_id: str) -> Any:
    """``value`` with the registered citizen's id in place of ``CITIZEN``."""
    if isinstance(value, str):
        return value.replace(CITIZEN, citizen_id)
    if isinstance(value, list):
        return [_placed(item, citizen_id) for item in value]
    if isinstance(value, dict):
        return {key: _placed(item, citizen_id) for key, item in value.items()}
    return value


class TestProblemLocations:
    @pytest.mark.parametrize("case", list(BAD_INPUTS.values()), ids=list(BAD_INPUTS))
    async def test_every_location_names_its_source_and_input(
        self, records_env: RecordsEnv, case: Bad
    ) -> None:
        citizen_id, _ = await records_env.register(address="Old House", date_of_birth="1990-02-03")
        response = await records_env.client.request(
            case.method,
            _placed(case.url, citizen_id),
            params=_placed(case.params, citizen_id),
            json=_placed(case.body, citizen_id),
            headers={**case.caller, **case.headers},
        )
        assert 400 <= response.status_code < 500, response.text
        assert response.headers["content-type"] == "application/problem+json"
        errors = response.json()["errors"]
        for error in errors:
            # A source, then at least the input's name.
            assert len(error["loc"]) >= 2, error
            assert error["loc"][0] in SOURCES, error
        assert sorted((e["loc"] for e in errors), key=str) == sorted(case.locs, key=str)


# Every list's cursor parameter (the event feed's ``after``), and who may read the list.
CURSORS = {
    ("/v1/policies", "cursor"): OWNER,
    ("/v1/policies/{agreement_id}/versions", "cursor"): OWNER,
    ("/v1/audit/entries", "cursor"): AUDITOR,
    ("/v1/audit/reports/usage", "cursor"): AUDITOR,
    ("/v1/citizens/{citizen_id}/access-log", "cursor"): PORTAL,
    ("/v1/citizens/{citizen_id}/consents", "cursor"): PORTAL,
    ("/v1/citizens/{citizen_id}/fields/{field}/history", "cursor"): WELFARE,
    ("/v1/subscriptions", "cursor"): WELFARE,
    ("/v1/events", "after"): WELFARE,
}


class TestEmptyCursors:
    async def test_the_document_says_min_length_1_where_an_empty_cursor_is_refused(
        self, records_env: RecordsEnv
    ) -> None:
        citizen_id, _ = await records_env.register(address="Old House")
        document = records_env.app.openapi()
        listed = {
            (path, parameter["name"])
            for path, operations in document["paths"].items()
            for parameter in operations.get("get", {}).get("parameters", [])
            if parameter["in"] == "query" and parameter["name"] in ("cursor", "after")
        }
        # Deliveries need a subscription of the caller's own; its cursor is read as the feed's.
        assert listed - set(CURSORS) == {("/v1/subscriptions/{subscription_id}/deliveries", "cursor")}
        for (path, name), caller in CURSORS.items():
            parameter = next(p for p in document["paths"][path]["get"]["parameters"] if p["name"] == name)
            url = path.format(agreement_id="welfare-reads-licence", citizen_id=citizen_id, field="address")
            response = await records_env.client.get(
                url, params={name: "", "purpose": "benefit-eligibility"}, headers=caller
            )
            refused = response.status_code == 422
            assert response.status_code in (200, 422), (path, response.text)
            assert parameter["schema"].get("minLength", 0) == (1 if refused else 0), (path, name)
            if refused:
                assert response.json()["errors"] == [{"loc": ["query", name], "msg": "invalid cursor"}]
