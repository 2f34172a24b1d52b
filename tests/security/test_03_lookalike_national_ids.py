"""Finding 3: national ids that look the same were different citizens.

A fullwidth spelling, the same id followed by U+200B, or one holding U+202E each
registered a new citizen. Ids are NFKC-normalised and refused if format (Cf), control or
other default-ignorable characters remain (the last are tested in
tests/records/test_reindex_invisible.py), before the blind index and the duplicate check,
on register, lookup and bulk registration; `tellonce records reindex` rebuilds indexes
made before.
"""

from __future__ import annotations

import unicodedata
import uuid
from typing import Any

import httpx
import pytest

from service.auth.dependencies import Principal
from service.auth.facts import RequestFacts
from service.crypto.blind_index import NORMALISATION_VERSION
from service.db import Database
from service.errors import Conflict
from service.records import seeding
from service.records.errors import InvalidFieldValue
from service.records.reindex import rebuild_blind_indexes
from tests.fixtures.legacy_index import index_versions, registered_under
from tests.records.conftest import RecordsEnv, as_
from tests.security.conftest import problem

REGISTER = as_("register", "registrar")
WELFARE = as_("welfare", "consumer")


def _fresh_id() -> str:
    return f"RX-{uuid.uuid4().int % 10**9:09d}"


def _fullwidth(national_id: str) -> str:
    return "".join(chr(ord(ch) + 0xFEE0) if "!" <= ch <= "~" else ch for ch in national_id)


async def _register(env: RecordsEnv, national_id: str) -> httpx.Response:
    return await env.client.post(
        "/v1/citizens", json={"national_id": national_id, "fields": {}}, headers=REGISTER
    )


async def _lookup(env: RecordsEnv, national_id: str) -> httpx.Response:
    return await env.client.post(
        "/v1/citizens/lookup",
        json={"national_id": national_id, "purpose": "benefit-eligibility"},
        headers=WELFARE,
    )


class TestRegister:
    async def test_a_fullwidth_spelling_is_the_same_citizen(self, security_env: RecordsEnv) -> None:
        plain = _fresh_id()
        assert (await _register(security_env, plain)).status_code == 201
        problem(await _register(security_env, _fullwidth(plain)), 409)

    @pytest.mark.parametrize("invisible", ["\u200b", "\u202e", "\u2060", "\ufeff", "\x00", "\x1b"])
    async def test_invisible_characters_are_refused(self, security_env: RecordsEnv, invisible: str) -> None:
        plain = _fresh_id()
        for spelled in (plain + invisible, plain[:3] + invisible + plain[3:]):
            body = problem(await _register(security_env, spelled), 422)
            # The error names the rule, never the submitted id.
            assert plain not in str(body)
        assert (await _register(security_env, plain)).status_code == 201

    async def test_the_stored_id_is_the_canonical_one(self, security_env: RecordsEnv) -> None:
        plain = _fresh_id()
        created = await _register(security_env, _fullwidth(plain))
        citizen_id = created.json()["id"]
        read = await security_env.client.get(
            f"/v1/citizens/{citizen_id}",
            params={"fields": "national_id", "purpose": "civil-registration"},
            headers=as_("register", "consumer"),
        )
        assert read.json()["fields"]["national_id"]["value"] == plain


class TestLookup:
    async def test_a_fullwidth_spelling_finds_the_citizen(self, security_env: RecordsEnv) -> None:
        citizen_id, plain = await security_env.register(national_id=_fresh_id())
        found = await _lookup(security_env, _fullwidth(plain))
        assert found.json() == {"id": citizen_id}

    async def test_an_id_with_a_format_character_is_422(self, security_env: RecordsEnv) -> None:
        _, plain = await security_env.register(national_id=_fresh_id())
        problem(await _lookup(security_env, plain + "\u200b"), 422)


async def _seed(env: RecordsEnv, citizens: list[dict[str, Any]]) -> list[str]:
    """Bulk registration as an operator's loader runs it: one transaction, committed."""
    principal = Principal.with_roles("seeding-client", "register", "registrar")
    registrar = RequestFacts(principal=principal, request_id="seed-test")
    database: Database = env.app.state.database
    async with database.engine.begin() as conn:
        return await seeding.register_population(conn, env.app.state.keyring, registrar, citizens)


class TestBulkRegistration:
    async def test_lookalikes_in_one_batch_conflict(self, security_env: RecordsEnv) -> None:
        plain = _fresh_id()
        with pytest.raises(Conflict):
            await _seed(security_env, [{"national_id": plain}, {"national_id": _fullwidth(plain)}])

    async def test_a_lookalike_of_a_registered_id_conflicts(self, security_env: RecordsEnv) -> None:
        _, plain = await security_env.register(national_id=_fresh_id())
        with pytest.raises(Conflict):
            await _seed(security_env, [{"national_id": _fullwidth(plain)}])

    async def test_an_invisible_character_is_refused(self, security_env: RecordsEnv) -> None:
        with pytest.raises(InvalidFieldValue):
            await _seed(security_env, [{"national_id": _fresh_id() + "\u200b"}])


def _normalise_v1(value: str) -> str:
    """What normalisation 1 hashed: format characters kept."""
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", value).casefold()).strip()


class TestReindex:
    async def _legacy(self, env: RecordsEnv, spelled: str, monkeypatch: pytest.MonkeyPatch) -> str:
        """A citizen registered before normalisation 2: the id kept its invisible character
        and its index was computed with it."""
        return await registered_under(
            env, _register, spelled, monkeypatch, identifier=str, normalise=_normalise_v1, version=1
        )

    async def test_rebuilds_old_indexes_resumably_and_reports_lookalikes(
        self, security_env: RecordsEnv, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        first, second = _fresh_id(), _fresh_id()
        legacy_first = await self._legacy(security_env, first + "\u200b", monkeypatch)
        legacy_second = await self._legacy(security_env, second + "\u2060", monkeypatch)
        # Before the rebuild, the old index let the plain id register beside the look-alike.
        plain_first = (await _register(security_env, first)).json()["id"]
        assert await index_versions(security_env, [legacy_first, legacy_second]) == [1, 1]

        database = Database(security_env.settings)
        keyring = security_env.app.state.keyring

        def interrupt(done: int) -> None:
            raise KeyboardInterrupt

        try:
            with pytest.raises(KeyboardInterrupt):
                await rebuild_blind_indexes(database, keyring, batch_size=1, progress=interrupt)
            # The first batch committed before the interruption; the second did not run.
            assert await index_versions(security_env, [legacy_first, legacy_second]) == [
                NORMALISATION_VERSION,
                1,
            ]

            result = await rebuild_blind_indexes(database, keyring, batch_size=1)
        finally:
            await database.dispose()

        assert result.rebuilt == 1
        assert result.changed == 1
        # Rebuilt under the current normalisation (3 since whitespace inside stopped counting).
        assert await index_versions(security_env, [legacy_first, legacy_second]) == [
            NORMALISATION_VERSION,
            NORMALISATION_VERSION,
        ]
        assert sorted([legacy_first, plain_first]) in result.shared
        # The look-alike registered earlier is now found by its plain spelling.
        assert (await _lookup(security_env, second)).json() == {"id": legacy_second}
