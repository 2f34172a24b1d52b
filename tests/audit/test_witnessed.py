"""The service witnessed: two real witness processes on loopback cosign its checkpoints.

Covers submission to a quorum, the cosigned checkpoint endpoint (public or not), offline
verification of cosignatures in an exported bundle, the split-view attack on a bundle,
and failing closed when the witnesses are gone, then serving again when they are back.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from typer.testing import CliRunner

from service.app import create_app
from service.audit import citizen_proofs, merkle
from service.audit import repository as audit_repository
from service.audit.checkpoint import Checkpoint, NoteVerifier
from service.audit.cli import export_bundle
from service.audit.config import AuditSettings, load_signer
from service.audit.schemas import canonical_json
from service.audit.writer import AuditWriter
from service.cli import app as cli
from service.config import Settings
from service.db import Database
from service.records.models import Citizen
from service.witness.cosignature import split_note
from tests.audit.conftest import poll
from tests.fixtures.audit import make_entry
from tests.fixtures.auth import act_as
from tests.fixtures.databases import create_scratch_database, drop_scratch_database, settings_on
from tests.fixtures.witnesses import WitnessProcess, running_witnesses
from tests.witness.test_cosignature import independent_verify

WITNESS_NAMES = ("nao.example/witness", "ico.example/witness")


@pytest.fixture
def log_vkey(settings: Settings) -> str:
    return load_signer(settings, AuditSettings().origin).verifier_key()


@pytest.fixture
def witnesses(tmp_path: Path, log_vkey: str) -> Iterator[list[WitnessProcess]]:
    yield from running_witnesses(WITNESS_NAMES, tmp_path, log_vkey)


@pytest.fixture
async def witnessed_database(database_url: str) -> AsyncIterator[str]:
    url = await create_scratch_database(database_url)
    yield url
    await drop_scratch_database(url)


async def _app(
    url: str, settings: Settings, monkeypatch: pytest.MonkeyPatch, witnesses: list[WitnessProcess], **env: str
) -> FastAPI:
    monkeypatch.setenv("TELLONCE_AUDIT_CHECKPOINT_INTERVAL_MS", "20")
    monkeypatch.setenv("TELLONCE_AUDIT_SEQUENCER_POLL_MS", "10")
    monkeypatch.setenv("TELLONCE_AUDIT_WITNESS_POLL_MS", "20")
    monkeypatch.setenv("TELLONCE_AUDIT_WITNESSES", " ".join(w.config for w in witnesses))
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return create_app(settings.model_copy(update={"database_url": url}))


@pytest.fixture
async def witnessed_app(
    witnessed_database: str,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    witnesses: list[WitnessProcess],
) -> AsyncIterator[FastAPI]:
    application = await _app(witnessed_database, settings, monkeypatch, witnesses)
    async with application.router.lifespan_context(application):
        yield application


def _client(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")


async def _seed(app: FastAPI, count: int) -> None:
    writer: AuditWriter = app.state.audit_writer
    await writer.append_many([make_entry() for _ in range(count)])


async def _witnessed_note(client: httpx.AsyncClient, min_size: int) -> str:
    async def fetch() -> str | None:
        response = await client.get("/v1/audit/checkpoint")
        if response.status_code != 200:
            return None
        body, _lines = split_note(response.text)
        return response.text if Checkpoint.parse_body(body).size >= min_size else None

    note: str = await poll(fetch)
    return note


class TestWitnessedCheckpoint:
    async def test_served_note_carries_the_log_and_both_cosignatures(
        self, witnessed_app: FastAPI, witnesses: list[WitnessProcess], log_vkey: str
    ) -> None:
        act_as(witnessed_app, "audit-office", "auditor")
        await _seed(witnessed_app, 9)
        async with _client(witnessed_app) as client:
            note = await _witnessed_note(client, 9)
        checkpoint = NoteVerifier.parse(log_vkey).open_checkpoint(note)
        assert checkpoint.size >= 9
        _body, lines = split_note(note)
        assert len(lines) == 3
        for witness in witnesses:
            independent_verify(witness.vkey, note)
            # The witness's own record agrees: it cosigned exactly this tree.
            latest = httpx.get(f"{witness.url}/checkpoint", params={"origin": checkpoint.origin}).text
            assert Checkpoint.parse_body(split_note(latest)[0]).size >= checkpoint.size

    async def test_a_proof_by_default_is_in_the_served_checkpoints_tree(
        self, witnessed_app: FastAPI, witnesses: list[WitnessProcess], log_vkey: str
    ) -> None:
        """While a witness is away the log signs checkpoints that reach no quorum; the
        proof asked for without a size is in the tree of the checkpoint served, the newest
        at quorum, so the two verify together."""
        act_as(witnessed_app, "audit-office", "auditor")
        await _seed(witnessed_app, 4)
        async with _client(witnessed_app) as client:
            note = await _witnessed_note(client, 4)
            served = NoteVerifier.parse(log_vkey).open_checkpoint(note)
            witnesses[0].stop()
            await _seed(witnessed_app, 3)
            database: Database = witnessed_app.state.database

            async def signed_beyond() -> bool:
                async with database.engine.connect() as conn:
                    latest = await audit_repository.latest_checkpoint(conn)
                return latest is not None and latest.tree_size > served.size

            await poll(signed_beyond)
            response = await client.get("/v1/audit/entries/0/proof")
            assert response.status_code == 200, response.text
            proof = response.json()
            assert proof["tree_size"] == served.size
            assert merkle.verify_inclusion(
                base64.b64decode(proof["leaf_hash"]),
                0,
                served.size,
                [base64.b64decode(h) for h in proof["hashes"]],
                served.root_hash,
            )
            witnesses[0].start()

    async def test_needs_a_token_unless_public(
        self,
        witnessed_database: str,
        settings: Settings,
        monkeypatch: pytest.MonkeyPatch,
        witnesses: list[WitnessProcess],
    ) -> None:
        private = await _app(witnessed_database, settings, monkeypatch, witnesses)
        async with private.router.lifespan_context(private), _client(private) as client:
            response = await client.get("/v1/audit/checkpoint")
            assert response.status_code == 401
            assert response.headers["content-type"] == "application/problem+json"
        public = await _app(
            witnessed_database, settings, monkeypatch, witnesses, TELLONCE_AUDIT_PUBLIC_CHECKPOINT="true"
        )
        async with public.router.lifespan_context(public), _client(public) as client:
            await _seed(public, 3)
            note = await _witnessed_note(client, 3)
            for witness in witnesses:
                independent_verify(witness.vkey, note)


def _verify_cli(bundle: Path, log_vkey: str, witnesses: list[WitnessProcess], *extra: str) -> Any:
    args = ["audit", "verify", "--bundle", str(bundle), "--key", log_vkey]
    for witness in witnesses:
        args += ["--witness", witness.vkey]
    return CliRunner().invoke(cli, [*args, *extra])


class TestOfflineCosignatures:
    async def test_bundle_verifies_with_the_witness_quorum(
        self,
        witnessed_app: FastAPI,
        witnessed_database: str,
        witnesses: list[WitnessProcess],
        log_vkey: str,
        settings: Settings,
        tmp_path: Path,
    ) -> None:
        act_as(witnessed_app, "audit-office", "auditor")
        await _seed(witnessed_app, 12)
        async with _client(witnessed_app) as client:
            await _witnessed_note(client, 12)
        bundle = tmp_path / "bundle.jsonl"
        await export_bundle(
            settings_on(witnessed_database), load_signer(settings, AuditSettings().origin), bundle
        )
        result = _verify_cli(bundle, log_vkey, witnesses, "--quorum", "2")
        assert result.exit_code == 0, result.output
        assert "cosigned by 2 of 2 witnesses" in result.stdout
        # A witness key the bundle's cosignatures do not carry cannot make up a quorum.
        stranger = WitnessProcess("stranger.example/witness", tmp_path / "stranger", log_vkey)
        refused = _verify_cli(bundle, log_vkey, [witnesses[0], stranger], "--quorum", "2")
        assert refused.exit_code == 1
        assert "no checkpoint in the bundle is cosigned by 2" in refused.stderr
        # Nor can one witness given twice: its one cosignature would count for two.
        twice = _verify_cli(bundle, log_vkey, [witnesses[0], witnesses[0]], "--quorum", "2")
        assert twice.exit_code == 2
        assert "are the same public key: give each witness once" in twice.stderr

    async def test_split_view_rewritten_log_fails_offline(
        self,
        witnessed_app: FastAPI,
        witnessed_database: str,
        witnesses: list[WitnessProcess],
        log_vkey: str,
        settings: Settings,
        tmp_path: Path,
    ) -> None:
        """The operator rewrites one entry, recomputes every hash and re-signs every checkpoint
        with the real log key. Kept beside the old cosigned checkpoint, the root differs; with
        the cosigned checkpoints dropped, no checkpoint has the witnesses' quorum."""
        act_as(witnessed_app, "audit-office", "auditor")
        await _seed(witnessed_app, 8)
        async with _client(witnessed_app) as client:
            await _witnessed_note(client, 8)
        signer = load_signer(settings, AuditSettings().origin)
        bundle = tmp_path / "bundle.jsonl"
        await export_bundle(settings_on(witnessed_database), signer, bundle)
        records = [json.loads(line) for line in bundle.read_text().splitlines()]
        entries = [r for r in records if r["type"] == "entry"]
        entries[2]["entry"]["purpose"] = "rewritten-purpose"
        entries[2]["columns"]["purpose"] = "rewritten-purpose"
        compact = merkle.CompactRange()
        roots: dict[int, bytes] = {}
        for record in entries:
            leaf = merkle.leaf_hash(canonical_json(record["entry"]).encode())
            record["leaf_hash"] = base64.b64encode(leaf).decode()
            compact.append(leaf)
            roots[compact.size] = compact.root()
        cosigned = [r for r in records if r["type"] == "checkpoint" and len(split_note(r["note"])[1]) > 1]
        assert cosigned
        forged = [
            {
                "type": "checkpoint",
                "tree_size": r["tree_size"],
                "root_hash": base64.b64encode(roots[r["tree_size"]]).decode(),
                "note": signer.sign(Checkpoint(signer.name, r["tree_size"], roots[r["tree_size"]]).body()),
            }
            for r in records
            if r["type"] == "checkpoint"
        ]
        header = records[0]

        def write(path: Path, rows: list[dict[str, Any]]) -> Path:
            path.write_text("".join(json.dumps(row) + "\n" for row in rows))
            return path

        with_old = write(tmp_path / "with-old.jsonl", [header, *entries, *forged, cosigned[-1]])
        result = _verify_cli(with_old, log_vkey, witnesses)
        assert result.exit_code == 1
        # The forged checkpoint of that size matched the rewritten leaves: two signed histories.
        assert "with different roots: the log forked" in result.stderr
        without_old = write(tmp_path / "without-old.jsonl", [header, *entries, *forged])
        assert _verify_cli(without_old, log_vkey, []).exit_code == 0  # the log key alone is fooled
        result = _verify_cli(without_old, log_vkey, witnesses)
        assert result.exit_code == 1
        assert "no checkpoint in the bundle is cosigned by 2 of the 2 witnesses" in result.stderr


class TestFailClosed:
    async def test_unwitnessed_past_grace_refuses_then_recovers(
        self,
        witnessed_database: str,
        settings: Settings,
        monkeypatch: pytest.MonkeyPatch,
        witnesses: list[WitnessProcess],
    ) -> None:
        application = await _app(
            witnessed_database,
            settings,
            monkeypatch,
            witnesses,
            TELLONCE_AUDIT_WITNESS_GRACE_SECONDS="1",
            TELLONCE_AUDIT_WITNESS_TIMEOUT_SECONDS="0.5",
        )
        act_as(application, "audit-office", "auditor")
        async with application.router.lifespan_context(application), _client(application) as client:
            await _seed(application, 4)
            await _witnessed_note(client, 4)
            assert (await client.get("/v1/audit/entries")).status_code == 200
            for witness in witnesses:
                witness.stop()
            await _seed(application, 3)

            async def refused() -> httpx.Response | None:
                response = await client.get("/v1/audit/entries")
                return response if response.status_code == 503 else None

            response = await poll(refused)
            assert response.headers["content-type"] == "application/problem+json"
            problem = response.json()
            assert problem["title"] == "Audit log not witnessed"
            assert "items" not in problem
            ready = await client.get("/readyz")
            assert ready.status_code == 503
            assert "grace period" in ready.json()["detail"]
            metrics = (await client.get("/metrics")).text
            age = next(
                line
                for line in metrics.splitlines()
                if line.startswith("tellonce_audit_witnessed_checkpoint_age_seconds ")
            )
            assert float(age.split()[1]) > 1.0
            for witness in witnesses:
                witness.start()

            async def serving() -> bool:
                return (await client.get("/v1/audit/entries")).status_code == 200

            await poll(serving)
            assert (await client.get("/readyz")).status_code == 200


async def _register(app: FastAPI, citizen_id: str) -> None:
    database: Database = app.state.database
    async with database.sessions.begin() as session:
        now = datetime.now(UTC)
        session.add(
            Citizen(
                id=citizen_id,
                status="active",
                version=1,
                registered_by="tests",
                created_at=now,
                updated_at=now,
            )
        )


def _json_canonical(entry: dict[str, Any]) -> bytes:
    return json.dumps(entry, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


class TestCitizenProofs:
    @pytest.mark.parametrize("accesses", [0, 1, 120])
    async def test_every_line_is_proven_against_the_cosigned_root(
        self, witnessed_app: FastAPI, witnesses: list[WitnessProcess], log_vkey: str, accesses: int
    ) -> None:
        citizen = str(uuid.uuid4())
        await _register(witnessed_app, citizen)
        writer: AuditWriter = witnessed_app.state.audit_writer
        await writer.append_many(
            [make_entry(citizen_id=citizen, request_id=f"p-{n}") for n in range(accesses)]
        )
        await _seed(witnessed_app, 3)  # something to checkpoint even with no accesses
        act_as(witnessed_app, "citizens-portal", "citizen-portal")
        async with _client(witnessed_app) as client:

            async def covered() -> dict[str, Any] | None:
                response = await client.get(
                    f"/v1/citizens/{citizen}/access-log", params={"proofs": "true", "limit": 1000}
                )
                assert response.status_code == 200, response.text
                body: dict[str, Any] = response.json()
                if body["checkpoint"] is None or any(item["proof"] is None for item in body["items"]):
                    return None
                return body

            body = await poll(covered)
        assert len(body["items"]) == accesses
        note = body["checkpoint"]
        checkpoint = NoteVerifier.parse(log_vkey).open_checkpoint(note)
        for witness in witnesses:
            independent_verify(witness.vkey, note)
        for item in body["items"]:
            proof = item["proof"]
            assert proof["tree_size"] == checkpoint.size
            assert proof["entry"]["citizen_id"] == citizen
            assert (item["department"], item["purpose"]) == (
                proof["entry"]["department"],
                proof["entry"]["purpose"],
            )
            leaf = merkle.leaf_hash(_json_canonical(proof["entry"]))
            assert base64.b64decode(proof["leaf_hash"]) == leaf
            hashes = [base64.b64decode(h) for h in proof["hashes"]]
            assert merkle.verify_inclusion(
                leaf, proof["leaf_index"], proof["tree_size"], hashes, checkpoint.root_hash
            )
        # The server-side check (the console's citizen view) is the one an outside verifier runs.
        checked = citizen_proofs.check_proofs(
            NoteVerifier.parse(log_vkey),
            witnessed_app.state.witness_config,
            note,
            [item["proof"] for item in body["items"]],
        )
        assert checked.verified == accesses
        assert checked.witnesses == WITNESS_NAMES

    async def test_without_proofs_the_shape_is_unchanged(self, witnessed_app: FastAPI) -> None:
        citizen = str(uuid.uuid4())
        await _register(witnessed_app, citizen)
        act_as(witnessed_app, "citizens-portal", "citizen-portal")
        async with _client(witnessed_app) as client:
            body = (await client.get(f"/v1/citizens/{citizen}/access-log")).json()
        assert body == {"items": [], "next_cursor": None}
