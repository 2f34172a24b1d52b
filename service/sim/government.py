"""The demo's two halves around the server: ``prepare`` (store, policies, clients, keys,
population) before it starts, and ``run`` (life events, report, audit verification) while
it serves.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from service.audit import cosignatures as cosignature_repository
from service.audit import repository as audit_repository
from service.audit.checkpoint import CheckpointError, NoteVerifier
from service.audit.cli import verify_database
from service.audit.config import AuditSettings, load_signer
from service.audit.key_events import KeyEventsCollected
from service.audit.models import AuditEntryRow
from service.audit.verify import VerificationFailed
from service.auth import service as auth_service
from service.config import Settings
from service.crypto.keyring import Keyring
from service.crypto.providers import load_root_key
from service.db import Database, ensure_sqlite_dir
from service.records.reader import open_reader
from service.records.service import Access, RecordsService, citizen_count
from service.schema import upgrade_async
from service.sim import policies as demo_policies
from service.sim import runner
from service.sim.population import Person, people
from service.sim.report import AuditSummary, DemoReport
from service.sim.setup import (
    CLIENTS_FILE,
    SEED_BATCH,
    DemoClients,
    batches,
    create_clients,
    person_fields,
    read_clients,
    read_population,
    write_population,
    write_private,
)
from service.witness.cosignature import CosignatureVerifier, split_note

# How long to wait, once traffic stops, for the sequencer to cover every entry with a
# signed checkpoint before verifying.
CHECKPOINT_WAIT_SECONDS = 30.0


@dataclass
class Prepared:
    clients: DemoClients
    people: list[Person]
    citizen_ids: list[str]
    seed: int
    policies_dir: Path


async def _clients_valid(database: Database, clients: DemoClients) -> bool:
    everyone = [*clients.systems.values(), *clients.owners.values(), clients.auditor]
    async with database.sessions() as session:
        for credentials in everyone:
            row = await auth_service.get_client(session, credentials.client_id)
            if row is None or row.disabled_at is not None:
                return False
    return True


async def _seed(
    settings: Settings, database: Database, population: list[Person], registrar: Access, console: Console
) -> list[str]:
    """Load the population in batches through the records service's encryption path."""
    keyring = Keyring.from_settings(settings)
    # The first write of each owner makes its KEK: audited once seeding ends, as the CLI does.
    key_events = KeyEventsCollected()
    keyring.on_key_event = key_events
    # Bulk registration appends its audit entries in its own transaction: no writer needed.
    reader = await open_reader(settings.database_url)
    records = RecordsService(database, keyring, None, reader)  # type: ignore[arg-type]
    ids: list[str] = []
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    try:
        with Progress(*columns, console=console) as progress:
            task = progress.add_task("seeding citizens (encrypted field by field)", total=len(population))
            for batch in batches(iter(population), SEED_BATCH):
                ids.extend(await records.register_population(registrar, [person_fields(p) for p in batch]))
                progress.advance(task, len(batch))
    finally:
        await reader.close()
    await key_events.flush(database.engine)
    return ids


async def prepare(settings: Settings, citizens: int, seed: int, base_url: str, console: Console) -> Prepared:
    """Migrate, apply policies, make clients and keys, seed (or reuse) the population."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    ensure_sqlite_dir(settings.database_url)
    console.print("migrating the embedded store")
    await upgrade_async(settings.database_url)
    # Made here, mode 0600, so the server finds them; development settings allow it.
    load_root_key(settings)
    load_signer(settings, AuditSettings().origin)
    database = Database(settings)
    try:
        policies_dir = settings.policies_dir
        await demo_policies.apply(database, policies_dir, console)
        clients = read_clients(settings)
        if clients is None or not await _clients_valid(database, clients):
            clients = await create_clients(database)
            write_private(settings.data_dir / CLIENTS_FILE, clients.as_json(base_url))
            console.print(f"clients for every department written to {settings.data_dir / CLIENTS_FILE}")
        stored = read_population(settings)
        existing = await citizen_count(database)
        if existing == 0:
            registrar = demo_policies.seeding_access(clients)
            population = list(people(citizens, seed))
            ids = await _seed(settings, database, population, registrar, console)
            write_population(settings, seed, ids)
            return Prepared(clients, population, ids, seed, policies_dir)
        if stored is None or stored[1] != len(stored[2]) or stored[1] != existing:
            raise RuntimeError("the store holds citizens this demo did not seed; run with --reset")
        population_seed, _count, ids = stored
        console.print(f"reusing the store: {existing:,} citizens already seeded (--reset starts again)")
        return Prepared(clients, list(people(len(ids), population_seed)), ids, population_seed, policies_dir)
    finally:
        await database.dispose()


def log_verifier_key(settings: Settings) -> str:
    """The audit log's verifier key (vkey), which the demo's witnesses follow."""
    return load_signer(settings, AuditSettings().origin).verifier_key()


async def _newest_checkpoint(conn: AsyncConnection, witnessed: bool) -> tuple[int, bytes, str] | None:
    """(size, root, note) of the newest checkpoint, or of the newest that reached the quorum."""
    if witnessed:
        found = await cosignature_repository.newest_witnessed(conn)
        if found is None:
            return None
        row = found[0]
        lines = await cosignature_repository.cosignatures_for(conn, row.id)
        return row.tree_size, row.root_hash, row.note + "".join(lines.values())
    latest = await audit_repository.latest_checkpoint(conn)
    return None if latest is None else (latest.tree_size, latest.root_hash, latest.note)


async def _audit_summary(settings: Settings, witness_keys: Sequence[str]) -> AuditSummary:
    """Wait for a checkpoint over every entry so far (cosigned by the witnesses, when there
    are any), verify the whole log, then check that checkpoint's cosignatures."""
    database = Database(settings)
    checkpoint = None
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CHECKPOINT_WAIT_SECONDS
        while True:
            async with database.engine.connect() as conn:
                count = select(func.count()).select_from(AuditEntryRow)
                entries = int((await conn.execute(count)).scalar_one())
                checkpoint = await _newest_checkpoint(conn, bool(witness_keys))
            if checkpoint is not None and checkpoint[0] >= entries:
                break
            if loop.time() > deadline:
                break
            await asyncio.sleep(0.2)
    finally:
        await database.dispose()
    verifier = NoteVerifier.parse(log_verifier_key(settings))
    size = await verify_database(settings.database_url, verifier)
    if checkpoint is None:
        return AuditSummary(entries=size, root="(none yet)", witnesses=len(witness_keys))
    _size, root, note = checkpoint
    body, lines = split_note(note)
    cosigned = sum(CosignatureVerifier.parse(key).find(body, lines) is not None for key in witness_keys)
    return AuditSummary(
        entries=size, root=base64.b64encode(root).decode(), cosigned=cosigned, witnesses=len(witness_keys)
    )


async def run(
    settings: Settings,
    prepared: Prepared,
    base_url: str,
    duration: float,
    seed: int,
    console: Console,
    witness_keys: Sequence[str] = (),
) -> DemoReport:
    console.print(f"department systems live through life events for {duration:.0f} s")
    report = await runner.run_scenarios(
        base_url,
        prepared.clients,
        prepared.people,
        prepared.citizen_ids,
        duration=duration,
        seed=seed,
    )
    console.print("verifying the audit log")
    try:
        report.audit = await _audit_summary(settings, witness_keys)
    except (VerificationFailed, CheckpointError) as exc:
        report.audit_problem = str(exc)
    return report


def sign_in_lines(prepared: Prepared, base_url: str, *, console_available: bool) -> list[str]:
    owner = prepared.clients.owners["dvla"]
    auditor = prepared.clients.auditor
    lines = [f"API: {base_url}   docs: {base_url}/docs"]
    if console_available:
        lines.append(f"console: {base_url}/console (sign in with a data owner's or the auditor's client)")
    lines.append(f"data owner (dvla): client_id {owner.client_id}  client_secret {owner.client_secret}")
    lines.append(
        f"auditor (audit-office): client_id {auditor.client_id}  client_secret {auditor.client_secret}"
    )
    lines.append("every demo client's credentials: ./.tellonce/clients.json")
    return lines
