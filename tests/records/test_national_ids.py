"""One national id, one citizen: registration and writes both refuse a national id another
citizen holds (409), and a registration gives its national id once."""

from __future__ import annotations

import asyncio
import unicodedata
import uuid

import httpx
import pytest

from service.records import values
from tests.records.conftest import RecordsEnv, as_
from tests.records.test_citizens_api import problem

REGISTRAR = as_("register", "registrar")
REGISTER_WRITER = as_("register", "writer")
WELFARE = as_("welfare", "consumer")
AUDITOR = as_("audit-office", "auditor")


def new_national_id() -> str:
    return f"NI{uuid.uuid4().hex[:10].upper()}"


async def set_national_id(env: RecordsEnv, citizen_id: str, national_id: str) -> httpx.Response:
    return await env.client.patch(
        f"/v1/citizens/{citizen_id}/fields",
        json={"fields": {"national_id": national_id}, "reason": "corrected"},
        headers=REGISTER_WRITER,
    )


async def holder(env: RecordsEnv, national_id: str) -> str | None:
    """The citizen a lookup finds by ``national_id``, if any."""
    response = await env.client.post(
        "/v1/citizens/lookup",
        json={"national_id": national_id, "purpose": "benefit-eligibility"},
        headers=WELFARE,
    )
    if response.status_code == 404:
        return None
    assert response.status_code == 200, response.text
    found: str = response.json()["id"]
    return found


class TestWriteNationalId:
    async def test_another_citizens_national_id_is_409_and_nothing_is_written(
        self, records_env: RecordsEnv
    ) -> None:
        first, first_national_id = await records_env.register()
        second, second_national_id = await records_env.register()
        # Compared as registration compares: case and surrounding spaces do not matter.
        response = await set_national_id(records_env, second, f" {first_national_id.lower()} ")
        body = problem(response, 409)
        assert body["type"].endswith("/conflict")
        assert "already registered" in body["detail"]
        assert first_national_id not in response.text
        assert await holder(records_env, first_national_id) == first
        assert await holder(records_env, second_national_id) == second
        audited = await records_env.client.get(
            "/v1/audit/entries", params={"citizen_id": second, "action": "write"}, headers=AUDITOR
        )
        assert [(e["entry"]["status"], e["entry"]["decision"]) for e in audited.json()["items"]] == [
            (409, "deny")
        ]

    async def test_a_citizen_may_write_its_own_national_id_again(self, records_env: RecordsEnv) -> None:
        citizen_id, national_id = await records_env.register()
        response = await set_national_id(records_env, citizen_id, national_id.lower())
        assert response.status_code == 200, response.text
        assert await holder(records_env, national_id) == citizen_id

    async def test_a_new_national_id_is_written(self, records_env: RecordsEnv) -> None:
        citizen_id, old = await records_env.register()
        new = new_national_id()
        response = await set_national_id(records_env, citizen_id, new)
        assert response.status_code == 200, response.text
        assert await holder(records_env, new) == citizen_id
        assert await holder(records_env, old) is None

    async def test_racing_writes_and_a_registration_store_it_once(
        self, committed_records_env: RecordsEnv
    ) -> None:
        env = committed_records_env
        first, _ = await env.register()
        second, _ = await env.register()
        wanted = new_national_id()
        register = env.client.post("/v1/citizens", json={"national_id": wanted}, headers=REGISTRAR)
        answers = await asyncio.gather(
            set_national_id(env, first, wanted), set_national_id(env, second, wanted), register
        )
        statuses = sorted(response.status_code for response in answers)
        assert statuses in ([200, 409, 409], [201, 409, 409]), [r.text for r in answers]
        winner = next(r for r in answers if r.status_code in (200, 201))
        assert await holder(env, wanted) == winner.json()["id"]


class TestRegisterNationalId:
    async def test_a_duplicate_is_409_and_audited_as_a_refused_attempt(self, records_env: RecordsEnv) -> None:
        _, national_id = await records_env.register()
        response = await records_env.client.post(
            "/v1/citizens",
            json={"national_id": national_id, "fields": {"given_name": "Again"}},
            headers=REGISTRAR,
        )
        problem(response, 409)
        listed = await records_env.client.get(
            "/v1/audit/entries", params={"action": "register", "decision": "deny"}, headers=AUDITOR
        )
        assert listed.status_code == 200, listed.text
        refusals = [item["entry"] for item in listed.json()["items"]]
        assert [(e["status"], e["citizen_id"], e["fields_released"]) for e in refusals] == [(409, None, [])]
        assert sorted(refusals[0]["fields_requested"]) == ["given_name", "national_id"]
        assert national_id not in listed.text

    async def test_a_national_id_among_the_fields_is_422(self, records_env: RecordsEnv) -> None:
        top, among_fields = new_national_id(), new_national_id()
        response = await records_env.client.post(
            "/v1/citizens",
            json={"national_id": top, "fields": {"national_id": among_fields, "given_name": "Twice"}},
            headers=REGISTRAR,
        )
        body = problem(response, 422)
        assert [e["loc"] for e in body["errors"]] == [["body", "fields", "national_id"]]
        assert top not in response.text
        assert among_fields not in response.text
        assert await holder(records_env, top) is None
        assert await holder(records_env, among_fields) is None


def grouped(national_id: str, space: str = " ") -> str:
    """``national_id`` written in groups of two, as NI numbers are printed: "NI 1A 2B ..."."""
    return space.join(national_id[n : n + 2] for n in range(0, len(national_id), 2))


async def register_as(env: RecordsEnv, national_id: str) -> httpx.Response:
    return await env.client.post(
        "/v1/citizens", json={"national_id": national_id, "fields": {}}, headers=REGISTRAR
    )


async def stored_national_id(env: RecordsEnv, citizen_id: str) -> str:
    read = await env.client.get(
        f"/v1/citizens/{citizen_id}",
        params={"fields": "national_id", "purpose": "civil-registration"},
        headers=as_("register", "consumer"),
    )
    assert read.status_code == 200, read.text
    value: str = read.json()["fields"]["national_id"]["value"]
    return value


class TestWhitespaceInsideANationalId:
    """Whitespace inside a national id is not part of it (normalisation 3): "AB 12 34 56 C"
    and "AB123456C" are one id, for the duplicate check, lookup and writes alike."""

    async def test_a_spaced_spelling_of_a_registered_id_is_a_duplicate(self, records_env: RecordsEnv) -> None:
        _, national_id = await records_env.register()
        exact = problem(await register_as(records_env, national_id), 409)

        for spelled in (
            grouped(national_id),
            grouped(national_id, "\u00a0"),
            grouped(national_id, "\u3000\u2009"),
        ):
            spaced = await register_as(records_env, spelled)
            body = problem(spaced, 409)
            # The answer an exact duplicate gets, naming neither spelling.
            assert {k: body[k] for k in ("type", "title", "detail")} == {
                k: exact[k] for k in ("type", "title", "detail")
            }
            assert national_id not in spaced.text
            assert spelled not in spaced.text

    async def test_an_unspaced_spelling_of_a_spaced_registration_is_a_duplicate(
        self, records_env: RecordsEnv
    ) -> None:
        national_id = new_national_id()
        assert (await register_as(records_env, grouped(national_id))).status_code == 201
        problem(await register_as(records_env, national_id), 409)
        problem(await register_as(records_env, national_id.lower()), 409)

    async def test_lookup_by_either_spelling_finds_the_citizen(self, records_env: RecordsEnv) -> None:
        plain, _ = await records_env.register(national_id=(plain_id := new_national_id()))
        spaced = (await register_as(records_env, grouped(spaced_id := new_national_id()))).json()["id"]

        assert await holder(records_env, plain_id) == plain
        assert await holder(records_env, grouped(plain_id)) == plain
        assert await holder(records_env, grouped(plain_id, "\u00a0\u202f")) == plain
        assert await holder(records_env, spaced_id) == spaced
        assert await holder(records_env, grouped(spaced_id)) == spaced
        assert await holder(records_env, grouped(spaced_id, "\u2028")) == spaced

    async def test_the_stored_id_is_the_normalised_one(self, records_env: RecordsEnv) -> None:
        national_id = new_national_id()
        created = await register_as(records_env, " " + grouped(national_id, "\u00a0 ") + " ")
        assert created.status_code == 201, created.text
        assert await stored_national_id(records_env, created.json()["id"]) == national_id

    async def test_a_control_character_inside_is_still_refused(self, records_env: RecordsEnv) -> None:
        national_id = new_national_id()
        for control in ("\t", "\n", "\u0085"):
            response = await register_as(records_env, national_id[:4] + control + national_id[4:])
            body = problem(response, 422)
            assert national_id[4:] not in response.text
            assert body["errors"][0]["loc"][-1] == "national_id"
        assert await holder(records_env, national_id) is None

    async def test_writing_another_citizens_id_spaced_is_409(self, records_env: RecordsEnv) -> None:
        first, first_national_id = await records_env.register()
        second, second_national_id = await records_env.register()
        problem(await set_national_id(records_env, second, grouped(first_national_id)), 409)
        assert await holder(records_env, first_national_id) == first
        assert await holder(records_env, second_national_id) == second
        # A citizen's own id, spaced, is its own: written in the normalised spelling.
        response = await set_national_id(records_env, first, grouped(first_national_id.lower()))
        assert response.status_code == 200, response.text
        assert await stored_national_id(records_env, first) == first_national_id.lower()


async def verify_national_id(env: RecordsEnv, citizen_id: str, claim: dict[str, object]) -> bool:
    """The register's own verify of a citizen's national id (an owner may use its fields)."""
    response = await env.client.post(
        f"/v1/citizens/{citizen_id}/verify",
        json={"purpose": "civil-registration", "claims": {"national_id": claim}},
        headers=as_("register", "consumer"),
    )
    assert response.status_code == 200, response.text
    result: bool = response.json()["results"]["national_id"]
    return result


class TestVerifyANationalId:
    """A claim on an identifier compares it as lookup and the duplicate check do: whitespace
    inside and case not part of it, in the operand or in a value stored with spaces before
    normalisation 3."""

    async def test_every_spelling_lookup_finds_holds(self, records_env: RecordsEnv) -> None:
        """Lookup found the citizen by "ab123456c" and refused to register it again as a
        duplicate, while verify said the citizen's id was not "ab123456c"."""
        national_id = new_national_id()
        citizen_id = (await register_as(records_env, national_id)).json()["id"]
        for spelled in (national_id.lower(), grouped(national_id.lower(), "\u00a0"), national_id.swapcase()):
            assert await holder(records_env, spelled) == citizen_id
            assert await verify_national_id(records_env, citizen_id, {"eq": spelled})
            assert await verify_national_id(records_env, citizen_id, {"in": ["X", spelled]})
        assert not await verify_national_id(records_env, citizen_id, {"eq": new_national_id().lower()})

    async def test_either_spelling_of_the_operand_holds(self, records_env: RecordsEnv) -> None:
        national_id = new_national_id()
        citizen_id = (await register_as(records_env, grouped(national_id))).json()["id"]

        assert await verify_national_id(records_env, citizen_id, {"eq": national_id})
        assert await verify_national_id(records_env, citizen_id, {"eq": grouped(national_id)})
        assert await verify_national_id(
            records_env, citizen_id, {"in": ["X", grouped(national_id, "\u00a0")]}
        )
        assert not await verify_national_id(records_env, citizen_id, {"eq": grouped(new_national_id())})

    async def test_a_value_stored_with_spaces_is_compared_without_them(
        self, records_env: RecordsEnv, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        national_id = new_national_id()
        with monkeypatch.context() as patch:
            # As normalisation 2 stored it: spaces inside kept.
            patch.setattr(values, "identifier", lambda raw: unicodedata.normalize("NFKC", raw).strip())
            created = await register_as(records_env, grouped(national_id))
        citizen_id = created.json()["id"]
        assert await stored_national_id(records_env, citizen_id) == grouped(national_id)

        assert await verify_national_id(records_env, citizen_id, {"eq": national_id})
        assert await verify_national_id(records_env, citizen_id, {"eq": grouped(national_id)})

    async def test_an_operand_with_a_format_character_is_422(self, records_env: RecordsEnv) -> None:
        citizen_id, national_id = await records_env.register()
        response = await records_env.client.post(
            f"/v1/citizens/{citizen_id}/verify",
            json={"purpose": "civil-registration", "claims": {"national_id": {"eq": national_id + "\u200b"}}},
            headers=as_("register", "consumer"),
        )
        problem(response, 422)
        assert national_id not in response.text
