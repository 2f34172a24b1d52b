"""/openapi.json: the security scheme, problem+json for every status, examples that validate,
and the statuses each route declares against those it really answered in this test run."""

from __future__ import annotations

import json
import re
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

import httpx
import jwt as pyjwt
import pytest
from fastapi import FastAPI
from hypothesis import given
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from sqlalchemy.ext.asyncio import AsyncSession

from service.audit.search import TIME_QUERY_SCHEMA, parse_time
from service.audit.tiles import TILE_PATH_PATTERN, parse_tile_path
from service.catalog.loader import load_catalog
from service.errors import PROBLEM_JSON
from service.etags import IF_MATCH_LIST_PATTERN, IF_MATCH_PATTERN
from service.openapi import api_routes, declared_statuses
from service.records.validation import validated_values
from tests.conftest import REPO_ROOT
from tests.fixtures.statuses import answered
from tests.fixtures.tokens import register


@pytest.fixture
async def document(client: httpx.AsyncClient) -> dict[str, Any]:
    response = await client.get("/openapi.json")
    assert response.status_code == 200
    body: dict[str, Any] = response.json()
    return body


def operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method.upper(), path, operation)
        for path, methods in document["paths"].items()
        for method, operation in methods.items()
    ]


def validate(document: dict[str, Any], schema: dict[str, Any], instance: Any) -> list[str]:
    # The schema sits beside the document's components so that its "#/components/..." refs resolve.
    validator = Draft202012Validator({**schema, "components": document["components"]})
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(instance)]


class TestDocument:
    def test_oauth2_client_credentials_scheme(self, document: dict[str, Any]) -> None:
        scheme = document["components"]["securitySchemes"]["oauth2"]
        assert scheme["type"] == "oauth2"
        flow = scheme["flows"]["clientCredentials"]
        assert flow["tokenUrl"] == "/oauth/token"
        assert "citizens:read" in flow["scopes"]

    def test_authenticated_operations_name_their_scopes(self, document: dict[str, Any]) -> None:
        read = document["paths"]["/v1/citizens/{citizen_id}"]["get"]
        assert read["security"] == [{"oauth2": ["citizens:read"]}]
        assert "security" not in document["paths"]["/healthz"]["get"]

    def test_token_endpoint_has_a_form_schema_and_oauth_errors(self, document: dict[str, Any]) -> None:
        token = document["paths"]["/oauth/token"]["post"]
        form = token["requestBody"]["content"]["application/x-www-form-urlencoded"]
        assert form["schema"] == {"$ref": "#/components/schemas/TokenRequest"}
        schema = document["components"]["schemas"]["TokenRequest"]
        assert schema["required"] == ["grant_type"]
        assert {"client_assertion", "client_secret", "scope"} <= set(schema["properties"])
        assert (
            token["responses"]["401"]["content"]["application/json"]["example"]["error"] == "invalid_client"
        )

    def test_every_error_is_problem_json_never_fastapis_shape(self, document: dict[str, Any]) -> None:
        assert "HTTPValidationError" not in document["components"]["schemas"]
        for method, path, operation in operations(document):
            if path == "/oauth/token":
                continue
            for status, response in operation["responses"].items():
                if int(status) < 400:
                    continue
                media = response["content"]
                assert list(media) == [PROBLEM_JSON], (method, path, status)
                assert media[PROBLEM_JSON]["schema"] == {"$ref": "#/components/schemas/Problem"}
                example = media[PROBLEM_JSON]["example"]
                assert example["status"] == int(status)
                assert validate(document, media[PROBLEM_JSON]["schema"], example) == []

    def test_maps_keyed_by_a_pattern_refuse_other_keys(self, document: dict[str, Any]) -> None:
        """As the models do: pydantic writes ``patternProperties`` alone, which lets any key
        through, so each such map says ``additionalProperties: false`` too."""
        found: list[tuple[str, Any]] = []

        def walk(node: Any, where: str) -> None:
            if isinstance(node, dict):
                if "patternProperties" in node:
                    found.append((where, node.get("additionalProperties")))
                for key, value in node.items():
                    walk(value, f"{where}/{key}")
            elif isinstance(node, list):
                for index, value in enumerate(node):
                    walk(value, f"{where}/{index}")

        walk(document, "")
        assert len(found) >= 4
        assert [where for where, extra in found if extra is not False] == []

    def test_every_request_and_success_response_has_a_valid_example(self, document: dict[str, Any]) -> None:
        missing: list[str] = []
        invalid: list[str] = []
        for method, path, operation in operations(document):
            bodies = [("request", m) for m in operation.get("requestBody", {}).get("content", {}).values()]
            for status, response in operation["responses"].items():
                if status.startswith("2"):
                    bodies += [(status, m) for m in response.get("content", {}).values()]
            for where, media in bodies:
                if "example" not in media:
                    missing.append(f"{method} {path} {where}")
                    continue
                problems = validate(document, media.get("schema", {}), media["example"])
                invalid += [f"{method} {path} {where}: {p}" for p in problems]
        assert missing == []
        assert invalid == []

    def test_if_match_is_required_where_its_absence_is_428(self, document: dict[str, Any]) -> None:
        for method, path, operation in operations(document):
            headers = {p["name"].lower(): p for p in operation.get("parameters", []) if p["in"] == "header"}
            if "428" in operation["responses"]:
                assert headers["if-match"].get("required") is True, f"{method} {path}"
            elif "if-match" in headers:
                assert not headers["if-match"].get("required"), f"{method} {path}"

    def test_no_parameter_may_be_null(self, document: dict[str, Any]) -> None:
        """A query string, header or path carries text, and an optional parameter is left
        out. A parameter documented as nullable has a generated client or fuzzer send the
        text "null", which an If-Match or a cursor refuses."""
        nullable = [
            f"{method} {path} {parameter['in']} {parameter['name']}"
            for method, path, operation in operations(document)
            for parameter in operation.get("parameters", [])
            if '"null"' in json.dumps(parameter["schema"])
        ]
        assert nullable == []

    def test_if_match_documents_the_grammar_the_server_reads(self, document: dict[str, Any]) -> None:
        """Every If-Match carries the pattern ``parse_if_match`` reads (``tests/test_etags.py``):
        a value outside it is the 400 "If-Match must be ..."."""
        documented = {
            f"{method} {path}": (parameter["name"], parameter["schema"].get("pattern"))
            for method, path, operation in operations(document)
            for parameter in operation.get("parameters", [])
            if parameter["in"] == "header" and parameter["name"].lower() == "if-match"
        }
        assert documented == {
            # Replacing an agreement needs the version read: "*" is a 428 there.
            "PUT /v1/policies/{agreement_id}": ("If-Match", IF_MATCH_LIST_PATTERN),
            "DELETE /v1/policies/{agreement_id}": ("If-Match", IF_MATCH_PATTERN),
            "DELETE /v1/citizens/{citizen_id}": ("If-Match", IF_MATCH_PATTERN),
            "PATCH /v1/citizens/{citizen_id}/fields": ("If-Match", IF_MATCH_PATTERN),
        }

    def test_the_tile_path_documents_the_grammar_the_server_reads(self, document: dict[str, Any]) -> None:
        """Anything else is the 400 "Not a tile path" (``tests/audit/test_tiles.py``)."""
        parameters = document["paths"]["/v1/audit/tile/{tile}"]["get"]["parameters"]
        (parameter,) = [p for p in parameters if p["in"] == "path"]
        assert parameter["name"] == "tile"
        assert parameter["schema"]["pattern"] == TILE_PATH_PATTERN

    def test_the_checkpoint_and_its_key_need_audit_verify_or_nothing(self, document: dict[str, Any]) -> None:
        """Both are served without a token under ``TELLONCE_AUDIT_PUBLIC_CHECKPOINT=true``."""
        for path in ("/v1/audit/checkpoint", "/v1/audit/verifier-key"):
            assert document["paths"][path]["get"]["security"] == [{"oauth2": ["audit:verify"]}, {}]

    def test_proof_numbers_are_documented_as_the_server_reads_them(self, document: dict[str, Any]) -> None:
        """A leaf index or tree size is a non-negative integer of at most 2^63-1 (a tree
        size at least 1); any other text is a 422 (``tests/audit/test_api.py``,
        ``TestProofNumbers``)."""
        documented = {
            (path, p["name"]): {key: value for key, value in p["schema"].items() if key != "title"}
            for path in ("/v1/audit/entries/{index}/proof", "/v1/audit/consistency")
            for p in document["paths"][path]["get"]["parameters"]
            if p["in"] in ("path", "query")
        }

        def integer(minimum: int) -> dict[str, Any]:
            return {"type": "integer", "minimum": minimum, "maximum": 2**63 - 1}

        assert documented == {
            ("/v1/audit/entries/{index}/proof", "index"): integer(0),
            ("/v1/audit/entries/{index}/proof", "tree_size"): integer(1),
            ("/v1/audit/consistency", "first"): integer(0),
            ("/v1/audit/consistency", "second"): integer(0),
        }

    def test_the_tile_path_has_examples_the_server_reads(self, document: dict[str, Any]) -> None:
        """A full and a partial hash tile: a generator starts from them (the pattern alone
        gave Schemathesis nothing it would send, and failed its health check)."""
        parameters = document["paths"]["/v1/audit/tile/{tile}"]["get"]["parameters"]
        (parameter,) = [p for p in parameters if p["in"] == "path"]
        examples = [example["value"] for example in parameter["examples"].values()]
        assert examples == ["0/000", "0/000.p/8"]
        for example in examples:
            assert re.fullmatch(parameter["schema"]["pattern"], example)
            parse_tile_path(example)

    def test_audit_times_are_documented_as_dates_and_times(self, document: dict[str, Any]) -> None:
        """``since`` and ``until`` are an RFC 3339 date-time or a date; any other text is the
        400 "since is not an ISO 8601 date or time" (``TestAuditTimes`` reads every one)."""
        for path in ("/v1/audit/entries", "/v1/audit/export", "/v1/audit/reports/usage"):
            schemas = {p["name"]: p["schema"] for p in document["paths"][path]["get"]["parameters"]}
            for name in ("since", "until"):
                assert schemas[name]["anyOf"] == TIME_QUERY_SCHEMA["anyOf"], f"{path} {name}"
                assert schemas[name]["maxLength"] == 40

    def test_success_responses_declare_the_headers_the_contract_promises(
        self, document: dict[str, Any]
    ) -> None:
        """DESIGN.md: reads and writes of a citizen, and an agreement, return its ETag, which
        the next write sends in If-Match (a replacement without it is 428); a POST says where
        it put what it made. A client generated from the document sees only what it declares
        (``tests/records/test_citizens_api.py`` and ``tests/policy/test_api.py`` check the
        server sends them)."""
        declared = {
            f"{method} {path} {status}": sorted(response["headers"])
            for method, path, operation in operations(document)
            for status, response in operation["responses"].items()
            if status.startswith("2") and "headers" in response
        }
        assert declared == {
            "POST /v1/citizens 201": ["ETag", "Location"],
            "GET /v1/citizens/{citizen_id} 200": ["ETag"],
            "PATCH /v1/citizens/{citizen_id}/fields 200": ["ETag"],
            "POST /v1/policies 201": ["ETag", "Location"],
            "GET /v1/policies/{agreement_id} 200": ["ETag"],
            "PUT /v1/policies/{agreement_id} 200": ["ETag"],
            "DELETE /v1/policies/{agreement_id} 200": ["ETag"],
            # RFC 6749 5.1: a token response is never cached (``TestTokenEndpointDocument``).
            "POST /oauth/token 200": ["Cache-Control", "Pragma"],
        }
        etag = document["paths"]["/v1/citizens/{citizen_id}"]["get"]["responses"]["200"]["headers"]["ETag"]
        assert etag["required"] is True
        assert re.fullmatch(etag["schema"]["pattern"], '"3"')

    def test_every_429_and_503_declares_retry_after(self, document: dict[str, Any]) -> None:
        missing = [
            f"{method} {path} {status}"
            for method, path, operation in operations(document)
            for status, response in operation["responses"].items()
            if status in ("429", "503") and "Retry-After" not in response.get("headers", {})
        ]
        assert missing == []

    def test_the_access_log_declares_no_gone(self, document: dict[str, Any]) -> None:
        """An erased citizen's access log answers 200 (the audit stays, and with it who
        asked after the erasure: ``tests/records/test_erased_audited.py``), so it declares
        404 for an unknown citizen and no 410."""
        responses = document["paths"]["/v1/citizens/{citizen_id}/access-log"]["get"]["responses"]
        assert "404" in responses
        assert "410" not in responses

    def test_the_registration_example_is_valid_for_the_shipped_catalog(
        self, document: dict[str, Any]
    ) -> None:
        """Its fields are the demo catalog's, with values of their types, so a department
        trying the example on `make run` gets a 201, not a 422."""
        catalog = load_catalog(REPO_ROOT / "policies")
        operation = document["paths"]["/v1/citizens"]["post"]
        example = operation["requestBody"]["content"]["application/json"]["example"]
        submitted = {"national_id": example["national_id"], **example["fields"]}
        assert set(validated_values(catalog, submitted, ("body",))) == set(submitted)
        response = operation["responses"]["201"]["content"]["application/json"]["example"]
        assert set(response["fields"]) == set(example["fields"])


TOKEN = ("/oauth/token", "post")


def token_responses(document: dict[str, Any]) -> dict[str, Any]:
    responses: dict[str, Any] = document["paths"][TOKEN[0]][TOKEN[1]]["responses"]
    return responses


def assert_as_documented(document: dict[str, Any], response: httpx.Response) -> dict[str, Any]:
    """``response`` from the token endpoint has the media type, body and headers its status
    declares; its declared example."""
    declared = token_responses(document)[str(response.status_code)]
    ((media, content),) = declared["content"].items()
    assert response.headers["content-type"] == media
    assert validate(document, content["schema"], response.json()) == []
    for name, header in declared["headers"].items():
        assert header["required"] is True
        assert validate(document, header["schema"], response.headers[name]) == [], name
    example: dict[str, Any] = content["example"]
    return example


class TestTokenEndpointDocument:
    """``POST /oauth/token`` declares what it really answers (RFC 6749 5.1 and 5.2): the
    token response, never cached, the RFC 6749 errors, and the 401's challenge."""

    def test_declares_its_token_response_and_headers(self, document: dict[str, Any]) -> None:
        responses = token_responses(document)
        ok = responses["200"]["content"]["application/json"]
        assert ok["schema"] == {"$ref": "#/components/schemas/TokenResponse"}
        schema = document["components"]["schemas"]["TokenResponse"]
        assert sorted(schema["required"]) == ["access_token", "expires_in", "scope", "token_type"]
        assert schema["additionalProperties"] is False
        for status, response in responses.items():
            if status == "431":
                continue  # the server's refusal of a head too long, before the endpoint's layers
            headers = response["headers"]
            assert headers["Cache-Control"]["schema"] == {"type": "string", "const": "no-store"}, status
            assert headers["Pragma"]["schema"] == {"type": "string", "const": "no-cache"}, status
        challenge = responses["401"]["headers"]["WWW-Authenticate"]
        assert challenge["schema"] == {"type": "string", "const": 'Basic realm="tellonce"'}
        for status in ("400", "401", "413"):
            assert responses[status]["content"]["application/json"]["schema"] == {
                "$ref": "#/components/schemas/OAuthError"
            }

    def test_the_example_token_verifies_against_the_example_key_set(self, document: dict[str, Any]) -> None:
        """A real access token, signed by the key the JWKS example publishes, for the issuer
        the metadata example names: a developer can try their verification code on it."""
        token = token_responses(document)["200"]["content"]["application/json"]["example"]["access_token"]
        jwks = document["paths"]["/.well-known/jwks.json"]["get"]["responses"]["200"]
        metadata = document["paths"]["/.well-known/oauth-authorization-server"]["get"]["responses"]["200"]
        header = pyjwt.get_unverified_header(token)
        assert header["typ"] == "at+jwt"
        key = pyjwt.PyJWKSet.from_dict(jwks["content"]["application/json"]["example"])[header["kid"]]
        claims = pyjwt.decode(
            token,
            key.key,
            algorithms=["ES256"],
            audience="tellonce",
            issuer=metadata["content"]["application/json"]["example"]["issuer"],
            options={"verify_exp": False, "verify_iat": False},
        )
        example = token_responses(document)["200"]["content"]["application/json"]["example"]
        assert claims["scope"] == example["scope"]
        assert claims["exp"] - claims["iat"] == example["expires_in"]


async def test_the_token_endpoint_answers_as_documented(
    app: FastAPI, client: httpx.AsyncClient, session: AsyncSession
) -> None:
    """Each declared answer is one the endpoint gave here, headers and all; each error's
    example is the very body a request got."""
    document = (await client.get("/openapi.json")).json()
    created = await register(session, "dwp", "consumer")
    assert created.client_secret is not None
    credentials = (created.client_id, created.client_secret)
    grant = {"grant_type": "client_credentials"}

    issued = await client.post(
        "/oauth/token", data={**grant, "scope": "citizens:read citizens:lookup"}, auth=credentials
    )
    assert issued.status_code == 200
    example = assert_as_documented(document, issued)
    assert set(issued.json()) == set(example)
    assert issued.json()["expires_in"] == example["expires_in"] == app.state.settings.access_token_ttl_seconds
    assert issued.json()["scope"] == example["scope"]

    malformed = await client.post("/oauth/token", data={"scope": "citizens:read"}, auth=credentials)
    assert malformed.status_code == 400
    assert malformed.json() == assert_as_documented(document, malformed)

    refused = await client.post("/oauth/token", data=grant, auth=(created.client_id, "wrong"))
    assert refused.status_code == 401
    assert refused.json() == assert_as_documented(document, refused)

    too_large = await client.post(
        "/oauth/token",
        content=b"grant_type=client_credentials&scope=" + b"a" * app.state.settings.max_body_bytes,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert too_large.status_code == 413
    assert too_large.json() == assert_as_documented(document, too_large)


# RFC 3339 offsets, as a generator writes them: Z or +hh:mm / -hh:mm.
_OFFSETS = st.integers(min_value=-(24 * 60 - 1), max_value=24 * 60 - 1).map(
    lambda minutes: timezone(timedelta(minutes=minutes))
)


class TestAuditTimes:
    """Every value of the documented formats is a time the audit search reads."""

    @given(
        st.datetimes(min_value=datetime(2, 1, 1), max_value=datetime(9998, 12, 31)), _OFFSETS, st.booleans()
    )
    def test_every_rfc_3339_date_time_is_read(self, moment: datetime, offset: timezone, zulu: bool) -> None:
        text = moment.replace(tzinfo=offset).isoformat()
        if zulu:
            text = moment.isoformat() + "Z"
        parsed = parse_time(text, "since")
        assert parsed is not None
        assert parsed.tzinfo is UTC

    @given(st.dates())
    def test_every_date_is_its_midnight_utc(self, day: date) -> None:
        assert parse_time(day.isoformat(), "until") == datetime(day.year, day.month, day.day, tzinfo=UTC)


async def _unauthenticated_sweep(app: FastAPI, client: httpx.AsyncClient) -> None:
    """Every route once without a token, so this test has answers to compare even alone."""
    for path, route in api_routes(app):
        for method in route.methods or ():
            await client.request(method, path.replace("{", "").replace("}", ""))


@pytest.mark.after_all
async def test_statuses_answered_in_this_run_are_declared(app: FastAPI, client: httpx.AsyncClient) -> None:
    await _unauthenticated_sweep(app, client)
    routes = {(method, path): route for path, route in api_routes(app) for method in route.methods or ()}
    seen = answered()
    undeclared = sorted(
        f"{method} {path} answered {status}"
        for method, path, status in seen
        if (method, path) in routes
        and status >= 400
        and status not in declared_statuses(method, path, routes[(method, path)])
    )
    compared = {(method, path) for method, path, _status in seen if (method, path) in routes}
    assert undeclared == []
    # The sweep alone reaches every route; a full run adds each route's own refusals.
    assert compared == set(routes)
