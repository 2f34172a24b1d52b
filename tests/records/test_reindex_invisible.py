"""``tellonce records reindex`` from normalisation 3 to 4: invisible marks, and digits of
other scripts, in an id.

Under normalisation 3 an identifier refused format (Cf) and control (Cc) characters, but
the other default-ignorable code points passed: the combining grapheme joiner U+034F,
variation selectors, Mongolian free variation selectors, Khmer inherent vowels, Hangul
fillers. An id followed by one of them printed as the id, was stored with it and had an
index of its own, so the same person registered twice. Now the mark is refused (422) on
every way in, the index drops it (normalisation 4), and the rebuild makes the indexes of
citizens registered before agree, then lists the citizens that share one id. So with an
id written in another script's digits (Devanagari, Arabic-Indic): normalisation 3 kept
them, so it was another id; now they are stored and indexed as ASCII digits.
"""

from __future__ import annotations

import unicodedata

import pytest

from service.crypto.blind_index import NORMALISATION_VERSION, WHITESPACE
from service.db import Database
from service.records import values
from service.records.reindex import rebuild_blind_indexes
from tests.fixtures.legacy_index import index_versions, registered_under
from tests.records.conftest import RecordsEnv, as_
from tests.records.test_citizens_api import problem
from tests.records.test_national_ids import holder, new_national_id, register_as, stored_national_id

# Default-ignorable code points that are neither format nor control characters: the ones
# normalisation 3 let through.
MARKS = ["\u034f", "\ufe0f", "\U000e0100", "\u180b", "\u17b4", "\u3164", "\uffa0"]


def _identifier_v3(raw: str) -> str:
    """The stored spelling as normalisation 3 made it: format and control characters
    refused, whitespace dropped, other invisible marks and digits of other scripts kept."""
    canonical = unicodedata.normalize("NFKC", raw).strip()
    if not canonical or any(unicodedata.category(ch) in ("Cf", "Cc") for ch in canonical):
        raise values.ValueRejected("not an identifier under normalisation 3")
    return unicodedata.normalize("NFKC", "".join(ch for ch in canonical if ch not in WHITESPACE))


def _normalise_v3(value: str) -> str:
    """What normalisation 3 hashed: invisible marks and digits of other scripts kept."""
    composed = unicodedata.normalize("NFKC", value)
    visible = "".join(
        ch for ch in composed if ch not in WHITESPACE and unicodedata.category(ch) not in ("Cf", "Cc")
    )
    return unicodedata.normalize("NFKC", visible.casefold())


def _devanagari(national_id: str) -> str:
    """``national_id`` with its digits written in Devanagari (U+0966..U+096F)."""
    return "".join(chr(0x966 + int(ch)) if ch.isdigit() else ch for ch in national_id)


async def _registered_under_v3(env: RecordsEnv, spelled: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A citizen registered before normalisation 4: its id stored with its mark, and its
    index computed with it and marked version 3."""
    return await registered_under(
        env, register_as, spelled, monkeypatch, identifier=_identifier_v3, normalise=_normalise_v3, version=3
    )


class TestInvisibleMarksAreRefused:
    @pytest.mark.parametrize("mark", MARKS)
    async def test_registration_and_lookup_refuse_a_marked_id(
        self, records_env: RecordsEnv, mark: str
    ) -> None:
        registered = new_national_id()
        assert (await register_as(records_env, registered)).status_code == 201
        for spelled in (registered + mark, registered[:4] + mark + registered[4:]):
            body = problem(await register_as(records_env, spelled), 422)
            # The error names the rule, never the submitted id.
            assert "invisible" in str(body)
            assert registered not in str(body)
            lookup = await records_env.client.post(
                "/v1/citizens/lookup",
                json={"national_id": spelled, "purpose": "benefit-eligibility"},
                headers=as_("welfare", "consumer"),
            )
            problem(lookup, 422)
        # And one registration under the plain spelling only.
        problem(await register_as(records_env, registered), 409)


def _arabic_indic(national_id: str) -> str:
    """``national_id`` with its digits written in Arabic-Indic digits (U+0660..U+0669)."""
    return "".join(chr(0x660 + int(ch)) if ch.isdigit() else ch for ch in national_id)


class TestDigitsOfAnyScript:
    async def test_one_id_whatever_digits_it_is_written_in(self, records_env: RecordsEnv) -> None:
        registered = new_national_id()
        citizen_id = (await register_as(records_env, registered)).json()["id"]
        # Another script's digits are the same number: a duplicate, and found by lookup.
        problem(await register_as(records_env, _arabic_indic(registered)), 409)
        assert await holder(records_env, _devanagari(registered)) == citizen_id
        # Registered in them, an id is stored in ASCII digits.
        other = new_national_id()
        created = await register_as(records_env, _devanagari(other))
        assert created.status_code == 201, created.text
        assert await stored_national_id(records_env, created.json()["id"]) == other
        problem(await register_as(records_env, other), 409)


class TestReindexInvisibleMarks:
    async def test_rebuilds_version_3_rows_and_reports_a_shared_id(
        self, committed_records_env: RecordsEnv, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        env = committed_records_env
        shared_id, alone_id = new_national_id(), new_national_id()
        legacy_shared = await _registered_under_v3(env, shared_id + "\u034f", monkeypatch)
        legacy_alone = await _registered_under_v3(env, alone_id[:3] + "\ufe0f" + alone_id[3:], monkeypatch)
        # The same id in Devanagari digits: another id under normalisation 3.
        digits_id = new_national_id()
        legacy_digits = await _registered_under_v3(env, _devanagari(digits_id), monkeypatch)
        plain_digits = (await register_as(env, digits_id)).json()["id"]
        # Before the rebuild the version 3 index hides the marked registration: the plain id
        # registers a second citizen, and the marked one is not found by its plain spelling.
        plain_shared = (await register_as(env, shared_id)).json()["id"]
        assert await holder(env, alone_id) is None
        assert await index_versions(env, [legacy_shared, legacy_alone, plain_shared]) == [
            3,
            3,
            NORMALISATION_VERSION,
        ]

        database = Database(env.settings)
        try:
            result = await rebuild_blind_indexes(database, env.app.state.keyring, batch_size=1)
        finally:
            await database.dispose()

        assert (result.rebuilt, result.changed) == (3, 3)
        assert NORMALISATION_VERSION == 4
        assert (
            await index_versions(env, [legacy_shared, legacy_alone, plain_shared, legacy_digits]) == [4] * 4
        )
        assert sorted(result.shared) == sorted(
            [sorted([legacy_shared, plain_shared]), sorted([legacy_digits, plain_digits])]
        )
        # Found by its plain spelling now, and the duplicate check sees it. A rebuild changes
        # indexes only: the stored value keeps the mark until it is next written.
        assert await holder(env, alone_id) == legacy_alone
        assert (await register_as(env, alone_id)).status_code == 409
        assert await stored_national_id(env, legacy_alone) == alone_id[:3] + "\ufe0f" + alone_id[3:]
