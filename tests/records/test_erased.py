"""An erased citizen gets one answer from every read (``records/disclosure.py``): 410 to a
caller that may know the citizen exists, 404 to anyone else, and in batch-get the same
per citizen. Runs the service on the rolled-back test transaction."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any, cast

import pytest
from sqlalchemy import Table, select, update

from service.audit import writer as audit_writer
from service.audit.errors import AuditUnavailable
from service.records import reads, repository, writes
from service.records.errors import CitizenErased, CitizenNotFound
from service.records.models import FieldValue
from tests.records.conftest import RecordsEnv, RecordsTx, as_, facts_as

PURPOSE = "benefit-eligibility"
WELFARE = facts_as("welfare", "consumer", purpose=PURPOSE)  # may look citizens up
PORTAL = facts_as("portal", "consumer", purpose=PURPOSE)  # no agreement at all
MADE_UP = "00000000-0000-4000-8000-000000000042"
VALUES = cast(Table, FieldValue.__table__)
REGISTRAR = as_("register", "registrar")
ERASURE = {"reason": "court-order", "legal_basis": "Court order 2026/11"}


@pytest.fixture
async def erased(records_tx: RecordsTx) -> str:
    registered = await writes.register(
        records_tx.records, facts_as("register", "registrar"), "ER1234567", {"given_name": "Gone"}
    )
    await writes.erase(
        records_tx.records,
        facts_as("register", "registrar"),
        registered.id,
        reason="court-order",
        legal_basis="Court order 2026/99",
    )
    return registered.id


class TestErasedCitizen:
    async def test_read_verify_and_history_are_410_to_a_caller_that_may_know(
        self, records_tx: RecordsTx, erased: str
    ) -> None:
        with pytest.raises(CitizenErased):
            await reads.read(records_tx.records, WELFARE, erased, ["given_name"])
        with pytest.raises(CitizenErased):
            await reads.verify(records_tx.records, WELFARE, erased, {"date_of_birth": {"lte": "2000-01-01"}})
        with pytest.raises(CitizenErased):
            await reads.history(records_tx.records, WELFARE, erased, "address", cursor=None, limit=5)

    async def test_batch_get_says_erased_to_a_caller_that_may_know(
        self, records_tx: RecordsTx, erased: str
    ) -> None:
        page = await reads.batch_get(records_tx.records, WELFARE, [erased], ["given_name"])
        (item,) = page.items
        assert item.fields == {}
        assert [(w.field, w.reason) for w in item.withheld] == [
            ("given_name", "the citizen's record was erased")
        ]

    async def test_a_stranger_gets_404_and_the_item_of_a_made_up_id(
        self, records_tx: RecordsTx, erased: str
    ) -> None:
        with pytest.raises(CitizenNotFound):
            await reads.read(records_tx.records, PORTAL, erased, ["given_name"])
        page = await reads.batch_get(records_tx.records, PORTAL, [erased, MADE_UP], ["given_name"])
        real, made_up = page.items
        assert real.model_dump(exclude={"id"}) == made_up.model_dump(exclude={"id"})
        assert made_up.withheld[0].reason == "no such citizen is available to you"


class TestErasedDuringABatch:
    async def test_a_citizen_erased_after_the_decision_is_answered_as_erased(
        self, records_tx: RecordsTx, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Erased between its status being read and its values being decrypted: that
        citizen is withheld as erased, and the rest of the batch is served (never a 410
        for the whole batch)."""
        registrar = facts_as("register", "registrar")
        kept = await writes.register(records_tx.records, registrar, "ER7654321", {"given_name": "Kept"})
        gone = await writes.register(records_tx.records, registrar, "ER7654322", {"given_name": "Gone"})
        store = records_tx.records.store
        load = store.current_values

        async def erased_after_loading(citizen_ids: Sequence[str], fields: Sequence[str]) -> Any:
            rows = await load(citizen_ids, fields)
            await writes.erase(
                records_tx.records, registrar, gone.id, reason="court-order", legal_basis="Court order 2026/7"
            )
            return rows

        monkeypatch.setattr(store, "current_values", erased_after_loading)
        page = await reads.batch_get(records_tx.records, WELFARE, [kept.id, gone.id], ["given_name"])
        served, withheld = page.items
        assert served.id == kept.id
        assert served.fields["given_name"].value == "Kept"
        assert withheld.id == gone.id
        assert withheld.fields == {}
        assert [(w.field, w.reason) for w in withheld.withheld] == [
            ("given_name", "the citizen's record was erased")
        ]


class TestErasedDuringALookup:
    async def test_a_citizen_erased_after_the_search_is_not_found(self, records_tx: RecordsTx) -> None:
        """The blind-index search saw the citizen's national id before the erasure committed,
        and its data key was shredded by the time the candidates were decrypted: the answer is
        the 404 of an unknown national id, for a caller that may look citizens up and one that
        may not, never a 410 that tells who was just erased."""
        registrar = facts_as("register", "registrar")
        registered = await writes.register(records_tx.records, registrar, "ER5550001", {})
        index = (
            await records_tx.conn.execute(
                select(VALUES.c.blind_index).where(
                    VALUES.c.citizen_id == registered.id, VALUES.c.field == "national_id"
                )
            )
        ).scalar_one()
        await writes.erase(
            records_tx.records, registrar, registered.id, reason="court-order", legal_basis="Court order 1"
        )
        # What a search that ran before the erasure committed still found.
        await records_tx.conn.execute(
            update(VALUES)
            .where(VALUES.c.citizen_id == registered.id, VALUES.c.field == "national_id")
            .values(blind_index=index)
        )
        for caller in (WELFARE, PORTAL):
            with pytest.raises(CitizenNotFound):
                await reads.lookup(records_tx.records, caller, "ER5550001")
        # Registering the national id again is not refused either: the erased citizen holds nothing.
        again = await writes.register(records_tx.records, registrar, "ER5550001", {})
        assert again.id != registered.id


REVENUE = facts_as("revenue", "consumer", purpose="tax-administration")  # reads, may not know


class TestErasedDuringARead:
    @pytest.fixture
    async def erased_after_loading(self, records_tx: RecordsTx, monkeypatch: pytest.MonkeyPatch) -> str:
        """A citizen erased between the read loading its values and decrypting them."""
        registrar = facts_as("register", "registrar")
        registered = await writes.register(records_tx.records, registrar, "ER8880001", {"given_name": "Gone"})
        licence = {"licence_status": "valid"}
        dvla = facts_as("dvla", "writer")
        await writes.write(records_tx.records, dvla, registered.id, licence, reason="issued", if_match=None)
        store = records_tx.records.store
        load = store.citizen_with_values

        async def erased_after(citizen_id: str, status: str, fields: Sequence[str]) -> Any:
            found = await load(citizen_id, status, fields)
            monkeypatch.setattr(store, "citizen_with_values", load)
            await writes.erase(
                records_tx.records,
                registrar,
                registered.id,
                reason="court-order",
                legal_basis="Court order 8",
            )
            return found

        monkeypatch.setattr(store, "citizen_with_values", erased_after)
        return registered.id

    async def test_a_caller_that_may_know_gets_the_410_of_a_read_after_it(
        self, records_tx: RecordsTx, erased_after_loading: str
    ) -> None:
        with pytest.raises(CitizenErased):
            await reads.read(records_tx.records, WELFARE, erased_after_loading, ["given_name"])

    async def test_a_caller_its_agreement_permits_gets_the_410_of_a_read_after_it(
        self, records_tx: RecordsTx, erased_after_loading: str
    ) -> None:
        """Revenue may not look citizens up, but its agreement permits licence_status: it is a
        party to that agreement, so after the erasure it is told 410, and so is the read
        that raced it."""
        for _before_and_after in range(2):
            with pytest.raises(CitizenErased):
                await reads.read(records_tx.records, REVENUE, erased_after_loading, ["licence_status"])

    async def test_a_batch_tells_a_caller_its_agreement_permits_that_the_citizen_was_erased(
        self, records_tx: RecordsTx, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        registrar = facts_as("register", "registrar")
        gone = await writes.register(records_tx.records, registrar, "ER8880002", {})
        licence = {"licence_status": "valid"}
        dvla = facts_as("dvla", "writer")
        await writes.write(records_tx.records, dvla, gone.id, licence, reason="issued", if_match=None)
        store = records_tx.records.store
        load = store.current_values

        async def erased_after_loading(citizen_ids: Sequence[str], fields: Sequence[str]) -> Any:
            rows = await load(citizen_ids, fields)
            monkeypatch.setattr(store, "current_values", load)
            await writes.erase(
                records_tx.records, registrar, gone.id, reason="court-order", legal_basis="Court order 9"
            )
            return rows

        monkeypatch.setattr(store, "current_values", erased_after_loading)
        for _before_and_after in range(2):
            page = await reads.batch_get(records_tx.records, REVENUE, [gone.id, MADE_UP], ["licence_status"])
            raced, made_up = page.items
            assert raced.fields == {}
            assert [(w.field, w.reason) for w in raced.withheld] == [
                ("licence_status", "the citizen's record was erased")
            ]
            assert made_up.withheld[0].reason == "no such citizen is available to you"

    async def test_verify_and_history_that_raced_the_erasure_answer_as_after_it(
        self, records_tx: RecordsTx, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        registrar = facts_as("register", "registrar")
        fields = {"date_of_birth": "1980-01-01", "address": "1 Lane"}
        for n, ask in enumerate(("verify", "history")):
            gone = await writes.register(records_tx.records, registrar, f"ER888001{n}", fields)

            def erasing_after(load: Any, name: str, owner: Any, citizen_id: str = gone.id) -> Any:
                async def erased_after(*args: Any, **kwargs: Any) -> Any:
                    rows = await load(*args, **kwargs)
                    monkeypatch.setattr(owner, name, load)
                    await writes.erase(
                        records_tx.records,
                        registrar,
                        citizen_id,
                        reason="court-order",
                        legal_basis="Order 10",
                    )
                    return rows

                return erased_after

            if ask == "verify":
                store = records_tx.records.store
                monkeypatch.setattr(
                    store, "current_values", erasing_after(store.current_values, "current_values", store)
                )
                # Raced, then after: welfare may look citizens up, so both say erased.
                for _before_and_after in range(2):
                    with pytest.raises(CitizenErased):
                        await reads.verify(
                            records_tx.records, WELFARE, gone.id, {"date_of_birth": {"lte": "2000-01-01"}}
                        )
            else:
                monkeypatch.setattr(
                    repository, "history", erasing_after(repository.history, "history", repository)
                )
                fraud = replace(
                    facts_as("welfare", "consumer", purpose="fraud-investigation"), case_ref="F-1"
                )
                # Raced, then after: welfare may not look citizens up for fraud investigation,
                # but its history agreement over the address makes it a party: both say erased.
                for _before_and_after in range(2):
                    with pytest.raises(CitizenErased):
                        await reads.history(
                            records_tx.records, fraud, gone.id, "address", cursor=None, limit=5
                        )


class TestErasureThatRollsBack:
    async def test_records_no_shredding_when_the_erasure_does_not_commit(
        self, committed_records_env: RecordsEnv, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The erasure's own audit entry cannot be written, so it rolls back (503) and the
        citizen's keys stay: the audit trail must not say they were shredded."""
        env = committed_records_env
        citizen_id, _ = await env.register(given_name="Kept")

        async def audit_down(*_args: Any) -> int:
            raise AuditUnavailable("The audit trail cannot be written.")

        monkeypatch.setattr(audit_writer, "append_in_transaction", audit_down)
        erase = await env.client.delete(f"/v1/citizens/{citizen_id}", params=ERASURE, headers=REGISTRAR)
        assert erase.status_code == 503, erase.text
        monkeypatch.undo()
        read = await env.client.get(
            f"/v1/citizens/{citizen_id}", params={"purpose": PURPOSE}, headers=as_("welfare", "consumer")
        )
        assert read.json()["fields"]["given_name"]["value"] == "Kept"
        entries = await env.client.get(
            "/v1/audit/entries", params={"citizen_id": citizen_id}, headers=as_("audit-office", "auditor")
        )
        assert entries.status_code == 200, entries.text
        actions = [item["entry"]["action"] for item in entries.json()["items"]]
        assert "key-operation" not in actions
        assert "register" in actions  # the query finds this citizen's entries
        # Erased for real, the shredding is recorded with the erasure.
        erase = await env.client.delete(f"/v1/citizens/{citizen_id}", params=ERASURE, headers=REGISTRAR)
        assert erase.status_code == 204, erase.text
        entries = await env.client.get(
            "/v1/audit/entries", params={"citizen_id": citizen_id}, headers=as_("audit-office", "auditor")
        )
        shredded = [
            item["entry"]["reasons"][0]["reason"]
            for item in entries.json()["items"]
            if item["entry"]["action"] == "key-operation"
        ]
        assert shredded == [f"data_keys.shredded: citizen_id={citizen_id}, count=1"]
