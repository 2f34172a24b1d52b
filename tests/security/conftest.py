"""Regression tests for the hardening findings (issue 20), one module per finding.

Each module runs against a committed scratch database (SQLite, or PostgreSQL in the second
pass of ``make test``) with the records test catalog and the agreements in
``tests/security/policies``, applied by the real CLI. The caller is chosen per request with
the ``X-Test-As: department:role,role`` header, as in ``tests/records``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.app import create_app
from service.auth.dependencies import get_principal
from service.config import Settings
from tests.fixtures.databases import create_scratch_database, drop_scratch_database
from tests.records.conftest import RecordsEnv, _principal_from_header, apply_policies, as_

SECURITY_POLICIES = Path(__file__).parent / "policies"
AUDITOR = as_("audit-office", "auditor")


@pytest.fixture(scope="module")
async def security_env(
    database_url: str, root_key: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[RecordsEnv]:
    url = await create_scratch_database(database_url)
    try:
        apply_policies(url, SECURITY_POLICIES)
        settings = Settings(
            env="test",
            database_url=url,
            data_dir=tmp_path_factory.mktemp("security-data"),
            root_key=root_key,  # type: ignore[arg-type]
            log_level="WARNING",
            policies_dir=SECURITY_POLICIES,
        )
        app = create_app(settings)
        app.dependency_overrides[get_principal] = _principal_from_header
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
                yield RecordsEnv(app=app, client=client, database_url=url, settings=settings)
    finally:
        await drop_scratch_database(url)


async def audit_entries(env: RecordsEnv, **filters: str) -> list[dict[str, Any]]:
    response = await env.client.get("/v1/audit/entries", params=filters, headers=AUDITOR)
    assert response.status_code == 200, response.text
    return [item["entry"] for item in response.json()["items"]]


def problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    return body
