"""Finding 11: granting ``lookup`` on any field but ``national_id`` silently did nothing.

Lookup (and erase) is decided on ``national_id`` alone, so an agreement that grants it
without listing ``national_id`` is refused, with a message saying so: by the loader
(FILE:LINE), the API (422) and the console's agreement form (the same rule).
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from service.auth.dependencies import Principal
from service.catalog import service as catalog_service
from service.console.drafts import check_draft
from service.policy.loader import load_policy_folder
from service.sourcefile import SourceFileError
from tests.records.conftest import RecordsEnv, as_
from tests.security.conftest import SECURITY_POLICIES, problem

LOOKUP_BY_NAME = {
    "id": "welfare-looks-up-by-name",
    "consumer": "welfare",
    "fields": ["given_name"],
    "actions": ["read", "lookup"],
    "purposes": ["benefit-eligibility"],
    "legal_basis": "Social Security Administration Act 1992, s.122",
}
MESSAGE = "lookup is granted on national_id, not on given_name"


def test_the_loader_refuses_it_with_file_and_line(tmp_path: Path) -> None:
    folder = tmp_path / "policies"
    folder.mkdir()
    (folder / "catalog.yaml").write_text((SECURITY_POLICIES / "catalog.yaml").read_text())
    (folder / "register.yaml").write_text(
        "owner: register\n"
        "agreements:\n"
        "  - id: welfare-looks-up-by-name\n"
        "    consumer: welfare\n"
        "    fields: [given_name]\n"
        "    actions: [read, lookup]\n"
        "    purposes: [benefit-eligibility]\n"
        '    legal_basis: "law"\n'
        "  - id: welfare-erases-addresses\n"
        "    consumer: welfare\n"
        "    fields: [address]\n"
        "    actions: [erase]\n"
        "    purposes: [benefit-eligibility]\n"
        '    legal_basis: "law"\n'
    )
    with pytest.raises(SourceFileError) as caught:
        load_policy_folder(folder)
    path = folder / "register.yaml"
    assert [str(e) for e in caught.value.errors] == [
        f"{path}:6: agreement welfare-looks-up-by-name: {MESSAGE}; "
        "list national_id in fields or remove lookup",
        f"{path}:12: agreement welfare-erases-addresses: erase is granted on national_id, not on address; "
        "list national_id in fields or remove erase",
    ]


async def test_the_api_refuses_it(security_env: RecordsEnv) -> None:
    response = await security_env.client.post(
        "/v1/policies", json=LOOKUP_BY_NAME, headers=as_("register", "data-owner")
    )
    body = problem(response, 422)
    assert any(MESSAGE in e["msg"] for e in body["errors"])


async def test_the_consoles_form_refuses_it(security_env: RecordsEnv) -> None:
    owner = Principal.with_roles("register-owner", "register", "data-owner")
    async with AsyncSession(security_env.app.state.database.engine) as session:
        _version, catalog = await catalog_service.current(session)
        checked = await check_draft(session, catalog, owner, dict(LOOKUP_BY_NAME), creating=True)
    assert checked.content is None
    assert any(MESSAGE.capitalize() in message for _field, message in checked.errors)


async def test_lookup_with_national_id_listed_is_still_accepted(security_env: RecordsEnv) -> None:
    agreement = {
        **LOOKUP_BY_NAME,
        "id": "welfare-looks-up-and-reads",
        "fields": ["national_id", "given_name"],
    }
    response: httpx.Response = await security_env.client.post(
        "/v1/policies", json=agreement, headers=as_("register", "data-owner")
    )
    assert response.status_code == 201, response.text
