"""The forms of ``CitizenStore`` return the same rows for the same questions.

The access path reads citizens and current values through the raw driver (SQLite or
PostgreSQL, whichever this run uses); tests and one-transaction callers read through
SQLAlchemy Core (``CoreStore``). A difference between them would let a test pass that
production fails, so each question is asked of both, on the same committed rows.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.config import Settings
from service.consent import repository as consent_repository
from service.crypto.keyring import Keyring
from service.db import create_engine
from service.policy.service import PolicyHolder
from service.records import seeding, writes
from service.records import store as records_store
from service.records.repository import ValueRow
from service.records.service import RecordsService
from service.records.store import CitizenStore, CoreStore, open_store
from tests.fixtures.databases import create_scratch_database, drop_scratch_database
from tests.records.conftest import apply_policies, facts_as

UNKNOWN = "00000000-0000-4000-8000-000000000099"
FIELDS = ["given_name", "address", "licence_status", "points", "self_employed", "date_of_birth"]


@dataclass
class Stored:
    url: str
    ids: list[str]


@pytest.fixture(scope="module")
async def stored(database_url: str, settings: Settings) -> AsyncIterator[Stored]:
    """Committed (the raw driver reads on its own connection): three citizens with values
    of several owners and types; one has a second version of a field (the first is
    history), one is erased."""
    url = await create_scratch_database(database_url)
    apply_policies(url)
    engine = create_engine(url)
    keyring = Keyring.from_settings(settings)
    people: list[dict[str, Any]] = [
        {"national_id": "ST10000001", "given_name": "Storey", "date_of_birth": "1980-02-01"},
        {
            "national_id": "ST10000002",
            "given_name": "Storer",
            "address": "1 Old Road",
            "licence_status": "valid",
            "points": 3,
            "self_employed": True,
        },
        {"national_id": "ST10000003", "given_name": "Stored", "points": 0},
    ]
    try:
        async with engine.begin() as conn:
            ids = await seeding.register_population(conn, keyring, facts_as("register", "registrar"), people)
            records = RecordsService.in_transaction(conn, keyring, PolicyHolder())
            await writes.write(
                records,
                facts_as("register", "writer"),
                ids[1],
                {"address": "2 New Road"},
                reason="moved",
                if_match=None,
            )
            await writes.erase(
                records, facts_as("register", "registrar"), ids[2], reason="court-order", legal_basis="a test"
            )
            # Choices: an active consent with an expiry, a paused and a revoked one, objections.
            now = datetime(2026, 12, 2, 9, 30, 15, 123456, tzinfo=UTC)
            for index, (citizen, agreement, status, expires) in enumerate(
                [
                    (ids[0], "a-consent", "active", now),
                    (ids[0], "b-consent", "paused", None),
                    (ids[1], "a-consent", "revoked", None),
                    (ids[1], "b-consent", "active", None),
                ]
            ):
                await consent_repository.insert_consent(
                    conn,
                    consent_repository.ConsentRow(
                        id=f"00000000-0000-4000-8000-00000000000{index}",
                        citizen_id=citizen,
                        agreement=agreement,
                        consumer="revenue",
                        purpose="tax-administration",
                        fields=["points"],
                        # One consent stored without actions (it covers none).
                        actions=None if index == 3 else ["read", "verify"],
                        status=status,
                        created_at=now,
                        updated_at=now,
                        expires_at=expires,
                        data_life=None,
                        signature="a.b.c",
                    ),
                )
            await consent_repository.insert_objection(conn, ids[0], "c-objectable", now)
            await consent_repository.insert_objection(conn, ids[1], "d-objectable", now)
        yield Stored(url, ids)
    finally:
        await engine.dispose()
        await drop_scratch_database(url)


def _order(row: ValueRow) -> tuple[str, str, int]:
    return (row.citizen_id, row.field, row.version)


async def _ask(store: CitizenStore, question: str, ids: list[str]) -> Any:
    if question == "citizens":
        return await store.citizens([*ids, UNKNOWN])
    if question == "no citizens":
        return await store.citizens([])
    if question == "current values":
        return sorted(await store.current_values([*ids, UNKNOWN], FIELDS), key=_order)
    if question == "some fields of some citizens":
        return sorted(await store.current_values(ids[1:2], ["address", "points"]), key=_order)
    if question == "choices":
        agreements = ["a-consent", "b-consent", "c-objectable", "d-objectable"]
        rows = await store.choices([*ids, UNKNOWN], agreements)
        return sorted(rows, key=lambda row: (row.citizen_id, row.agreement, row.consent))
    if question == "citizens with choices":
        found, rows = await store.citizens_with_choices([*ids, UNKNOWN], ["a-consent", "c-objectable"])
        return found, sorted(rows, key=lambda row: (row.citizen_id, row.agreement, row.consent))
    if question == "choices among some agreements":
        return await store.choices(ids[:1], ["a-consent", "d-objectable"])
    if question == "each citizen with values while active":
        answers = []
        for citizen_id in [*ids, UNKNOWN]:
            one, values = await store.citizen_with_values(citizen_id, "active", FIELDS)
            answers.append((one, sorted(values, key=_order)))
        return answers
    if question == "a citizen with values while erased":
        erased, values = await store.citizen_with_values(ids[2], "erased", ["points", "given_name"])
        return erased, sorted(values, key=_order)
    if question == "a citizen with no fields":
        return await store.citizen_with_values(ids[1], "active", [])
    assert question == "no fields"
    return await store.current_values(ids, [])


class TestStoresAgree:
    @pytest.mark.parametrize(
        "question",
        [
            "citizens",
            "no citizens",
            "current values",
            "some fields of some citizens",
            "no fields",
            "choices",
            "choices among some agreements",
            "citizens with choices",
            "each citizen with values while active",
            "a citizen with values while erased",
            "a citizen with no fields",
        ],
    )
    async def test_core_and_raw_driver_return_the_same_rows(self, stored: Stored, question: str) -> None:
        engine = create_engine(stored.url)
        try:
            async with engine.connect() as conn:
                core = await _ask(CoreStore(conn), question, stored.ids)
        finally:
            await engine.dispose()
        driver = await open_store(stored.url)
        try:
            raw = await _ask(driver, question, stored.ids)
        finally:
            await driver.close()

        assert raw == core

    async def test_the_rows_are_what_was_stored(self, stored: Stored) -> None:
        """So that agreement above is not two empty answers."""
        driver = await open_store(stored.url)
        try:
            citizens = await driver.citizens([*stored.ids, UNKNOWN])
            values = await driver.current_values(stored.ids, FIELDS)
        finally:
            await driver.close()
        assert {c.id: (c.status, c.version) for c in citizens.values()} == {
            stored.ids[0]: ("active", 1),
            stored.ids[1]: ("active", 2),
            stored.ids[2]: ("erased", 2),
        }
        current = {(row.citizen_id, row.field): row.version for row in values}
        assert current[(stored.ids[1], "address")] == 2
        assert len(current) == 2 + 5 + 2
        assert all(row.written_at.tzinfo is not None and row.ciphertext for row in values)

    async def test_a_citizen_comes_with_values_only_in_the_status_asked_for(self, stored: Stored) -> None:
        """The one-statement read of the secured read: an erased citizen's remaining
        ciphertexts are not loaded when an active citizen's were allowed."""
        driver = await open_store(stored.url)
        try:
            active = await driver.citizen_with_values(stored.ids[1], "active", ["address", "points"])
            erased = await driver.citizen_with_values(stored.ids[2], "active", FIELDS)
            as_erased = await driver.citizen_with_values(stored.ids[2], "erased", FIELDS)
            unknown = await driver.citizen_with_values(UNKNOWN, "active", FIELDS)
        finally:
            await driver.close()
        assert active[0] is not None
        assert (active[0].status, sorted((r.field, r.version) for r in active[1])) == (
            "active",
            [("address", 2), ("points", 1)],
        )
        assert erased[0] is not None
        assert (erased[0].status, erased[1]) == ("erased", [])
        assert len(as_erased[1]) == 2
        assert unknown == (None, [])

    async def test_choices_are_the_active_consents_and_the_objections(self, stored: Stored) -> None:
        driver = await open_store(stored.url)
        try:
            rows = await driver.choices(
                stored.ids, ["a-consent", "b-consent", "c-objectable", "d-objectable"]
            )
        finally:
            await driver.close()
        first, second = stored.ids[0], stored.ids[1]
        assert sorted((r.citizen_id == first, r.agreement, r.consent) for r in rows) == [
            (False, "b-consent", True),
            (False, "d-objectable", False),
            (True, "a-consent", True),
            (True, "c-objectable", False),
        ]
        [expiring] = [r for r in rows if r.citizen_id == first and r.agreement == "a-consent"]
        assert expiring.expires_at == datetime(2026, 12, 2, 9, 30, 15, 123456, tzinfo=UTC)
        # A consent comes with the terms it was given to; an objection with none.
        assert (expiring.consumer, expiring.purpose, expiring.fields, expiring.actions) == (
            "revenue",
            "tax-administration",
            ("points",),
            ("read", "verify"),
        )
        [unnamed] = [r for r in rows if r.citizen_id == second and r.agreement == "b-consent"]
        assert unnamed.actions == ()
        assert {(r.consumer, r.purpose, r.fields, r.actions) for r in rows if not r.consent} == {
            ("", "", (), ())
        }
        assert second in {r.citizen_id for r in rows}


class TestStoredTimes:
    """``store._utc`` reads SQLite's naive UTC text by parsing it with an offset added;
    every form a driver gives back means the same instant as parsing and then setting UTC."""

    @staticmethod
    def _reference(value: Any) -> datetime:
        parsed = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)

    @given(
        moment=st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2200, 1, 1)),
        offset_minutes=st.integers(min_value=-14 * 60, max_value=14 * 60),
    )
    def test_every_form_reads_as_the_same_instant(self, moment: datetime, offset_minutes: int) -> None:
        zone = timezone(timedelta(minutes=offset_minutes))
        forms = [
            moment.isoformat(sep=" "),  # SQLite's text (microseconds only when there are some)
            moment.replace(microsecond=123456).isoformat(sep=" "),
            moment.replace(tzinfo=zone).isoformat(),  # text with an offset of its own
            moment,  # a naive datetime
            moment.replace(tzinfo=zone),  # an aware one (asyncpg)
        ]
        for form in forms:
            read = records_store._utc(form)
            assert read.tzinfo is not None
            assert read == self._reference(form)
            assert read.utcoffset() == self._reference(form).utcoffset()

    def test_text_that_is_no_time_is_refused(self) -> None:
        with pytest.raises(ValueError, match="Invalid isoformat"):
            records_store._utc("not a time")
