"""A citizen registered with a date of death is deceased from the start, as a write of that
field makes one: the status conditions decide on (``citizen.status == "active"``) must not
see a dead person as alive because the death came with the registration."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.catalog import service as catalog_service
from service.config import Settings
from service.crypto.keyring import Keyring
from service.db import create_engine
from service.policy.service import PolicyHolder
from service.records import importing, reads, seeding, writes
from service.records.errors import NotPermitted
from service.records.service import RecordsService, comparable_national_id, registered_national_ids
from tests.records.conftest import RecordsTx, apply_policies, facts_as

REGISTRAR = facts_as("register", "registrar")
# Reads address under an agreement whose condition is citizen.status == "active".
REVENUE = facts_as("revenue", "consumer", purpose="tax-administration")
DEAD = {"address": "1 Quiet Lane", "date_of_death": "2026-01-02"}


class TestRegisteredWithADateOfDeath:
    async def test_one_registration_is_deceased(self, records_tx: RecordsTx) -> None:
        registered = await writes.register(records_tx.records, REGISTRAR, "DD1000001", DEAD)
        assert registered.status == "deceased"
        with pytest.raises(NotPermitted):
            await reads.read(records_tx.records, REVENUE, registered.id, ["address"])
        living = await writes.register(records_tx.records, REGISTRAR, "DD1000002", {"address": "2 Lane"})
        assert living.status == "active"
        read = await reads.read(records_tx.records, REVENUE, living.id, ["address"])
        assert read.fields["address"].value == "2 Lane"

    async def test_a_bulk_registration_marks_only_the_dead(self, records_tx: RecordsTx) -> None:
        ids = await seeding.register_population(
            records_tx.conn,
            records_tx.keyring,
            REGISTRAR,
            [{"national_id": "DD2000001", **DEAD}, {"national_id": "DD2000002", "address": "3 Lane"}],
        )
        statuses = await records_tx.records.store.citizens(ids)
        assert [statuses[i].status for i in ids] == ["deceased", "active"]

    async def test_an_import_marks_only_the_dead(
        self, scratch_database: str, settings: Settings, tmp_path: Path
    ) -> None:
        apply_policies(scratch_database)
        engine = create_engine(scratch_database)
        try:
            keyring = Keyring.from_settings(settings)
            people = [f"DD3{n:06d},{n} Lane,{'2026-01-02' if n % 2 else ''}" for n in range(40)]
            path = tmp_path / "deaths.csv"
            path.write_text(
                "\n".join(["national_id,address,date_of_death", *people]) + "\n", encoding="utf-8"
            )
            plan = await importing.plan_import(engine, path, "csv", "register", "register")
            report = await importing.run_import(engine, keyring, plan, actor="operator:importer")
            assert report.counts.registered == 40
            async with engine.connect() as conn:
                records = RecordsService.in_transaction(conn, keyring, PolicyHolder())
                found = await registered_national_ids(
                    conn,
                    keyring,
                    await catalog_service.current_cached(conn),
                    [f"DD3{n:06d}" for n in range(40)],
                )
                statuses = await records.store.citizens(list(found.values()))
            by_id = {n: found[comparable_national_id(f"DD3{n:06d}")] for n in range(40)}
            assert {n: statuses[citizen_id].status for n, citizen_id in by_id.items()} == {
                n: "deceased" if n % 2 else "active" for n in range(40)
            }
        finally:
            await engine.dispose()
