"""Finding 11: granting ``lookup`` on any field but ``national_id`` silently did nothing.

Lookup (and erase) is decided on ``national_id`` alone, so an agreement that grants it on
any other field is refused, naming each such field (DESIGN: "the loader refuses it with a
file:line error naming the field"), even when ``national_id`` is listed beside them: by the
loader (FILE:LINE), the API (422) and the console's agreement form (the same rule).
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
        "  - id: welfare-identity-and-lookup\n"
        "    consumer: welfare\n"
        "    fields:\n"
        "      - national_id\n"
        "      - given_name\n"
        "    actions: [lookup, read]\n"
        "    purposes: [benefit-eligibility]\n"
        '    legal_basis: "law"\n'
        "  - id: welfare-lookup\n"
        "    consumer: welfare\n"
        "    fields: [national_id]\n"
        "    actions: [lookup]\n"
        "    purposes: [benefit-eligibility]\n"
        '    legal_basis: "law"\n'
    )
    with pytest.raises(SourceFileError) as caught:
        load_policy_folder(folder)
    path = folder / "register.yaml"
    # One error per field other than national_id, at that field's line; the agreement that
    # grants lookup on national_id alone is accepted.
    assert [str(e) for e in caught.value.errors] == [
        f"{path}:5: agreement welfare-looks-up-by-name: {MESSAGE}; "
        "grant lookup in an agreement of its own with fields: [national_id]",
        f"{path}:11: agreement welfare-erases-addresses: erase is granted on national_id, not on address; "
        "grant erase in an agreement of its own with fields: [national_id]",
        f"{path}:19: agreement welfare-identity-and-lookup: "
        "lookup is granted on national_id, not on given_name; "
        "grant lookup in an agreement of its own with fields: [national_id]",
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


async def test_lookup_beside_other_fields_is_refused_at_the_api(security_env: RecordsEnv) -> None:
    agreement = {
        **LOOKUP_BY_NAME,
        "id": "welfare-looks-up-and-reads",
        "fields": ["national_id", "given_name"],
    }
    response: httpx.Response = await security_env.client.post(
        "/v1/policies", json=agreement, headers=as_("register", "data-owner")
    )
    body = problem(response, 422)
    assert [e["loc"] for e in body["errors"]] == [["body", "fields", 1]]
    assert MESSAGE in body["errors"][0]["msg"]
