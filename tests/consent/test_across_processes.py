"""Consents and objections across two ``tellonce serve`` processes on one database.

A consumer reads through one process while the citizen portal changes the citizen's
choices through the other (and the other way round): every change applies to the very
next read, with no wait. The consent's JWS verifies with PyJWT (the service signs with
joserfc) against the other process's JWKS.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from service.auth import service as auth_service
from service.config import Settings
from service.db import Database
from tests.conftest import server_env
from tests.consent.conftest import CONSENTED, OBJECTABLE
from tests.fixtures.server import LiveServer, start_server
from tests.records.conftest import RECORDS_POLICIES, apply_policies

pytestmark = pytest.mark.e2e

CLIENTS = {
    "registrar": ("register", "registrar"),
    "writer": ("welfare", "writer"),
    "consumer": ("revenue", "consumer"),
    "portal": ("portal", "citizen-portal"),
}


def _yaml_entry(agreement: dict[str, Any]) -> str:
    lines = [f"  - id: {agreement['id']}"]
    for key, value in agreement.items():
        if key == "id":
            continue
        shown = f"[{', '.join(value)}]" if isinstance(value, list) else f'"{value}"'
        lines.append(f"    {key}: {shown}")
    return "\n".join(lines) + "\n"


@dataclass
class Pair:
    first: LiveServer
    second: LiveServer
    bearer: dict[str, dict[str, str]]

    def call(self, server: LiveServer, who: str, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.request(method, server.base_url + path, headers=self.bearer[who], timeout=10, **kwargs)


async def _clients(url: str, data: Path, root_key: str) -> dict[str, tuple[str, str]]:
    settings = Settings(env="test", database_url=url, data_dir=data, root_key=root_key)  # type: ignore[arg-type]
    database = Database(settings)
    made: dict[str, tuple[str, str]] = {}
    try:
        async with database.sessions.begin() as session:
            for name, (department, role) in CLIENTS.items():
                created = await auth_service.create_client(session, department=department, roles=[role])
                assert created.client_secret is not None
                made[name] = (created.client_id, created.client_secret)
    finally:
        await database.dispose()
    return made


@pytest.fixture
async def clients(scratch_database: str, tmp_path: Path, root_key: str) -> dict[str, tuple[str, str]]:
    folder = tmp_path / "policies"
    shutil.copytree(RECORDS_POLICIES, folder)
    with (folder / "welfare.yaml").open("a") as welfare:
        welfare.write(_yaml_entry(CONSENTED))
    with (folder / "register.yaml").open("a") as register:
        register.write(_yaml_entry(OBJECTABLE))
    apply_policies(scratch_database, folder)
    (tmp_path / "data").mkdir()
    return await _clients(scratch_database, tmp_path / "data", root_key)


@pytest.fixture
def pair(
    clients: dict[str, tuple[str, str]], scratch_database: str, tmp_path: Path, root_key: str
) -> Iterator[Pair]:
    env = server_env(scratch_database, tmp_path / "data", root_key)
    first = start_server(env, tmp_path / "first.log")
    try:
        second = start_server(env, tmp_path / "second.log")
        try:
            bearer = {}
            for name, (client_id, secret) in clients.items():
                token = httpx.post(
                    f"{first.base_url}/oauth/token",
                    data={"grant_type": "client_credentials"},
                    auth=(client_id, secret),
                    timeout=10,
                )
                assert token.status_code == 200, token.text
                bearer[name] = {"Authorization": f"Bearer {token.json()['access_token']}"}
            yield Pair(first, second, bearer)
        finally:
            second.stop()
    finally:
        first.stop()


def _reads(pair: Pair, server: LiveServer, citizen_id: str, fields: str) -> httpx.Response:
    return pair.call(
        server,
        "consumer",
        "GET",
        f"/v1/citizens/{citizen_id}",
        params={"fields": fields, "purpose": "tax-administration"},
    )


def _withheld(response: httpx.Response) -> dict[str, str]:
    assert response.status_code == 200, response.text
    return {item["field"]: item["reason"] for item in response.json()["withheld"]}


class TestAcrossProcesses:
    def test_every_change_applies_to_the_next_read_in_the_other_process(self, pair: Pair) -> None:
        a, b = pair.first, pair.second
        registered = pair.call(
            a,
            "registrar",
            "POST",
            "/v1/citizens",
            json={"national_id": "XP10000001", "fields": {"given_name": "Ada"}},
        )
        assert registered.status_code == 201, registered.text
        citizen = registered.json()["id"]
        written = pair.call(
            b,
            "writer",
            "PATCH",
            f"/v1/citizens/{citizen}/fields",
            json={"fields": {"benefit_status": "awarded"}, "reason": "claim"},
        )
        assert written.status_code == 200, written.text
        consents = f"/v1/citizens/{citizen}/consents"

        refused = _reads(pair, b, citizen, "benefit_status")
        assert (refused.status_code, refused.json()["type"].rsplit("/", 1)[1]) == (403, "consent-required")

        created = pair.call(a, "portal", "POST", consents, json={"agreement": CONSENTED["id"]})
        assert created.status_code == 201, created.text
        consent = created.json()
        assert (
            _reads(pair, b, citizen, "benefit_status").json()["fields"]["benefit_status"]["value"]
            == "awarded"
        )

        for server, reader, status in ((b, a, "paused"), (a, b, "active"), (b, a, "revoked")):
            changed = pair.call(
                server, "portal", "PATCH", f"{consents}/{consent['id']}", json={"status": status}
            )
            assert changed.json()["status"] == status
            response = _reads(pair, reader, citizen, "benefit_status,given_name")
            assert _withheld(response) == (
                {} if status == "active" else {"benefit_status": "consent-required"}
            )

        again = pair.call(a, "portal", "PATCH", f"{consents}/{consent['id']}", json={"status": "active"})
        assert again.status_code == 409
        assert _withheld(_reads(pair, b, citizen, "benefit_status,given_name")) == {
            "benefit_status": "consent-required"
        }

        objection = f"/v1/citizens/{citizen}/objections/{OBJECTABLE['id']}"
        assert pair.call(b, "portal", "POST", objection).status_code == 201
        assert _withheld(_reads(pair, a, citizen, "given_name,benefit_status,address")) == {
            "given_name": "objected",
            "benefit_status": "consent-required",
        }
        assert pair.call(a, "portal", "DELETE", objection).status_code == 204
        assert _withheld(_reads(pair, b, citizen, "given_name,benefit_status,address")) == {
            "benefit_status": "consent-required"
        }

        self._signature_verifies_independently(pair, consent)

    @staticmethod
    def _signature_verifies_independently(pair: Pair, consent: dict[str, Any]) -> None:
        """PyJWT (not joserfc, which signs) against the other process's published evidence keys."""
        jwks = httpx.get(f"{pair.second.base_url}/.well-known/evidence-keys.json", timeout=10).json()
        header = jwt.get_unverified_header(consent["signature"])
        assert (header["alg"], header["typ"]) == ("ES256", "consent+jwt")
        key = jwt.PyJWKSet.from_dict(jwks)[header["kid"]]
        claims = jwt.decode(consent["signature"], key.key, algorithms=["ES256"])
        assert claims["jti"] == consent["id"]
        assert claims["sub"] == consent["citizen_id"]
        assert (claims["agreement"], claims["consumer"], claims["purpose"], claims["fields"]) == (
            consent["agreement"],
            consent["consumer"],
            consent["purpose"],
            consent["fields"],
        )
        tampered = consent["signature"][:-4] + (
            "AAAA" if not consent["signature"].endswith("AAAA") else "BBBB"
        )
        with pytest.raises(jwt.InvalidSignatureError):
            jwt.decode(tampered, key.key, algorithms=["ES256"])
        # An artefact is never an access token.
        refused = httpx.get(
            f"{pair.first.base_url}/v1/catalog",
            headers={"Authorization": f"Bearer {consent['signature']}"},
            timeout=10,
        )
        assert refused.status_code == 401
