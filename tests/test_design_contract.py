"""Items of DESIGN.md's contracts that outside tools are written from, checked against the
running app where an earlier review found the code and the document apart."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from service.auth.dependencies import ON_BEHALF_OF, ON_BEHALF_OF_MAX


@pytest.fixture
async def document(client: httpx.AsyncClient) -> dict[str, Any]:
    response = await client.get("/openapi.json")
    assert response.status_code == 200
    body: dict[str, Any] = response.json()
    return body


def test_every_authenticated_operation_declares_x_on_behalf_of(document: dict[str, Any]) -> None:
    """DESIGN.md, REST surface: X-On-Behalf-Of is an optional header that is recorded. Every
    route that checks a token reads it (and refuses a malformed one with 422), so a client
    generated from /openapi.json must be able to send it."""
    missing = []
    for path, methods in document["paths"].items():
        for method, operation in methods.items():
            if "security" not in operation or path == "/oauth/token":
                continue
            declared = [
                p
                for p in operation.get("parameters", [])
                if p["in"] == "header" and p["name"].lower() == ON_BEHALF_OF.lower()
            ]
            if len(declared) != 1:
                missing.append(f"{method.upper()} {path}")
                continue
            (parameter,) = declared
            assert parameter["required"] is False
            assert parameter["schema"]["type"] == "string"
            assert parameter["schema"]["minLength"] == 1
            assert parameter["schema"]["maxLength"] == ON_BEHALF_OF_MAX
            assert "422" in operation["responses"]
    assert not missing, f"no X-On-Behalf-Of parameter on: {missing}"
