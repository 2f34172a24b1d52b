"""The client library against the live ``/openapi.json``: every operation has a client
method, and every schema the server declares has a client model of the same shape.

When this fails after a change to the API, change ``clients/python`` to match (a new
endpoint needs a method and a row in ``OPERATIONS``; a changed schema, its model).
"""

from __future__ import annotations

import inspect
from typing import Any

import httpx
import pytest
from tellonce_client import TellonceClient
from tellonce_client import models as client_models

from tests.client.conftest import ClientSite

pytestmark = pytest.mark.e2e

# (method, path) -> the TellonceClient method that calls it.
OPERATIONS: dict[tuple[str, str], str] = {
    ("GET", "/healthz"): "healthz",
    ("GET", "/readyz"): "readyz",
    ("GET", "/v1/catalog"): "catalog",
    ("GET", "/v1/policies"): "list_agreements",
    ("POST", "/v1/policies"): "create_agreement",
    ("GET", "/v1/policies/{agreement_id}"): "get_agreement",
    ("PUT", "/v1/policies/{agreement_id}"): "replace_agreement",
    ("DELETE", "/v1/policies/{agreement_id}"): "revoke_agreement",
    ("GET", "/v1/policies/{agreement_id}/versions"): "agreement_versions",
    ("POST", "/v1/decisions/explain"): "explain",
    ("POST", "/v1/policies/simulate"): "simulate",
    ("POST", "/oauth/token"): "auth",
    ("GET", "/v1/audit/checkpoint"): "checkpoint",
    ("GET", "/v1/audit/verifier-key"): "verifier_key",
    ("GET", "/v1/audit/entries/{index}/proof"): "inclusion_proof",
    ("GET", "/v1/audit/consistency"): "consistency_proof",
    ("GET", "/v1/audit/tile/{tile}"): "tile",
    ("GET", "/v1/audit/entries"): "audit_entries",
    ("GET", "/v1/audit/export"): "export_audit",
    ("GET", "/v1/audit/reports/usage"): "usage_report",
    ("GET", "/v1/citizens/{citizen_id}/access-log"): "access_log",
    ("POST", "/v1/citizens"): "register_citizen",
    ("POST", "/v1/citizens/lookup"): "lookup",
    ("POST", "/v1/citizens/batch-get"): "batch_get",
    ("GET", "/v1/citizens/{citizen_id}"): "read_citizen",
    ("DELETE", "/v1/citizens/{citizen_id}"): "erase_citizen",
    ("PATCH", "/v1/citizens/{citizen_id}/fields"): "write_fields",
    ("GET", "/v1/citizens/{citizen_id}/fields/{field}/history"): "field_history",
    ("POST", "/v1/citizens/{citizen_id}/verify"): "verify",
    ("POST", "/v1/subscriptions"): "subscribe",
    ("GET", "/v1/subscriptions"): "list_subscriptions",
    ("GET", "/v1/subscriptions/{subscription_id}"): "get_subscription",
    ("DELETE", "/v1/subscriptions/{subscription_id}"): "delete_subscription",
    ("POST", "/v1/subscriptions/{subscription_id}/disable"): "disable_subscription",
    ("POST", "/v1/subscriptions/{subscription_id}/enable"): "enable_subscription",
    ("POST", "/v1/subscriptions/{subscription_id}/rotate-secret"): "rotate_secret",
    ("GET", "/v1/subscriptions/{subscription_id}/deliveries"): "deliveries",
    ("POST", "/v1/subscriptions/{subscription_id}/redeliver"): "redeliver",
    ("GET", "/v1/events"): "events",
    ("POST", "/v1/cases/{case_ref}/close"): "close_case",
    ("POST", "/v1/citizens/{citizen_id}/consents"): "give_consent",
    ("PATCH", "/v1/citizens/{citizen_id}/consents/{consent_id}"): "change_consent",
    ("GET", "/v1/citizens/{citizen_id}/consents"): "list_consents",
    ("POST", "/v1/citizens/{citizen_id}/objections/{agreement}"): "object_to",
    ("DELETE", "/v1/citizens/{citizen_id}/objections/{agreement}"): "withdraw_objection",
    ("GET", "/v1/citizens/{citizen_id}/objections"): "list_objections",
    ("GET", "/v1/clients"): "list_clients",
    ("POST", "/v1/clients"): "create_client",
    ("POST", "/v1/clients/{client_id}/disable"): "disable_client",
}
# Documents for machines, not part of a department's API surface.
NOT_CLIENT_CALLS = {
    ("GET", "/.well-known/jwks.json"),
    ("GET", "/.well-known/evidence-keys.json"),
    ("GET", "/.well-known/oauth-authorization-server"),
}
# FastAPI's own validation-error shapes: the client reads every error as a Problem instead.
SERVER_ONLY_SCHEMAS = {"HTTPValidationError", "ValidationError"}
# The token endpoint's form body, its token response and its RFC 6749 error: the client's
# auth module writes the form and reads the answer and the error itself, so they have no model.
SERVER_ONLY_SCHEMAS |= {"TokenRequest", "TokenResponse", "OAuthError"}
# Read more widely than the server writes them: the client takes any RFC 9457 problem (every
# member optional, from a proxy or gateway too), so only the property names are compared.
WIDER_THAN_SERVER = {"Problem"}
# What a schema's shape is; titles, descriptions, defaults and length limits are documentation.
SHAPE_KEYS = {
    "type",
    "format",
    "items",
    "anyOf",
    "$ref",
    "enum",
    "const",
    "additionalProperties",
    "properties",
}


def _shape(schema: Any) -> Any:
    if isinstance(schema, list):
        return [_shape(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    # "additionalProperties": true says what an absent key says (any value is allowed);
    # false beside "patternProperties" is a map whose keys follow a pattern, which (like a
    # length limit) the client leaves to the server to check.
    keyed = "patternProperties" in schema
    return {
        key: _shape(value)
        for key, value in schema.items()
        if key in SHAPE_KEYS
        and not (key == "additionalProperties" and (value is True or (keyed and value is False)))
    }


def _model_shape(schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "properties": {name: _shape(prop) for name, prop in schema.get("properties", {}).items()},
        "required": sorted(schema.get("required", [])),
    }


@pytest.fixture(scope="module")
def live_openapi(client_site: ClientSite) -> dict[str, Any]:
    response = httpx.get(f"{client_site.url}/openapi.json", timeout=10)
    assert response.status_code == 200
    document: dict[str, Any] = response.json()
    return document


class TestOperations:
    def test_every_operation_has_a_client_method(self, live_openapi: dict[str, Any]) -> None:
        served = {
            (method.upper(), path)
            for path, operations in live_openapi["paths"].items()
            for method in operations
        }
        missing = sorted(served - set(OPERATIONS) - NOT_CLIENT_CALLS)
        assert not missing, f"operations without a client method: {missing}"
        gone = sorted(set(OPERATIONS) - served)
        assert not gone, f"client methods for operations the server no longer has: {gone}"

    def test_every_named_method_exists(self) -> None:
        client = TellonceClient("http://127.0.0.1:1", None)
        for name in OPERATIONS.values():
            assert hasattr(client, name), name
            if name != "auth":
                assert inspect.iscoroutinefunction(getattr(client, name)) or inspect.isasyncgenfunction(
                    getattr(client, name)
                ), name

    def test_every_parameter_has_a_client_argument(self, live_openapi: dict[str, Any]) -> None:
        header_arguments = {"x-case-ref": "case_ref", "if-match": "if_match"}
        missing = []
        for path, operations in live_openapi["paths"].items():
            for method, operation in operations.items():
                name = OPERATIONS.get((method.upper(), path))
                if name is None or name == "auth":
                    continue
                signature = inspect.signature(getattr(TellonceClient, name))
                takes_any = any(
                    p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values()
                )
                for parameter in operation.get("parameters", []):
                    if parameter["in"] == "header" and parameter["name"].lower() == "x-on-behalf-of":
                        # Sent on every call by the client itself (its ``on_behalf_of``).
                        assert "on_behalf_of" in inspect.signature(TellonceClient).parameters
                        continue
                    argument = (
                        header_arguments.get(parameter["name"].lower(), parameter["name"])
                        if parameter["in"] == "header"
                        else parameter["name"]
                    )
                    if argument not in signature.parameters and not takes_any:
                        missing.append(f"{method.upper()} {path}: {parameter['in']} {parameter['name']}")
        assert not missing, f"parameters the client cannot send: {missing}"


class TestSchemas:
    def test_every_server_schema_has_a_client_model(self, live_openapi: dict[str, Any]) -> None:
        names = set(live_openapi["components"]["schemas"]) - SERVER_ONLY_SCHEMAS
        missing = sorted(name for name in names if not hasattr(client_models, name))
        assert not missing, f"schemas without a client model: {missing}"

    def test_client_models_have_the_server_shapes(self, live_openapi: dict[str, Any]) -> None:
        server_schemas = live_openapi["components"]["schemas"]
        differences = []
        for name, schema in sorted(server_schemas.items()):
            if name in SERVER_ONLY_SCHEMAS:
                continue
            model = getattr(client_models, name)
            mine = model.model_json_schema(ref_template="#/components/schemas/{model}")
            if name in WIDER_THAN_SERVER:
                if set(mine["properties"]) != set(schema["properties"]) or mine.get("required"):
                    differences.append(f"{name}: server {sorted(schema['properties'])}, client {mine}")
                continue
            if _model_shape(mine) != _model_shape(schema):
                differences.append(f"{name}:\n  server {_model_shape(schema)}\n  client {_model_shape(mine)}")
        assert not differences, "client models differ from the server:\n" + "\n".join(differences)

    def test_a_changed_schema_is_caught(self, live_openapi: dict[str, Any]) -> None:
        # The comparison itself must see a difference: drop one property from a server schema.
        schema = dict(live_openapi["components"]["schemas"]["CitizenOut"])
        schema["properties"] = {k: v for k, v in schema["properties"].items() if k != "withheld"}
        mine = client_models.CitizenOut.model_json_schema(ref_template="#/components/schemas/{model}")
        assert _model_shape(mine) != _model_shape(schema)
