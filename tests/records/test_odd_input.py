"""Odd input to every citizen route is a 4xx problem that echoes no value.

A table of requests, each a valid one with one part replaced by an odd value: wrong JSON
types, nulls, huge and non-finite numbers, deep nesting, lone surrogates, NUL, overlong
strings, repeated query parameters, empty and unknown field lists, unknown purposes and
odd ``If-Match`` forms. Each answer must be below 500, ``application/problem+json`` with
``type``, ``title``, ``status`` and ``detail``, and hold neither the value sent nor any
value of the citizen (field names may appear: they are not personal data).
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx

from tests.records.conftest import RecordsEnv, as_
from tests.records.test_citizens_api import PROBLEM

REGISTRAR = as_("register", "registrar")
REGISTER_WRITER = as_("register", "writer")
WELFARE = as_("welfare", "consumer")
PORTAL = as_("portal", "citizen-portal")
# A value that must never come back in an error: as sent, and as JSON escapes it.
MARKER = "Zq\u00e9Marker\u2603"
MARKER_FORMS = (MARKER, "Zq\\u00e9Marker\\u2603", "ZqMarker", "Zq%C3%A9Marker")
# The registered citizen's own values: no refusal may show them either.
SECRET_NAME, SECRET_ADDRESS = "Sennacherib", "7 Quillwort Row"
DEEP = "[" * 5000 + "]" * 5000

# JSON text for a member's value (raw, so non-finite numbers and escapes go as they are).
ODD_JSON = [
    "null",
    "true",
    "[]",
    "{}",
    "0",
    "-0",
    "1e999",
    "-1e999",
    "NaN",
    "Infinity",
    "-Infinity",
    "123456789012345678901234567890",
    "1.5",
    DEEP,
    '"\\ud800"',
    '"\\udfff\\ud800"',
    '"\\u0000"',
    '"' + "x" * 70_000 + '"',
    '"\\u202e\\u200b"',
    f'"{MARKER}"',
    f'["{MARKER}"]',
    f'{{"{MARKER[:2]}": "{MARKER}"}}',
]


def _json_object(members: dict[str, str]) -> str:
    return "{" + ", ".join(f'"{name}": {value}' for name, value in members.items()) + "}"


def _variants(members: dict[str, str]) -> Iterator[str]:
    """``members`` with each one's value replaced by each odd value, and the body as a
    whole replaced by odd JSON."""
    for name in members:
        for odd in ODD_JSON:
            yield _json_object({**members, name: odd})
    yield from ODD_JSON
    yield _json_object({**members, "extra": f'"{MARKER}"'})


def _body_requests(citizen_id: str) -> Iterator[tuple[str, str, str, dict[str, str]]]:
    base = f"/v1/citizens/{citizen_id}"
    bodies: list[tuple[str, str, dict[str, str], dict[str, str]]] = [
        ("POST", "/v1/citizens", {"national_id": '"QQ1"', "fields": '{"given_name": "A"}'}, REGISTRAR),
        (
            "POST",
            "/v1/citizens/lookup",
            {"national_id": '"QQ1"', "purpose": '"benefit-eligibility"'},
            WELFARE,
        ),
        (
            "PATCH",
            f"{base}/fields",
            {"fields": '{"address": "A"}', "reason": '"moved"'},
            REGISTER_WRITER,
        ),
        (
            "POST",
            f"{base}/verify",
            {"purpose": '"benefit-eligibility"', "claims": '{"date_of_birth": {"lte": "2000-01-01"}}'},
            WELFARE,
        ),
        (
            "POST",
            "/v1/citizens/batch-get",
            {"ids": f'["{citizen_id}"]', "purpose": '"benefit-eligibility"'},
            WELFARE,
        ),
        ("POST", f"{base}/consents", {"agreement": '"welfare-reads-identity"'}, PORTAL),
    ]
    for method, url, members, headers in bodies:
        for body in _variants(members):
            yield method, url, body, headers
    # Odd values inside the nested objects too: a field's value, a claim's operand.
    for odd in ODD_JSON:
        fields = _json_object({"given_name": odd, "date_of_birth": odd})
        yield "POST", "/v1/citizens", _json_object({"national_id": '"QQ2"', "fields": fields}), REGISTRAR
        fields = _json_object({"address": odd})
        patch = _json_object({"fields": fields, "reason": '"r"'})
        yield "PATCH", f"{base}/fields", patch, REGISTER_WRITER
        for operator in ("eq", "lte", "gte", "in", "between"):
            claims = _json_object({"date_of_birth": _json_object({operator: odd})})
            verify = _json_object({"purpose": '"benefit-eligibility"', "claims": claims})
            yield "POST", f"{base}/verify", verify, WELFARE


def _query_requests(citizen_id: str, doomed_id: str) -> Iterator[tuple[str, str, dict[str, str]]]:
    """Odd query and path text; the erasures go to ``doomed_id``, which an odd value that
    is still valid erases."""
    base, doomed = f"/v1/citizens/{citizen_id}", f"/v1/citizens/{doomed_id}"
    odd_text = ["", "%00", "%ED%A0%80", "%FF", "x" * 5000, MARKER, "%E2%80%AE", "a,,b", ",", "unknown-x"]
    for text in odd_text:
        yield "GET", f"{base}?purpose={text}", WELFARE
        yield "GET", f"{base}?purpose=benefit-eligibility&fields={text}", WELFARE
        yield "GET", f"{base}/fields/address/history?purpose={text}", WELFARE
        yield "GET", f"{base}/fields/{text or 'x'}/history?purpose=benefit-eligibility", WELFARE
        yield "GET", f"{base}/fields/address/history?purpose=fraud-investigation&cursor={text}", WELFARE
        yield "DELETE", f"{doomed}?reason={text}&legal_basis=x", REGISTRAR
        yield "DELETE", f"{doomed}?reason=court-order&legal_basis={text}", REGISTRAR
        yield "DELETE", f"{doomed}?reason=court-order&legal_basis=x&purpose={text}", REGISTRAR
        yield "GET", f"{base}/access-log?cursor={text}", PORTAL
        yield "GET", f"{base}/access-log?proofs={text}", PORTAL
        yield "GET", f"/v1/citizens/{text or 'x'}/access-log", PORTAL
        yield "GET", f"{base}/consents?cursor={text}", PORTAL
        yield "POST", f"{base}/objections/{text or 'x'}", PORTAL
    for repeated in ("purpose=benefit-eligibility&purpose=tax-administration", "fields=a&fields=b"):
        yield "GET", f"{base}?purpose=benefit-eligibility&{repeated}", WELFARE
    yield "GET", f"{base}?fields=address", WELFARE
    yield "GET", f"{base}/access-log?limit=0", PORTAL
    yield "GET", f"{base}/access-log?limit=99999999999999999999", PORTAL


ODD_IF_MATCH = [
    'W/"1"',
    'W/"1", "2"',
    "",
    ",",
    '"1"x',
    "1",
    '"\u00e9"',
    "W/*",
    '*, "1"',
    '"1\x00"',
    '"' + "9" * 400 + '"',
]


def assert_problem(response: httpx.Response, what: str, *, names: bool = False) -> None:
    """An odd value that is still valid (a marker as a national id) may succeed; anything
    else is a 4xx problem that echoes nothing. With ``names`` the odd text went where a
    name goes (a purpose, a field's name), which a refusal may quote."""
    status, text = response.status_code, response.text
    if status < 300:
        return
    content_type = response.headers.get("content-type")
    body = response.json() if content_type == PROBLEM else None
    assert 400 <= status < 500, (what, status, text[:300])
    assert content_type == PROBLEM, what
    assert isinstance(body, dict), what
    for member in ("type", "title", "status", "detail"):
        assert body.get(member), (what, member, body)
    assert body["status"] == status, what
    for value in (SECRET_NAME, SECRET_ADDRESS) if names else (*MARKER_FORMS, SECRET_NAME, SECRET_ADDRESS):
        assert value not in text, (what, value, text[:300])


class TestOddInput:
    async def test_every_route_answers_a_problem_that_echoes_nothing(self, records_env: RecordsEnv) -> None:
        citizen_id, _ = await records_env.register(given_name=SECRET_NAME, address=SECRET_ADDRESS)
        client = records_env.client
        for method, url, body, headers in _body_requests(citizen_id):
            response = await client.request(
                method,
                url,
                content=body.encode("utf-8"),
                headers={**headers, "Content-Type": "application/json"},
            )
            assert_problem(response, f"{method} {url} {body[:120]}")
        doomed_id, _ = await records_env.register(given_name=SECRET_NAME)
        for method, url, headers in _query_requests(citizen_id, doomed_id):
            response = await client.request(method, url, headers=headers)
            assert_problem(response, f"{method} {url[:160]}", names=True)

    async def test_odd_if_match_is_412_or_400_and_writes_nothing(self, records_env: RecordsEnv) -> None:
        citizen_id, _ = await records_env.register(address=SECRET_ADDRESS)
        for if_match in ODD_IF_MATCH:
            response = await records_env.client.patch(
                f"/v1/citizens/{citizen_id}/fields",
                json={"fields": {"address": MARKER}, "reason": "moved"},
                headers=[(b"x-test-as", b"register:writer"), (b"if-match", if_match.encode("utf-8"))],
            )
            assert response.status_code in (400, 412), (if_match, response.text)
            assert_problem(response, if_match)
        read = await records_env.client.get(
            f"/v1/citizens/{citizen_id}",
            params={"fields": "address", "purpose": "benefit-eligibility"},
            headers=WELFARE,
        )
        assert read.json()["fields"]["address"]["value"] == SECRET_ADDRESS
