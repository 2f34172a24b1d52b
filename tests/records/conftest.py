"""Records tests run against a committed scratch database per module.

The access path uses its own pooled connections (not the request session), so it cannot
see a rolled-back test transaction. Each module gets a fresh migrated database with the
test catalog and the agreements in ``tests/records/policies`` applied by the real CLI.
A test chooses its caller per request with the ``X-Test-As: department:role,role`` header,
which a test-only override of ``get_principal`` reads.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request

from service.app import create_app
from service.auth.dependencies import Principal, get_principal
from service.config import Settings
from service.errors import Unauthenticated
from tests.fixtures.databases import create_scratch_database, drop_scratch_database

RECORDS_POLICIES = Path(__file__).parent / "policies"


def apply_policies(database_url: str, folder: Path = RECORDS_POLICIES) -> None:
    env = {**os.environ, "TELLONCE_DATABASE_URL": database_url, "TELLONCE_ENV": "test"}
    result = subprocess.run(
        [sys.executable, "-m", "service.cli", "policies", "apply", str(folder)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def as_(department: str, *roles: str, on_behalf_of: str | None = None) -> dict[str, str]:
    headers = {"X-Test-As": f"{department}:{','.join(roles)}"}
    if on_behalf_of:
        headers["X-Test-On-Behalf-Of"] = on_behalf_of
    return headers


async def _principal_from_header(request: Request) -> Principal:
    raw = request.headers.get("x-test-as")
    if not raw:
        raise Unauthenticated("A bearer access token is required.")
    department, _, roles = raw.partition(":")
    principal = Principal.with_roles(f"{department}-client", department, *roles.split(","))
    officer = request.headers.get("x-test-on-behalf-of")
    if officer:
        principal = Principal(
            client_id=principal.client_id,
            department=principal.department,
            roles=principal.roles,
            scopes=principal.scopes,
            on_behalf_of=officer,
        )
    return principal


@dataclass
class RecordsEnv:
    app: FastAPI
    client: httpx.AsyncClient
    database_url: str
    settings: Settings

    async def register(self, **fields: Any) -> tuple[str, str]:
        """Register a citizen as the register's registrar; returns (id, national id)."""
        national_id = fields.pop("national_id", None) or f"NI{uuid.uuid4().hex[:10].upper()}"
        response = await self.client.post(
            "/v1/citizens",
            json={"national_id": national_id, "fields": fields},
            headers=as_("register", "registrar"),
        )
        assert response.status_code == 201, response.text
        return response.json()["id"], national_id


@pytest.fixture(scope="module")
async def records_env(
    database_url: str, root_key: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[RecordsEnv]:
    url = await create_scratch_database(database_url)
    try:
        apply_policies(url)
        settings = Settings(
            env="test",
            database_url=url,
            data_dir=tmp_path_factory.mktemp("records-data"),
            root_key=root_key,  # type: ignore[arg-type]
            log_level="WARNING",
            policies_dir=RECORDS_POLICIES,
        )
        app = create_app(settings)
        app.dependency_overrides[get_principal] = _principal_from_header
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
                yield RecordsEnv(app=app, client=client, database_url=url, settings=settings)
    finally:
        await drop_scratch_database(url)
