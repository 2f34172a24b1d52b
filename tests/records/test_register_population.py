"""Bulk registration (``RecordsService.register_population``), the demo's seeding path.

It must store exactly what ``register`` and ``write`` would: values that decrypt through
the access path, a national id that looks up through its blind index, one audit entry per
citizen, and nothing at all when any citizen in the batch is refused.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from service.auth.dependencies import Principal
from service.errors import Conflict
from service.records.errors import InvalidFieldValue
from service.records.service import Access, RecordsService
from tests.records.conftest import RecordsEnv, as_
from tests.records.test_citizens_api import audit_entries

WELFARE = as_("welfare", "consumer")


def _service(env: RecordsEnv) -> RecordsService:
    state = env.app.state
    return RecordsService(state.database, state.keyring, state.audit_writer, state.records_reader)


def _registrar() -> Access:
    principal = Principal.with_roles("seeding-client", "register", "registrar")
    return Access(principal=principal, request_id="seed-test", source=None, case_ref=None)


def _citizen(**fields: Any) -> dict[str, Any]:
    return {"national_id": f"ZZ{uuid.uuid4().hex[:10].upper()}", **fields}


class TestRegisterPopulation:
    async def test_values_of_every_owner_read_back_through_the_access_path(
        self, records_env: RecordsEnv
    ) -> None:
        batch = [
            _citizen(
                given_name=f"Perpetua{n}", date_of_birth="1970-01-0" + str(n + 1), licence_status="valid"
            )
            for n in range(3)
        ]

        ids = await _service(records_env).register_population(_registrar(), batch)

        assert len(set(ids)) == 3
        for citizen_id, submitted in zip(ids, batch, strict=True):
            response = await records_env.client.get(
                f"/v1/citizens/{citizen_id}",
                params={
                    "fields": "given_name,date_of_birth,licence_status",
                    "purpose": "benefit-eligibility",
                },
                headers=WELFARE,
            )
            assert response.status_code == 200, response.text
            fields = response.json()["fields"]
            assert fields["given_name"]["value"] == submitted["given_name"]
            assert fields["given_name"]["owner"] == "register"
            assert fields["licence_status"] == {**fields["licence_status"], "value": "valid", "owner": "dvla"}
            found = await records_env.client.post(
                "/v1/citizens/lookup",
                json={"national_id": submitted["national_id"], "purpose": "benefit-eligibility"},
                headers=WELFARE,
            )
            assert found.json() == {"id": citizen_id}

    async def test_each_citizen_gets_a_register_entry_without_values(self, records_env: RecordsEnv) -> None:
        citizen = _citizen(given_name="Wolfsbane")

        (citizen_id,) = await _service(records_env).register_population(_registrar(), [citizen])

        entries = await audit_entries(records_env, citizen_id)
        register = [e for e in entries if e["action"] == "register"]
        assert len(register) == 1
        assert register[0]["client_id"] == "seeding-client"
        assert set(register[0]["fields_released"]) == {"national_id", "given_name"}
        assert "Wolfsbane" not in str(register[0])
        assert citizen["national_id"] not in str(register[0])

    async def test_an_already_registered_national_id_refuses_the_whole_batch(
        self, records_env: RecordsEnv
    ) -> None:
        service = _service(records_env)
        first = _citizen(given_name="Alder")
        await service.register_population(_registrar(), [first])
        newcomer = _citizen(given_name="Birch")

        with pytest.raises(Conflict):
            await service.register_population(_registrar(), [newcomer, dict(first)])

        missing = await records_env.client.post(
            "/v1/citizens/lookup",
            json={"national_id": newcomer["national_id"], "purpose": "benefit-eligibility"},
            headers=WELFARE,
        )
        assert missing.status_code == 404

    async def test_a_national_id_twice_in_one_batch_is_refused(self, records_env: RecordsEnv) -> None:
        twin = _citizen()
        with pytest.raises(Conflict):
            await _service(records_env).register_population(_registrar(), [twin, dict(twin)])

    async def test_an_invalid_value_refuses_the_batch_naming_the_field(self, records_env: RecordsEnv) -> None:
        good, bad = _citizen(given_name="Rowan"), _citizen(licence_status="lost")

        with pytest.raises(InvalidFieldValue) as refused:
            await _service(records_env).register_population(_registrar(), [good, bad])

        errors = refused.value.errors or []
        assert [error["loc"] for error in errors] == [["fields", "licence_status"]]
        assert "lost" not in str(errors)
        missing = await records_env.client.post(
            "/v1/citizens/lookup",
            json={"national_id": good["national_id"], "purpose": "benefit-eligibility"},
            headers=WELFARE,
        )
        assert missing.status_code == 404
