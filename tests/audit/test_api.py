"""The audit API: tamper evidence, queries, export, usage, and the citizen access log."""

from __future__ import annotations

import base64
import csv
import io
import json
import random
import urllib.parse
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncConnection

from service.audit import merkle
from service.audit import repository as audit_repository
from service.audit.checkpoint import NoteVerifier
from service.audit.schemas import AuditEntry, canonical_json
from service.audit.writer import AuditWriter, get_audit_writer
from service.openapi_examples import RESPONSE_EXAMPLES
from tests.audit.conftest import poll
from tests.fixtures.audit import TransactionAudit, make_entry
from tests.fixtures.auth import act_as

PROBLEM = "application/problem+json"


def _problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["title"]
    return body


class EntrySink(Protocol):
    async def append_many(self, entries: Sequence[AuditEntry]) -> list[int]: ...


async def _seed(log: EntrySink, citizen: str) -> list[int]:
    """Five entries about one citizen: two consumers, three owners, one denial."""
    entries = [
        make_entry(
            citizen_id=citizen, department="welfare", owners=["dvla"], fields_released=["licence_status"]
        ),
        make_entry(
            citizen_id=citizen,
            department="welfare",
            owners=["register"],
            fields_requested=["address"],
            fields_released=["address"],
            purpose="address-update",
            time="2026-10-03T09:00:00+00:00",
        ),
        make_entry(
            citizen_id=citizen,
            department="revenue",
            owners=["dvla"],
            fields_requested=["points"],
            fields_released=[],
            decision="deny",
            status=403,
            purpose="tax-administration",
        ),
        make_entry(
            citizen_id=citizen, department="revenue", action="lookup", owners=["register"], fields_released=[]
        ),
        make_entry(
            citizen_id=citizen, department="dvla", action="write", owners=["dvla"], fields_released=["points"]
        ),
    ]
    return await log.append_many(entries)


async def _items(client: httpx.AsyncClient, **params: Any) -> list[dict[str, Any]]:
    response = await client.get("/v1/audit/entries", params=params)
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


async def _accesses(client: httpx.AsyncClient, **params: Any) -> list[dict[str, Any]]:
    """``_items`` without the audit queries: a search by citizen is itself an entry naming
    them, so each search adds one to the next."""
    return [item for item in await _items(client, **params) if item["entry"]["action"] != "audit-query"]


class TestTamperEvidenceEndpoints:
    async def test_checkpoint_proof_and_consistency_verify(
        self, audit_app: FastAPI, audit_client: httpx.AsyncClient
    ) -> None:
        act_as(audit_app, "audit-office", "auditor")
        citizen = str(uuid.uuid4())
        ids = await _seed(audit_app.state.audit_writer, citizen)
        vkey = (await audit_client.get("/v1/audit/verifier-key")).text.strip()
        verifier = NoteVerifier.parse(vkey)

        async def first_checkpoint() -> Any:
            response = await audit_client.get("/v1/audit/checkpoint")
            if response.status_code != 200:
                return None
            return verifier.open_checkpoint(response.text)

        async def sequenced() -> list[dict[str, Any]] | None:
            # Each search by the citizen is itself an entry naming them (audit-query).
            items = [i for i in await _items(audit_client, citizen_id=citizen) if i["id"] in ids]
            return (
                items if len(items) == len(ids) and all(i["leaf_index"] is not None for i in items) else None
            )

        items = await poll(sequenced)
        leaf_index = next(i["leaf_index"] for i in items if i["id"] == ids[2])

        # The log may hold entries from before (the catalog's own change entry): wait for a
        # checkpoint that covers every seeded entry.
        async def covering_checkpoint() -> Any:
            checkpoint = await first_checkpoint()
            last = max(i["leaf_index"] for i in items)
            return checkpoint if checkpoint is not None and checkpoint.size > last else None

        first = await poll(covering_checkpoint)
        assert first.size >= 5
        assert (
            (await audit_client.get("/v1/audit/checkpoint")).headers["content-type"].startswith("text/plain")
        )
        response = await audit_client.get(
            f"/v1/audit/entries/{leaf_index}/proof", params={"tree_size": first.size}
        )
        assert response.status_code == 200
        proof = response.json()
        assert set(proof) == {"leaf_index", "tree_size", "leaf_hash", "hashes", "entry"}
        assert proof["entry"]["decision"] == "deny"
        leaf = merkle.leaf_hash(canonical_json(proof["entry"]).encode())
        assert base64.b64decode(proof["leaf_hash"]) == leaf
        hashes = [base64.b64decode(h) for h in proof["hashes"]]
        assert merkle.verify_inclusion(leaf, leaf_index, first.size, hashes, first.root_hash)

        # Grow the log, wait for a later checkpoint, prove it extends the first.
        await _seed(audit_app.state.audit_writer, citizen)

        async def later_checkpoint() -> Any:
            checkpoint = await first_checkpoint()
            return checkpoint if checkpoint and checkpoint.size > first.size else None

        second = await poll(later_checkpoint)
        response = await audit_client.get(
            "/v1/audit/consistency", params={"first": first.size, "second": second.size}
        )
        assert response.status_code == 200
        body = response.json()
        assert (body["first"], body["second"]) == (first.size, second.size)
        hashes = [base64.b64decode(h) for h in body["hashes"]]
        assert merkle.verify_consistency(first.size, second.size, hashes, first.root_hash, second.root_hash)

    async def test_bad_proof_requests_are_4xx(
        self, audit_app: FastAPI, audit_client: httpx.AsyncClient
    ) -> None:
        act_as(audit_app, "audit-office", "auditor")
        citizen = str(uuid.uuid4())
        await _seed(audit_app.state.audit_writer, citizen)

        async def sequenced() -> bool:
            items = await _items(audit_client, citizen_id=citizen)
            return bool(items) and all(i["leaf_index"] is not None for i in items)

        # This test's database is fresh: the unknown entry below is checked against a tree
        # that holds the seeded entries.
        await poll(sequenced)
        body = _problem(
            await audit_client.get("/v1/audit/entries/0/proof", params={"tree_size": 10**12}), 400
        )
        assert body["type"].endswith("audit-query-invalid")
        body = _problem(
            await audit_client.get("/v1/audit/consistency", params={"first": 5, "second": 2}), 400
        )
        assert "first" in body["detail"]
        _problem(await audit_client.get("/v1/audit/consistency", params={"first": 1, "second": 10**12}), 400)
        _problem(await audit_client.get("/v1/audit/consistency", params={"first": -1, "second": 2}), 422)
        _problem(await audit_client.get("/v1/audit/entries/abc/proof"), 422)
        _problem(await audit_client.get("/v1/audit/entries/99999999/proof", params={"tree_size": 1}), 404)

    async def test_only_auditors_get_proofs(self, app: FastAPI, client: httpx.AsyncClient) -> None:
        act_as(app, "welfare", "consumer", "data-owner")
        for path in (
            "/v1/audit/checkpoint",
            "/v1/audit/verifier-key",
            "/v1/audit/consistency?first=0&second=0",
        ):
            body = _problem(await client.get(path), 403)
            assert "audit:verify" in body["detail"]

    async def test_unauthenticated_is_401(self, client: httpx.AsyncClient) -> None:
        _problem(await client.get("/v1/audit/checkpoint"), 401)
        _problem(await client.get("/v1/audit/entries"), 401)


# Spellings of a number that are not plain decimal: Python's int() and pydantic read most
# of them (an underscore, a sign, surrounding whitespace, a leading zero, a whole float).
NOT_PLAIN_DECIMALS = ["3_0", "+3", " 3", "3 ", "3.0", "03", "00", "-0", "1e1", "\u0663", "0x1f", ""]
TOO_LARGE = [str(2**63), "9" * 30, "1" + "0" * 5000]


class TestPublicCheckpoint:
    """``TELLONCE_AUDIT_PUBLIC_CHECKPOINT=true``: an outside verifier reads the checkpoint
    and the key that checks it without a token; otherwise both need audit:verify."""

    async def test_the_verifier_key_is_as_open_as_the_checkpoint(
        self, app: FastAPI, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        public = app.state.audit_settings.model_copy(update={"public_checkpoint": True})
        monkeypatch.setattr(app.state, "audit_settings", public)
        response = await client.get("/v1/audit/verifier-key")
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "text/plain; charset=utf-8"
        assert response.text == app.state.audit_signer.verifier_key() + "\n"
        NoteVerifier.parse(response.text)
        act_as(app, "welfare", "consumer")
        assert (await client.get("/v1/audit/verifier-key")).status_code == 200

    async def test_a_private_verifier_key_needs_a_token(self, client: httpx.AsyncClient) -> None:
        body = _problem(await client.get("/v1/audit/verifier-key"), 401)
        assert body["type"].endswith("unauthenticated")


class TestNoCheckpointYet:
    async def test_the_404_is_never_cached(self, app: FastAPI, client: httpx.AsyncClient) -> None:
        """tlog-tiles: the checkpoint is mutable and its headers prevent caching beyond a
        few seconds; the first one is signed moments after the log's first entry, so no
        cache may keep the 404 that comes before it."""
        act_as(app, "audit-office", "auditor")
        response = await client.get("/v1/audit/checkpoint")
        body = _problem(response, 404)
        assert body["type"].endswith("audit-no-checkpoint")
        assert response.headers["cache-control"] == "no-store"


class TestProofNumbers:
    """Every number of the proof routes is ``0`` or ``[1-9][0-9]*`` and at most 2^63-1, as
    RFC 9162 and the C2SP verifiers write them; anything else is a 422 problem, refused
    before any query (so the tree's size does not matter here)."""

    @pytest.fixture(autouse=True)
    def _auditor(self, app: FastAPI) -> None:
        act_as(app, "audit-office", "auditor")

    @pytest.mark.parametrize("number", NOT_PLAIN_DECIMALS + TOO_LARGE)
    @pytest.mark.parametrize(
        ("path", "params"),
        [
            ("/v1/audit/entries/0/proof", {"tree_size": "{}"}),
            ("/v1/audit/consistency", {"first": "{}", "second": "5"}),
            ("/v1/audit/consistency", {"first": "0", "second": "{}"}),
        ],
    )
    async def test_a_query_number_not_plain_decimal_is_422(
        self, client: httpx.AsyncClient, path: str, params: dict[str, str], number: str
    ) -> None:
        sent = {name: value.format(number) for name, value in params.items()}
        body = _problem(await client.get(path, params=sent), 422)
        assert [error["loc"][0] for error in body["errors"]] == ["query"]

    @pytest.mark.parametrize("number", [n for n in NOT_PLAIN_DECIMALS + TOO_LARGE if n])
    async def test_a_leaf_index_not_plain_decimal_is_422(
        self, client: httpx.AsyncClient, number: str
    ) -> None:
        index = urllib.parse.quote(number, safe="")
        body = _problem(await client.get(f"/v1/audit/entries/{index}/proof", params={"tree_size": 1}), 422)
        assert body["errors"][0]["loc"] == ["path", "index"]

    async def test_the_largest_numbers_are_read(self, client: httpx.AsyncClient) -> None:
        """2^63-1 is a number the routes read: beyond the (empty) tree, so a 400, not a 422."""
        largest = str(2**63 - 1)
        for path, params in [
            ("/v1/audit/entries/0/proof", {"tree_size": largest}),
            ("/v1/audit/consistency", {"first": "0", "second": largest}),
            (f"/v1/audit/entries/{largest}/proof", {"tree_size": "1"}),
        ]:
            body = _problem(await client.get(path, params=params), 400)
            assert body["type"].endswith("audit-query-invalid")

    async def test_a_tree_size_of_zero_holds_no_leaf_to_prove(self, client: httpx.AsyncClient) -> None:
        body = _problem(await client.get("/v1/audit/entries/0/proof", params={"tree_size": "0"}), 422)
        assert body["errors"][0]["loc"] == ["query", "tree_size"]
        assert "from 1 to" in body["errors"][0]["msg"]

    async def test_zero_is_read(self, client: httpx.AsyncClient) -> None:
        response = await client.get("/v1/audit/consistency", params={"first": "0", "second": "0"})
        assert response.status_code == 200, response.text
        assert response.json() == {"first": 0, "second": 0, "hashes": []}


class TestEntryQueries:
    async def test_filters(
        self, app: FastAPI, client: httpx.AsyncClient, audit_log: TransactionAudit
    ) -> None:
        act_as(app, "audit-office", "auditor")
        citizen = str(uuid.uuid4())
        ids = await _seed(audit_log, citizen)
        assert [i["id"] for i in await _items(client, citizen_id=citizen)] == ids
        assert [i["id"] for i in await _items(client, citizen_id=citizen, consumer="revenue")] == ids[2:4]
        assert [i["id"] for i in await _items(client, citizen_id=citizen, owner="register")] == [
            ids[1],
            ids[3],
        ]
        assert [i["id"] for i in await _items(client, citizen_id=citizen, field="points")] == [
            ids[2],
            ids[4],
        ]
        assert [i["id"] for i in await _items(client, citizen_id=citizen, decision="deny")] == [ids[2]]
        assert [i["id"] for i in await _items(client, citizen_id=citizen, action="lookup")] == [ids[3]]
        assert [i["id"] for i in await _items(client, citizen_id=citizen, purpose="address-update")] == [
            ids[1]
        ]
        october = await _items(client, citizen_id=citizen, since="2026-10-01", until="2026-11-01")
        assert [i["id"] for i in october] == [ids[1]]
        # A prefix of a name does not match a whole-name filter.
        assert await _items(client, citizen_id=citizen, owner="dvl") == []
        entry = october[0]["entry"]
        assert entry["fields_released"] == ["address"]
        assert "value" not in json.dumps(entry)

    async def test_cursor_paging_is_stable(
        self, app: FastAPI, client: httpx.AsyncClient, audit_log: TransactionAudit
    ) -> None:
        act_as(app, "audit-office", "auditor")
        citizen = str(uuid.uuid4())
        ids = await _seed(audit_log, citizen)
        seen: list[int] = []
        cursor: str | None = None
        pages = 0
        while True:
            params: dict[str, Any] = {"citizen_id": citizen, "limit": 2}
            if cursor:
                params["cursor"] = cursor
            body = (await client.get("/v1/audit/entries", params=params)).json()
            # Each page is itself an entry naming the citizen (audit-query), paged on later.
            seen += [item["id"] for item in body["items"] if item["entry"]["action"] != "audit-query"]
            pages += 1
            cursor = body.get("next_cursor")
            if not cursor:
                break
        assert seen == ids
        assert pages >= 3

    async def test_data_owner_sees_only_its_fields(
        self, app: FastAPI, client: httpx.AsyncClient, audit_log: TransactionAudit
    ) -> None:
        citizen = str(uuid.uuid4())
        ids = await _seed(audit_log, citizen)
        act_as(app, "register", "data-owner")
        assert [i["id"] for i in await _items(client, citizen_id=citizen)] == [ids[1], ids[3]]
        # Asking for another owner's entries narrows to nothing rather than widening.
        assert await _items(client, citizen_id=citizen, owner="dvla") == []

    async def test_a_data_owner_sees_only_its_own_fields_of_an_entry(
        self, app: FastAPI, client: httpx.AsyncClient, audit_log: TransactionAudit
    ) -> None:
        """A read of two owners' fields: each owner finds the entry, narrowed to its own
        field, its reason and its name; the auditor gets the logged entry whole."""
        citizen = str(uuid.uuid4())
        [logged] = await audit_log.append_many(
            [
                make_entry(
                    citizen_id=citizen,
                    department="welfare",
                    owners=["register", "dvla"],
                    fields_requested=["address", "licence_status"],
                    fields_released=["address", "licence_status"],
                    reasons=[
                        {
                            "field": "address",
                            "effect": "permit",
                            "agreement": "welfare-address",
                            "version": 1,
                        },
                        {
                            "field": "licence_status",
                            "effect": "permit",
                            "agreement": "welfare-licence",
                            "version": 3,
                        },
                    ],
                    legal_basis=["Act of the register", "Act of the DVLA"],
                    case_ref="CASE-7",
                )
            ]
        )
        act_as(app, "dvla", "data-owner")
        [item] = await _accesses(client, citizen_id=citizen)
        assert (item["id"], item["narrowed"]) == (logged, True)
        entry = item["entry"]
        assert entry["fields_requested"] == entry["fields_released"] == ["licence_status"]
        assert [r["agreement"] for r in entry["reasons"]] == ["welfare-licence"]
        assert (entry["owners"], entry["legal_basis"]) == (["dvla"], [])
        assert (entry["department"], entry["case_ref"]) == ("welfare", "CASE-7")
        act_as(app, "audit-office", "auditor")
        [whole] = await _accesses(client, citizen_id=citizen)
        assert "narrowed" not in whole
        assert whole["entry"]["fields_released"] == ["address", "licence_status"]
        assert whole["entry"]["legal_basis"] == ["Act of the register", "Act of the DVLA"]

    async def test_a_data_owner_cannot_filter_on_another_owners_part(
        self, app: FastAPI, client: httpx.AsyncClient, audit_log: TransactionAudit
    ) -> None:
        """The register's field was withheld and the DVLA's released: filtering on the
        register as owner, on its field or on the whole entry's decision would tell the
        DVLA what its narrowed item leaves out, and its query is not shown to the register."""
        citizen = str(uuid.uuid4())
        [logged] = await audit_log.append_many(
            [
                make_entry(
                    citizen_id=citizen,
                    owners=["dvla", "register"],
                    fields_requested=["address", "licence_status"],
                    fields_released=["licence_status"],
                    decision="partial",
                    reasons=[
                        {"field": "address", "effect": "deny", "reason": "no agreement"},
                        {"field": "licence_status", "effect": "permit", "agreement": "a1", "version": 1},
                    ],
                )
            ]
        )
        client_id = f"dvla-owner-{uuid.uuid4().hex[:8]}"
        act_as(app, "dvla", "data-owner", client_id=client_id)
        [item] = await _accesses(client, citizen_id=citizen)
        assert (item["id"], item["entry"]["decision"]) == (logged, "permit")
        for leaking in ({"owner": "register"}, {"field": "address"}, {"decision": "partial"}):
            assert await _items(client, citizen_id=citizen, **leaking) == [], leaking
        for own in ({"owner": "dvla"}, {"field": "licence_status"}, {"decision": "permit"}):
            assert [i["id"] for i in await _accesses(client, citizen_id=citizen, **own)] == [logged], own
        act_as(app, "register", "data-owner")
        [theirs] = await _accesses(client, citizen_id=citizen)
        assert (theirs["entry"]["fields_requested"], theirs["entry"]["decision"]) == (["address"], "deny")
        shown = await _items(client, action="audit-query")
        assert [i for i in shown if i["entry"]["client_id"] == client_id] == []
        act_as(app, "audit-office", "auditor")
        assert [i["id"] for i in await _accesses(client, citizen_id=citizen, decision="partial")] == [logged]
        queries = await _items(client, action="audit-query", consumer="dvla", limit=1000)
        mine = {json.dumps(i["entry"]["owners"]) for i in queries if i["entry"]["client_id"] == client_id}
        assert mine == {"[]", '["dvla"]'}

    async def test_a_data_owner_sees_its_own_entries_about_no_field_whole(
        self, app: FastAPI, client: httpx.AsyncClient, audit_log: TransactionAudit
    ) -> None:
        """A policy change and an explanation name no other department's field: the
        reasons about the whole entry (no field) and the entry's decision stay."""
        citizen = str(uuid.uuid4())
        change = {"field": "", "effect": "active", "agreement": "dvla-shares", "version": 4, "reason": "why"}
        asked = {"field": "", "effect": "explained", "reason": "as welfare would read"}
        decided = {"field": "licence_status", "effect": "permit", "agreement": "a1", "version": 1}
        ids = await audit_log.append_many(
            [
                make_entry(
                    citizen_id=citizen,
                    action="policy-change",
                    department="dvla",
                    owners=["dvla"],
                    fields_requested=[],
                    fields_released=[],
                    reasons=[change],
                ),
                make_entry(
                    citizen_id=citizen,
                    action="explain",
                    department="welfare",
                    owners=["dvla", "register"],
                    fields_requested=["licence_status", "address"],
                    fields_released=[],
                    reasons=[
                        asked,
                        decided,
                        {"field": "address", "effect": "deny", "reason": "no agreement"},
                    ],
                ),
            ]
        )
        act_as(app, "dvla", "data-owner")
        policy, explained = await _items(client, citizen_id=citizen)
        assert policy["id"] == ids[0]
        assert "narrowed" not in policy
        assert policy["entry"]["reasons"] == [{**change, "digest": None, "held_for": None}]
        assert (explained["narrowed"], explained["entry"]["decision"]) == (True, "permit")
        assert explained["entry"]["reasons"] == [
            {**asked, "agreement": None, "version": None, "digest": None, "held_for": None},
            {**decided, "digest": None, "reason": "", "held_for": None},
        ]

    async def test_refusals(
        self, app: FastAPI, client: httpx.AsyncClient, audit_log: TransactionAudit
    ) -> None:
        act_as(app, "welfare", "consumer")
        body = _problem(await client.get("/v1/audit/entries"), 403)
        assert "audit:read" in body["detail"]
        act_as(app, "audit-office", "auditor")
        body = _problem(await client.get("/v1/audit/entries", params={"decision": "maybe"}), 400)
        assert body["errors"][0]["loc"] == ["query", "decision"]
        body = _problem(await client.get("/v1/audit/entries", params={"since": "yesterday"}), 400)
        assert body["errors"][0]["loc"] == ["query", "since"]
        _problem(await client.get("/v1/audit/entries", params={"action": "peek"}), 400)
        _problem(await client.get("/v1/audit/entries", params={"cursor": "abc"}), 422)
        _problem(await client.get("/v1/audit/entries", params={"limit": 0}), 422)

    async def test_out_of_range_cursor_and_times_are_refused(
        self, app: FastAPI, client: httpx.AsyncClient, audit_log: TransactionAudit
    ) -> None:
        act_as(app, "audit-office", "auditor")
        # 19 digits, but above the largest 64-bit entry id.
        for cursor in (str(2**63), "9999999999999999999", "1" * 21):
            for path in ("/v1/audit/entries", "/v1/audit/reports/usage"):
                body = _problem(await client.get(path, params={"cursor": cursor}), 422)
                assert body["title"] == "Invalid cursor"
        assert (await client.get("/v1/audit/entries", params={"cursor": str(2**63 - 1)})).status_code == 200
        # A window that ends before it starts (here by its offsets alone).
        reversed_window = {"since": "2026-10-01T00:00:00-01:00", "until": "2026-10-01T00:30:00+00:00"}
        for path in ("/v1/audit/entries", "/v1/audit/export", "/v1/audit/reports/usage"):
            body = _problem(await client.get(path, params=reversed_window), 400)
            assert body["errors"][0]["loc"] == ["query", "until"]
            empty_window = {"since": "2026-10-01T00:00:00Z", "until": "2026-10-01T01:00:00+01:00"}
            assert (await client.get(path, params=empty_window)).status_code == 200
        # Valid ISO 8601 whose offset carries it outside the years a datetime can hold.
        for name, value in (("since", "0001-01-01T00:00:00+01:00"), ("until", "9999-12-31T23:59:59-01:00")):
            for path in ("/v1/audit/entries", "/v1/audit/export", "/v1/audit/reports/usage"):
                body = _problem(await client.get(path, params={name: value}), 400)
                assert body["title"] == "Invalid audit query"
                assert body["errors"][0]["loc"] == ["query", name]

    async def test_queries_are_audited(
        self, app: FastAPI, client: httpx.AsyncClient, audit_log: TransactionAudit
    ) -> None:
        client_id = f"auditor-{uuid.uuid4().hex[:8]}"
        act_as(app, "audit-office", "auditor", client_id=client_id)
        await _items(client, citizen_id="nobody")
        logged = await _items(client, action="audit-query", consumer="audit-office", limit=1000)
        mine = [item for item in logged if item["entry"]["client_id"] == client_id]
        assert len(mine) >= 1
        assert mine[0]["entry"]["decision"] == "permit"


class TestExport:
    async def test_jsonl_and_csv_stream(
        self, app: FastAPI, client: httpx.AsyncClient, audit_log: TransactionAudit
    ) -> None:
        act_as(app, "audit-office", "auditor")
        citizen = str(uuid.uuid4())
        ids = await _seed(audit_log, citizen)
        async with client.stream("GET", "/v1/audit/export", params={"citizen_id": citizen}) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("application/x-ndjson")
            lines = [line async for line in response.aiter_lines() if line]
        # Each export is itself an entry naming the citizen (audit-query), after the seeded ones.
        exported = [json.loads(line) for line in lines]
        assert [item["id"] for item in exported[: len(ids)]] == ids
        assert {item["entry"]["action"] for item in exported[len(ids) :]} <= {"audit-query"}
        response = await client.get("/v1/audit/export", params={"citizen_id": citizen, "format": "csv"})
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/csv")
        rows = list(csv.DictReader(io.StringIO(response.text)))
        assert [int(row["id"]) for row in rows[: len(ids)]] == ids
        assert [row["action"] for row in rows[len(ids) :]] == ["audit-query"]
        assert rows[2]["decision"] == "deny"
        assert json.loads(rows[0]["owners"]) == ["dvla"]

    async def test_a_first_page_the_database_cannot_read_is_an_error_answer(
        self,
        app: FastAPI,
        client: httpx.AsyncClient,
        audit_log: TransactionAudit,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """The first page is read before the answer starts: a database that is down (or
        refuses the query) is a 503 problem, not a 200 whose stream breaks off."""
        act_as(app, "audit-office", "auditor")

        async def down(*_args: Any, **_kwargs: Any) -> Any:
            raise ConnectionRefusedError("the database is down")

        monkeypatch.setattr(audit_repository, "page_entries", down)
        _problem(await client.get("/v1/audit/export"), 503)

    async def test_export_needs_the_export_scope(
        self, app: FastAPI, client: httpx.AsyncClient, audit_log: TransactionAudit
    ) -> None:
        act_as(app, "dvla", "data-owner")
        body = _problem(await client.get("/v1/audit/export"), 403)
        assert "audit:export" in body["detail"]
        act_as(app, "audit-office", "auditor")
        _problem(await client.get("/v1/audit/export", params={"format": "xml"}), 422)


class TestUsageReport:
    async def test_counts_released_fields(
        self, app: FastAPI, client: httpx.AsyncClient, audit_log: TransactionAudit
    ) -> None:
        act_as(app, "audit-office", "auditor")
        await _seed(audit_log, str(uuid.uuid4()))
        await _seed(audit_log, str(uuid.uuid4()))
        response = await client.get(
            "/v1/audit/reports/usage",
            params={"period": "month", "since": "2026-10-01", "until": "2026-11-01"},
        )
        assert response.status_code == 200
        items = response.json()["items"]
        address = [i for i in items if i["field"] == "address" and i["consumer"] == "welfare"]
        assert address[0]["owner"] == "register"
        assert address[0]["period"] == "2026-10"
        assert address[0]["purpose"] == "address-update"
        assert address[0]["count"] == 2
        assert all(set(i) == {"consumer", "owner", "field", "purpose", "period", "count"} for i in items)

    async def test_owner_sees_its_own_fields(
        self, app: FastAPI, client: httpx.AsyncClient, audit_log: TransactionAudit
    ) -> None:
        await _seed(audit_log, str(uuid.uuid4()))
        act_as(app, "dvla", "data-owner")
        response = await client.get("/v1/audit/reports/usage", params={"period": "day", "limit": 1000})
        items = response.json()["items"]
        assert items
        assert {i["owner"] for i in items} == {"dvla"}
        assert all(len(i["period"]) == 10 for i in items)
        body = _problem(await client.get("/v1/audit/reports/usage", params={"owner": "register"}), 403)
        assert "own fields" in body["detail"]
        _problem(await client.get("/v1/audit/reports/usage", params={"period": "year"}), 422)


# The test catalog's owners of the fields the report tests release.
_OWNERS = {"address": "register", "given_name": "register", "licence_status": "dvla", "points": "dvla"}


class TestUsageReportCounts:
    """The database counts the report: every entry's released fields, grouped by consumer,
    field, purpose and the UTC day or month of the entry's time. Checked against a count
    made here from the entries written."""

    def _entries(self) -> list[AuditEntry]:
        rng = random.Random(20261207)
        times = [
            "2026-10-31T23:59:59.999999+00:00",
            "2026-11-01T00:00:00+00:00",
            "2026-11-01T12:30:00+00:00",
            "2026-11-02T08:00:00+00:00",
            # 01:30 UTC on 1 November: counted on that UTC day and month, as ``since`` and
            # ``until`` see it, not on the 31 October its own offset shows.
            "2026-10-31T23:30:00-02:00",
        ]
        entries = []
        for _ in range(60):
            released = rng.sample(sorted(_OWNERS), rng.randint(0, 3))
            entries.append(
                make_entry(
                    citizen_id=str(uuid.uuid4()),
                    department=rng.choice(["welfare", "revenue", "health"]),
                    owners=sorted({_OWNERS[name] for name in released} or {"dvla"}),
                    fields_requested=released or ["points"],
                    fields_released=released,
                    decision="permit" if released else "deny",
                    purpose=rng.choice(["benefit-eligibility", "tax-administration"]),
                    time=rng.choice(times),
                )
            )
        return entries

    @staticmethod
    def _expected(entries: Sequence[AuditEntry], width: int, owner: str | None) -> list[dict[str, Any]]:
        counts: Counter[tuple[str, str, str, str]] = Counter()
        for entry in entries:
            utc = datetime.fromisoformat(entry.time).astimezone(UTC).isoformat()[:width]
            for name in entry.fields_released:
                if owner is None or _OWNERS[name] == owner:
                    counts[utc, entry.department, name, entry.purpose or ""] += 1
        return [
            {"consumer": c, "owner": _OWNERS[f], "field": f, "purpose": p, "period": d, "count": n}
            for (d, c, f, p), n in sorted(counts.items())
        ]

    @pytest.mark.parametrize(("period", "width"), [("day", 10), ("month", 7)])
    async def test_every_released_field_is_counted_once(
        self, app: FastAPI, client: httpx.AsyncClient, audit_log: TransactionAudit, period: str, width: int
    ) -> None:
        entries = self._entries()
        await audit_log.append_many(entries)
        act_as(app, "audit-office", "auditor")
        response = await client.get("/v1/audit/reports/usage", params={"period": period, "limit": 1000})
        assert response.status_code == 200, response.text
        assert response.json()["items"] == self._expected(entries, width, None)
        act_as(app, "dvla", "data-owner")
        response = await client.get("/v1/audit/reports/usage", params={"period": period, "limit": 1000})
        assert response.json()["items"] == self._expected(entries, width, "dvla")

    async def test_since_and_until_bound_the_count_by_utc_time(
        self, app: FastAPI, client: httpx.AsyncClient, audit_log: TransactionAudit
    ) -> None:
        entries = self._entries()
        await audit_log.append_many(entries)
        act_as(app, "audit-office", "auditor")
        first, last = datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 11, 2, tzinfo=UTC)
        asked = {"period": "day", "limit": "1000", "since": first.isoformat(), "until": last.isoformat()}
        response = await client.get("/v1/audit/reports/usage", params=asked)
        assert response.status_code == 200, response.text
        inside = [entry for entry in entries if first <= datetime.fromisoformat(entry.time) < last]
        assert response.json()["items"] == self._expected(inside, 10, None)
        assert {row["period"] for row in response.json()["items"]} == {"2026-11-01"}


class TestUsageReportPages:
    async def _pages(self, client: httpx.AsyncClient, **params: Any) -> list[list[dict[str, Any]]]:
        pages: list[list[dict[str, Any]]] = []
        cursor = None
        while True:
            asked = {"period": "day", "limit": 1, **params, **({"cursor": cursor} if cursor else {})}
            response = await client.get("/v1/audit/reports/usage", params=asked)
            assert response.status_code == 200, response.text
            pages.append(response.json()["items"])
            cursor = response.json()["next_cursor"]
            if cursor is None:
                return pages

    async def test_a_page_at_a_time_gives_every_row_once(
        self, app: FastAPI, client: httpx.AsyncClient, audit_log: TransactionAudit
    ) -> None:
        act_as(app, "audit-office", "auditor")
        await _seed(audit_log, str(uuid.uuid4()))
        whole = (await client.get("/v1/audit/reports/usage", params={"period": "day", "limit": 1000})).json()
        assert whole["next_cursor"] is None
        assert len(whole["items"]) >= 3
        pages = await self._pages(client)
        assert [row for page in pages for row in page] == whole["items"]

    async def test_a_row_gained_between_pages_is_never_shown_twice(
        self, app: FastAPI, client: httpx.AsyncClient, audit_log: TransactionAudit
    ) -> None:
        """The cursor was an offset: a new row sorted before it (here a consumer whose name
        sorts first, on the same day) pushed the last row shown onto the next page again."""
        act_as(app, "audit-office", "auditor")
        await _seed(audit_log, str(uuid.uuid4()))
        first = await client.get("/v1/audit/reports/usage", params={"period": "day", "limit": 1})
        [shown] = first.json()["items"]
        day = shown["period"]
        await audit_log.append_many(
            [
                make_entry(
                    citizen_id=str(uuid.uuid4()),
                    department="aaa-first-consumer",
                    owners=["dvla"],
                    fields_released=["licence_status"],
                    time=f"{day}T00:00:00+00:00",
                )
            ]
        )
        rest = await self._pages(client, cursor=first.json()["next_cursor"])
        later = [row for page in rest for row in page]
        keys = [(r["period"], r["consumer"], r["field"], r["purpose"]) for r in [shown, *later]]
        assert len(keys) == len(set(keys))
        whole = (await client.get("/v1/audit/reports/usage", params={"period": "day", "limit": 1000})).json()
        after = whole["items"][whole["items"].index(shown) + 1 :]
        assert later == after

    @pytest.mark.parametrize("cursor", ["1", "0", "!!", "dTE6bm90IGpzb24", "dTE6WzEsMiwzLDRd", "ZTE6Nw"])
    async def test_a_cursor_the_report_did_not_give_is_422(
        self, app: FastAPI, client: httpx.AsyncClient, audit_log: TransactionAudit, cursor: str
    ) -> None:
        """Among them the offsets it gave before ("1"), a cursor of the events feed and
        cursors of the right form with the wrong content."""
        act_as(app, "audit-office", "auditor")
        await _seed(audit_log, str(uuid.uuid4()))
        response = await client.get("/v1/audit/reports/usage", params={"cursor": cursor})
        body = _problem(response, 422)
        assert body["type"].endswith("/invalid-cursor")
        assert cursor not in response.text


class TestCitizenAccessLog:
    async def test_lists_accesses_without_officers(
        self,
        app: FastAPI,
        client: httpx.AsyncClient,
        audit_log: TransactionAudit,
        register_citizen: Callable[[str], Awaitable[None]],
    ) -> None:
        citizen = str(uuid.uuid4())
        await register_citizen(citizen)
        await _seed(audit_log, citizen)
        act_as(app, "portal", "citizen-portal")
        response = await client.get(f"/v1/citizens/{citizen}/access-log", params={"limit": 3})
        assert response.status_code == 200
        body = response.json()
        assert len(body["items"]) == 3
        assert body["next_cursor"]
        first = body["items"][0]
        assert set(first) == {"time", "department", "action", "fields", "purpose", "decision"}
        # The example /docs shows is a line of the same shape.
        [example] = RESPONSE_EXAMPLES[("GET", "/v1/citizens/{citizen_id}/access-log")]["items"]
        assert set(example) == set(first)
        assert first["department"] == "welfare"
        assert first["fields"] == ["licence_status"]
        assert "officer-17" not in response.text
        assert "welfare-consumer" not in response.text
        rest = (
            await client.get(f"/v1/citizens/{citizen}/access-log", params={"cursor": body["next_cursor"]})
        ).json()
        assert [i["decision"] for i in rest["items"]] == ["permit", "permit"]
        assert rest.get("next_cursor") is None
        # The portal's own reading is audited, but is not an access the citizen sees.
        act_as(app, "audit-office", "auditor")
        logged = await _items(client, citizen_id=citizen, action="access-log")
        assert len(logged) == 2

    async def test_refusals(
        self, app: FastAPI, client: httpx.AsyncClient, audit_log: TransactionAudit
    ) -> None:
        act_as(app, "portal", "citizen-portal")
        body = _problem(await client.get(f"/v1/citizens/{uuid.uuid4()}/access-log"), 404)
        assert body["detail"] == "No such citizen."
        act_as(app, "welfare", "consumer")
        body = _problem(await client.get(f"/v1/citizens/{uuid.uuid4()}/access-log"), 403)
        assert "citizens:access-log" in body["detail"]

    async def test_out_of_range_cursor_is_refused(
        self,
        app: FastAPI,
        client: httpx.AsyncClient,
        audit_log: TransactionAudit,
        register_citizen: Callable[[str], Awaitable[None]],
    ) -> None:
        citizen = str(uuid.uuid4())
        await register_citizen(citizen)
        act_as(app, "portal", "citizen-portal")
        # Above the largest entry id, longer than any id, or not a number: each the one
        # refusal of a cursor the list did not give, naming the parameter.
        for cursor in (str(2**63), "1" * 21, "9" * 40, "", "-1", "1e3", "x" * 300):
            response = await client.get(f"/v1/citizens/{citizen}/access-log", params={"cursor": cursor})
            body = _problem(response, 422)
            assert body["type"].endswith("/invalid-cursor"), cursor
            assert body["errors"] == [{"loc": ["query", "cursor"], "msg": "invalid cursor"}]
            assert body["detail"] == "The cursor is not one this service gave."


class TestFailClosed:
    async def test_a_failing_audit_writer_releases_nothing(
        self, audit_app: FastAPI, audit_client: httpx.AsyncClient
    ) -> None:
        async def refuse(_conn: AsyncConnection) -> None:
            raise OSError("disk full")

        failing = AuditWriter(audit_app.state.database.engine, before_commit=refuse)
        await failing.start()
        audit_app.dependency_overrides[get_audit_writer] = lambda: failing
        try:
            act_as(audit_app, "audit-office", "auditor")
            response = await audit_client.get("/v1/audit/entries")
            body = _problem(response, 503)
            assert body["type"].endswith("audit-unavailable")
            assert "items" not in body
            _problem(await audit_client.get("/v1/audit/export"), 503)
        finally:
            await failing.stop()
