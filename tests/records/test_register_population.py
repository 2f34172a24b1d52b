"""Bulk registration (``records.seeding.register_population``), the demo's seeding path.

It must store exactly what ``register`` and ``write`` would: values that decrypt through
the access path, a national id that looks up through its blind index, one audit entry per
citizen, and nothing at all when any citizen in the batch is refused. Runs on the
rolled-back test transaction.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from service.errors import Conflict
from service.records import reads, seeding
from service.records.errors import CitizenNotFound, InvalidFieldValue
from tests.records.conftest import RecordsTx, facts_as

PURPOSE = "benefit-eligibility"
WELFARE = facts_as("welfare", "consumer", purpose=PURPOSE)
REGISTRAR = facts_as("register", "registrar")


def _citizen(**fields: Any) -> dict[str, Any]:
    return {"national_id": f"ZZ{uuid.uuid4().hex[:10].upper()}", **fields}


async def _seed(tx: RecordsTx, citizens: list[dict[str, Any]]) -> list[str]:
    """One batch in a savepoint, as a loader's transaction per batch: all or nothing."""
    async with tx.conn.begin_nested():
        return await seeding.register_population(tx.conn, tx.keyring, REGISTRAR, citizens)


class TestRegisterPopulation:
    async def test_values_of_every_owner_read_back_through_the_access_path(
        self, records_tx: RecordsTx
    ) -> None:
        batch = [
            _citizen(
                given_name=f"Perpetua{n}", date_of_birth="1970-01-0" + str(n + 1), licence_status="valid"
            )
            for n in range(3)
        ]

        ids = await _seed(records_tx, batch)

        assert len(set(ids)) == 3
        for citizen_id, submitted in zip(ids, batch, strict=True):
            citizen = await reads.read(
                records_tx.records, WELFARE, citizen_id, ["given_name", "date_of_birth", "licence_status"]
            )
            assert citizen.fields["given_name"].value == submitted["given_name"]
            assert citizen.fields["given_name"].owner == "register"
            assert (citizen.fields["licence_status"].value, citizen.fields["licence_status"].owner) == (
                "valid",
                "dvla",
            )
            found = await reads.lookup(records_tx.records, WELFARE, submitted["national_id"])
            assert found.id == citizen_id

    async def test_each_citizen_gets_a_register_entry_without_values(self, records_tx: RecordsTx) -> None:
        citizen = _citizen(given_name="Wolfsbane")

        (citizen_id,) = await _seed(records_tx, [citizen])

        register = [e for e in await records_tx.audit_entries(citizen_id) if e["action"] == "register"]
        assert len(register) == 1
        assert register[0]["client_id"] == "register-client"
        assert set(register[0]["fields_released"]) == {"national_id", "given_name"}
        assert "Wolfsbane" not in str(register[0])
        assert citizen["national_id"] not in str(register[0])

    async def test_an_already_registered_national_id_refuses_the_whole_batch(
        self, records_tx: RecordsTx
    ) -> None:
        first = _citizen(given_name="Alder")
        await _seed(records_tx, [first])
        newcomer = _citizen(given_name="Birch")

        with pytest.raises(Conflict):
            await _seed(records_tx, [newcomer, dict(first)])

        with pytest.raises(CitizenNotFound):
            await reads.lookup(records_tx.records, WELFARE, newcomer["national_id"])

    async def test_a_national_id_differing_only_in_case_is_already_registered(
        self, records_tx: RecordsTx
    ) -> None:
        first = _citizen()
        await _seed(records_tx, [first])

        with pytest.raises(Conflict):
            await _seed(records_tx, [_citizen() | {"national_id": first["national_id"].lower()}])

    async def test_a_national_id_twice_in_one_batch_is_refused(self, records_tx: RecordsTx) -> None:
        twin = _citizen()
        with pytest.raises(Conflict):
            await _seed(records_tx, [twin, dict(twin)])

    async def test_an_invalid_value_refuses_the_batch_naming_the_field(self, records_tx: RecordsTx) -> None:
        good, bad = _citizen(given_name="Rowan"), _citizen(licence_status="lost")

        with pytest.raises(InvalidFieldValue) as refused:
            await _seed(records_tx, [good, bad])

        errors = refused.value.errors or []
        assert [error["loc"] for error in errors] == [["fields", "licence_status"]]
        assert "lost" not in str(errors)
        with pytest.raises(CitizenNotFound):
            await reads.lookup(records_tx.records, WELFARE, good["national_id"])

    async def test_a_national_id_differing_only_in_whitespace_is_already_registered(
        self, records_tx: RecordsTx
    ) -> None:
        first = _citizen()
        await _seed(records_tx, [first])
        spaced = " ".join(first["national_id"][n : n + 2] for n in range(0, len(first["national_id"]), 2))

        with pytest.raises(Conflict):
            await _seed(records_tx, [_citizen() | {"national_id": spaced}])
        with pytest.raises(Conflict):
            await _seed(
                records_tx, [twin := _citizen(), {"national_id": twin["national_id"].replace("Z", "Z\u00a0")}]
            )
        found = await reads.lookup(records_tx.records, WELFARE, spaced)
        assert found.id == (await reads.lookup(records_tx.records, WELFARE, first["national_id"])).id
