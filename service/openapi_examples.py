"""Examples in the OpenAPI document: one per request body and per success response.

They use the demo government's names (``policies/``) so that a developer can try them
against ``make run``. ``tests/test_openapi.py`` validates each against its route's schema.
"""

from __future__ import annotations

import json
from typing import Any

from service.audit.query import csv_header, csv_line

CITIZEN = "5f0c3b7e-8d2a-4c1e-9b6f-2a7d4e8c1f03"
AT = "2026-11-30T09:15:02.481Z"

_AGREEMENT_IN: dict[str, Any] = {
    "id": "licence-status-for-benefits",
    "consumer": "dwp",
    "fields": ["licence_status"],
    "actions": ["read", "subscribe"],
    "purposes": ["benefit-eligibility"],
    "legal_basis": "Social Security Administration Act 1992, s.122",
    "valid_from": "2026-01-01",
    "valid_until": "2027-12-31",
    "when": 'citizen.status == "active"',
    "require_case_ref": False,
    "effect": "permit",
    "reason": "Mobility benefit claims check the licence status",
}
_AGREEMENT_OUT: dict[str, Any] = {
    **{k: v for k, v in _AGREEMENT_IN.items() if k != "reason"},
    "owner": "dvla",
    "version": 3,
    "status": "active",
    "author": "dvla-owner-client",
    "reason": "Mobility benefit claims check the licence status",
    "created_at": AT,
}
_FIELD = {"value": "full", "version": 4, "updated_at": AT, "owner": "dvla"}
_WITHHELD = [{"field": "tax_code", "reason": "no agreement permits dwp to read tax_code"}]
_ENTRY: dict[str, Any] = {
    "time": AT,
    "request_id": "6f1c2b9a4d3e4f5a8b7c6d5e4f3a2b1c",
    "client_id": "dwp-benefits",
    "department": "dwp",
    "on_behalf_of": "officer 4411",
    "action": "read",
    "citizen_id": CITIZEN,
    "owners": ["dvla"],
    "fields_requested": ["licence_status"],
    "fields_released": ["licence_status"],
    "decision": "permit",
    "reasons": [
        {
            "field": "licence_status",
            "effect": "permit",
            "agreement": "licence-status-for-benefits",
            "version": 3,
            "reason": "permitted",
        }
    ],
    "purpose": "benefit-eligibility",
    "case_ref": "PIP-2026-0042",
    "legal_basis": ["Social Security Administration Act 1992, s.122"],
    "status": 200,
    "source": "10.0.4.17",
}
_PROOF = {
    "leaf_index": 41,
    "tree_size": 1000,
    "leaf_hash": "q3Yw2d1b0C9hS0fA3rXo4p6m9bT2x1uKcV8nE5jL7zQ=",
    "hashes": ["Zm9vYmFyYmF6cXV4cXV1eGNvcmdlZ3JhdWx0Z2FycGx5PQ=="],
    "entry": _ENTRY,
}
_SUBSCRIPTION = {
    "id": "2f6c1a9e-4b7d-4e21-8c3a-9d5e0f1b2c74",
    "type": "citizen.fields_changed",
    "department": "dwp",
    "fields": ["address", "date_of_death"],
    "purpose": "benefit-payment",
    "webhook_url": "https://dwp.example.gov.uk/hooks/tellonce",
    "status": "active",
    "created_at": AT,
    "previous_secret_expires_at": None,
}
_EVENT = {
    "event_id": "8a1d4c2e-7f3b-4a96-b5e0-3c9f6d2e1a08",
    "citizen_id": CITIZEN,
    "fields": ["address"],
    "owner": "council",
    "occurred_at": AT,
}

_CONSENT: dict[str, Any] = {
    "id": "6b0e3f52-3c1d-4a0e-9a43-2f7d1c9e8b10",
    "citizen_id": CITIZEN,
    "agreement": "benefit-status-for-discretionary-support",
    "consumer": "council",
    "purpose": "discretionary-support",
    "fields": ["benefit_status"],
    "actions": ["read"],
    "status": "active",
    "created_at": AT,
    "expires_at": "2027-11-30T00:00:00Z",
    "data_life": "P90D",
    "signature": (
        "eyJhbGciOiJFUzI1NiIsImtpZCI6IjIwMjYxMjAyVDA4MDAwMFotYWJjZCIsInR5cCI6ImNvbnNlbnQrand0In0.e30.c2ln"
    ),
}
_OBJECTION: dict[str, Any] = {
    "citizen_id": CITIZEN,
    "agreement": "open-register-for-marketing",
    "consumer": "marketing-bureau",
    "fields": ["address"],
    "created_at": AT,
}

_CLIENT: dict[str, Any] = {
    "client_id": "tc_Jq3vX8mW2nR5tY7pL0aB4cDe",
    "name": "DWP benefits case system",
    "department": "dwp",
    "roles": ["consumer"],
    "auth_method": "client_secret",
    "created_at": "2026-09-14T10:02:11+00:00",
    "disabled_at": None,
}

REQUEST_EXAMPLES: dict[tuple[str, str], Any] = {
    ("POST", "/v1/citizens/{citizen_id}/consents"): {
        "agreement": "benefit-status-for-discretionary-support",
        "expires_at": "2027-11-30T00:00:00Z",
        "data_life": "P90D",
    },
    ("PATCH", "/v1/citizens/{citizen_id}/consents/{consent_id}"): {"status": "paused"},
    ("POST", "/v1/policies"): _AGREEMENT_IN,
    ("PUT", "/v1/policies/{agreement_id}"): _AGREEMENT_IN,
    ("POST", "/v1/decisions/explain"): {
        "consumer": "dwp",
        "action": "read",
        "fields": ["licence_status", "vehicle_registration"],
        "purpose": "benefit-eligibility",
        "case_ref": "PIP-2026-0042",
        "citizen_status": "active",
    },
    ("POST", "/v1/policies/simulate"): {
        "upsert": [{k: v for k, v in _AGREEMENT_IN.items() if k != "reason"}],
        "remove": ["passport-for-benefits"],
        "since": "2026-11-01T00:00:00Z",
    },
    ("POST", "/v1/citizens"): {
        "national_id": "QQ123456C",
        "fields": {"given_name": "Ada", "family_name": "Lovelace", "date_of_birth": "1990-12-10"},
    },
    ("POST", "/v1/citizens/lookup"): {"national_id": "QQ123456C", "purpose": "benefit-eligibility"},
    ("POST", "/v1/citizens/batch-get"): {
        "ids": [CITIZEN],
        "fields": ["licence_status"],
        "purpose": "benefit-eligibility",
    },
    ("PATCH", "/v1/citizens/{citizen_id}/fields"): {
        "fields": {"licence_status": "revoked"},
        "reason": "Revoked after a medical review",
    },
    ("POST", "/v1/citizens/{citizen_id}/verify"): {
        "purpose": "benefit-eligibility",
        "claims": {"date_of_birth": {"lte": "2008-11-29"}},
    },
    ("POST", "/v1/subscriptions"): {
        "fields": ["address", "date_of_death"],
        "purpose": "benefit-payment",
        "webhook_url": "https://dwp.example.gov.uk/hooks/tellonce",
    },
    ("POST", "/v1/clients"): {
        "roles": ["consumer"],
        "name": "DWP benefits case system",
        "rate_per_second": 20,
        "rate_burst": 40,
    },
}

RESPONSE_EXAMPLES: dict[tuple[str, str], Any] = {
    ("POST", "/v1/citizens/{citizen_id}/consents"): _CONSENT,
    ("PATCH", "/v1/citizens/{citizen_id}/consents/{consent_id}"): {**_CONSENT, "status": "paused"},
    ("GET", "/v1/citizens/{citizen_id}/consents"): {"items": [_CONSENT], "next_cursor": None},
    ("POST", "/v1/citizens/{citizen_id}/objections/{agreement}"): _OBJECTION,
    ("GET", "/v1/citizens/{citizen_id}/objections"): {"items": [_OBJECTION], "next_cursor": None},
    ("GET", "/healthz"): {"status": "ok"},
    ("GET", "/readyz"): {"status": "ready"},
    ("GET", "/v1/catalog"): {
        "version": 2,
        "departments": [{"id": "dvla", "name": "Driver and Vehicle Licensing Agency", "description": ""}],
        "purposes": [
            {"id": "benefit-eligibility", "name": "Deciding eligibility for a benefit", "description": ""}
        ],
        "fields": [
            {
                "name": "licence_status",
                "owner": "dvla",
                "type": "enum",
                "classification": "personal",
                "searchable": False,
                "max_length": None,
                "values": ["full", "provisional", "revoked", "none"],
                "marks_death": False,
                "description": "",
            }
        ],
    },
    ("GET", "/v1/policies"): {"items": [_AGREEMENT_OUT], "next_cursor": None},
    ("POST", "/v1/policies"): _AGREEMENT_OUT,
    ("GET", "/v1/policies/{agreement_id}"): _AGREEMENT_OUT,
    ("PUT", "/v1/policies/{agreement_id}"): _AGREEMENT_OUT,
    ("DELETE", "/v1/policies/{agreement_id}"): {**_AGREEMENT_OUT, "status": "revoked", "version": 4},
    ("GET", "/v1/policies/{agreement_id}/versions"): {"items": [_AGREEMENT_OUT], "next_cursor": None},
    ("POST", "/v1/decisions/explain"): {
        "decisions": {
            "licence_status": {
                "effect": "permit",
                "agreement": "licence-status-for-benefits",
                "version": 3,
                "reason": "permitted",
                "legal_basis": "Social Security Administration Act 1992, s.122",
                "held_for": None,
                "near_misses": [],
            },
            "vehicle_registration": {
                "effect": "deny",
                "agreement": None,
                "version": None,
                "reason": "no agreement lets dwp read vehicle_registration for benefit-eligibility",
                "legal_basis": None,
                "held_for": "P365D",
                "near_misses": [],
            },
        }
    },
    ("POST", "/v1/policies/simulate"): {
        "evaluated": 1200,
        "changed": 14,
        "changes": [
            {
                "consumer": "dwp",
                "field": "licence_status",
                "action": "read",
                "purpose": "benefit-eligibility",
                "before": "deny",
                "after": "permit",
                "count": 14,
            }
        ],
    },
    ("POST", "/oauth/token"): {
        # A real token, for client tc_Q2x9V4mB7kR1sT8wY3nH5pLc of dwp, issued 2026-12-01 09:20 UTC
        # by the key the JWKS example publishes (whose private half was thrown away).
        "access_token": (
            "eyJ0eXAiOiJhdCtqd3QiLCJhbGciOiJFUzI1NiIsImtpZCI6IjIwMjYxMjAxVDA5MTUwMlotMWEyYjNjNGQifQ"
            ".eyJpc3MiOiJodHRwczovL3RlbGxvbmNlLmV4YW1wbGUuZ292LnVrIiwiYXVkIjoidGVsbG9uY2UiLCJzdWIiOiJ0"
            "Y19RMng5VjRtQjdrUjFzVDh3WTNuSDVwTGMiLCJjbGllbnRfaWQiOiJ0Y19RMng5VjRtQjdrUjFzVDh3WTNuSDVw"
            "TGMiLCJkZXBhcnRtZW50IjoiZHdwIiwicm9sZXMiOlsiY29uc3VtZXIiXSwic2NvcGUiOiJjaXRpemVuczpsb29r"
            "dXAgY2l0aXplbnM6cmVhZCIsImp0aSI6IkNaZDg3cS00RUdJZUVSM0VFMjBsZGciLCJpYXQiOjE3OTYxMTY4MDAs"
            "ImV4cCI6MTc5NjExNzEwMH0"
            ".iduObn7lqU9nL-VsXDSqWtcbK_LwT2I7VdBV8X6wE-lU9p-qBwfgzLfCsm2b2X4DRPtx-7LezaPsmJRJo4k7wQ"
        ),
        "token_type": "Bearer",
        "expires_in": 300,
        "scope": "citizens:lookup citizens:read",
    },
    ("GET", "/.well-known/jwks.json"): {
        "keys": [
            {
                "kty": "EC",
                "crv": "P-256",
                "x": "WtOaMtQ8Xsr0kzb8OCcIeH-yrpdkiQ64omDZT1687zQ",
                "y": "w5pS_J9CwVGMv4ZC_iXJqn4dsr1rjDn14DG-kpeV-qE",
                "kid": "20261201T091502Z-1a2b3c4d",
                "alg": "ES256",
                "use": "sig",
            }
        ]
    },
    ("GET", "/.well-known/evidence-keys.json"): {
        "keys": [
            {
                "kty": "EC",
                "crv": "P-256",
                "x": "WtOaMtQ8Xsr0kzb8OCcIeH-yrpdkiQ64omDZT1687zQ",
                "y": "w5pS_J9CwVGMv4ZC_iXJqn4dsr1rjDn14DG-kpeV-qE",
                "kid": "20261201T091502Z-1a2b3c4d",
                "alg": "ES256",
                "use": "sig",
            },
            {
                "kty": "EC",
                "crv": "P-256",
                "x": "WKn-ZIGevcwGIyyrzFoZNBdaq9_TsqzGl96oc0CWuis",
                "y": "y77t-RvAHRKTsSGdIYUfweuOvwrvDD-Q3Hv5J0fSKbE",
                "kid": "20250301T080000Z-9f8e7d6c",
                "alg": "ES256",
                "use": "sig",
            },
        ]
    },
    ("GET", "/.well-known/oauth-authorization-server"): {
        "issuer": "https://tellonce.example.gov.uk",
        "token_endpoint": "https://tellonce.example.gov.uk/oauth/token",
        "jwks_uri": "https://tellonce.example.gov.uk/.well-known/jwks.json",
        "grant_types_supported": ["client_credentials"],
    },
    ("GET", "/v1/audit/checkpoint"): (
        "tellonce.example/audit\n1000\nq3Yw2d1b0C9hS0fA3rXo4p6m9bT2x1uKcV8nE5jL7zQ=\n\n"
        "— tellonce.example/audit Az3grlgtzPICa5OS8npBqPr7/y4rUK6BrbXxtDNiD+0mjSGdXsqAt0xWchfh...\n"
    ),
    (
        "GET",
        "/v1/audit/verifier-key",
    ): "tellonce.example/audit+3f2a1b0c+AbCdEfGhIjKlMnOpQrStUvWxYz0123456789+/=",
    ("GET", "/v1/audit/entries/{index}/proof"): _PROOF,
    ("GET", "/v1/audit/consistency"): {"first": 900, "second": 1000, "hashes": _PROOF["hashes"]},
    ("GET", "/v1/audit/entries"): {
        "items": [{"leaf_index": 41, "entry": _ENTRY}],
        "next_cursor": "eyJpZCI6NDF9",
    },
    ("GET", "/v1/audit/reports/usage"): {
        "items": [
            {
                "consumer": "dwp",
                "owner": "dvla",
                "field": "licence_status",
                "purpose": "benefit-eligibility",
                "period": "2026-11",
                "count": 412,
            }
        ],
        "next_cursor": None,
    },
    ("GET", "/v1/citizens/{citizen_id}/access-log"): {
        "items": [
            {
                "time": AT,
                "department": "dwp",
                "action": "read",
                "fields": ["licence_status"],
                "purpose": "benefit-eligibility",
                "decision": "permit",
            }
        ],
        "next_cursor": None,
    },
    ("POST", "/v1/citizens"): {
        "id": CITIZEN,
        "status": "active",
        "version": 1,
        "fields": ["given_name", "family_name", "date_of_birth"],
    },
    ("POST", "/v1/citizens/lookup"): {"id": CITIZEN},
    ("POST", "/v1/citizens/batch-get"): {
        "items": [{"id": CITIZEN, "fields": {"licence_status": _FIELD}, "withheld": []}],
        "next_cursor": None,
    },
    ("GET", "/v1/citizens/{citizen_id}"): {
        "id": CITIZEN,
        "status": "active",
        "version": 7,
        "fields": {"licence_status": _FIELD},
        "withheld": _WITHHELD,
    },
    ("PATCH", "/v1/citizens/{citizen_id}/fields"): {
        "id": CITIZEN,
        "status": "active",
        "version": 8,
        "fields": {"licence_status": 5},
    },
    ("GET", "/v1/citizens/{citizen_id}/fields/{field}/history"): {
        "items": [{"value": "provisional", "version": 3, "updated_at": AT, "written_by": "dvla-licensing"}],
        "next_cursor": None,
    },
    ("POST", "/v1/citizens/{citizen_id}/verify"): {"results": {"date_of_birth": True}, "withheld": []},
    ("POST", "/v1/subscriptions"): {**_SUBSCRIPTION, "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"},
    ("GET", "/v1/subscriptions"): {"items": [_SUBSCRIPTION], "next_cursor": None},
    ("GET", "/v1/subscriptions/{subscription_id}"): _SUBSCRIPTION,
    ("POST", "/v1/subscriptions/{subscription_id}/disable"): {**_SUBSCRIPTION, "status": "disabled"},
    ("POST", "/v1/subscriptions/{subscription_id}/enable"): _SUBSCRIPTION,
    ("POST", "/v1/subscriptions/{subscription_id}/rotate-secret"): {
        **_SUBSCRIPTION,
        "previous_secret_expires_at": "2026-12-01T09:30:00+00:00",
        "secret": "whsec_9bX2kQm4LrT7vYc1NpW8sJd3HfG6aZe0",
    },
    ("GET", "/v1/subscriptions/{subscription_id}/deliveries"): {
        "items": [
            {
                "id": "dlv_01JDQ3D5E6F7G8H9J0K1M2N3P4",
                "webhook_id": "msg_01JDQ3D5E6F7G8H9J0K1M2N3P4",
                "event_id": _EVENT["event_id"],
                "citizen_id": CITIZEN,
                "status": "delivered",
                "attempts": 1,
                "next_attempt_at": None,
                "last_attempt_at": AT,
                "last_status_code": 204,
                "last_error": None,
                "delivered_at": AT,
                "created_at": AT,
            }
        ],
        "next_cursor": None,
    },
    ("POST", "/v1/subscriptions/{subscription_id}/redeliver"): {"requeued": 3},
    ("GET", "/v1/events"): {"items": [_EVENT], "cursor": "1042"},
    ("POST", "/v1/cases/{case_ref}/close"): {
        "department": "dwp",
        "case_ref": "FRAUD-2026-0117",
        "opened_at": "2026-09-14T10:02:11+00:00",
        "closed_at": AT,
    },
    ("GET", "/v1/clients"): {"items": [_CLIENT]},
    ("POST", "/v1/clients"): {
        "client_id": _CLIENT["client_id"],
        "client_secret": "pQ7xN2mV9wR4tB8cL1zK6hJ3fG5sD0aY2uE9iO4rT7w",
    },
    ("POST", "/v1/clients/{client_id}/disable"): {**_CLIENT, "disabled_at": AT},
}

# Responses that are not JSON: each media type's schema and example, by route. The export's
# examples are made by the functions that write its lines.
_EXPORT_ITEM = {"id": 42, "leaf_index": 41, "entry": _ENTRY}
RESPONSE_MEDIA: dict[tuple[str, str], dict[str, Any]] = {
    ("GET", "/v1/audit/export"): {
        "application/x-ndjson": {
            "schema": {"type": "string", "description": "One entry as a JSON object per line."},
            "example": json.dumps(_EXPORT_ITEM) + "\n",
        },
        "text/csv": {
            "schema": {"type": "string", "description": "A header row, then one entry per row."},
            "example": csv_header() + csv_line(_EXPORT_ITEM),
        },
    },
}
