"""The demo's two halves around the server: ``prepare`` (store, policies, clients, keys,
population, as an operator does) before it starts, and ``run`` (life events, report, audit
verification, as clients over HTTP) while it serves.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from service import operator
from service.audit import service as audit_service
from service.audit.checkpoint import CheckpointError, NoteVerifier
from service.audit.config import AuditSettings, load_signer
from service.audit.key_events import KeyEventsInTransaction
from service.audit.releases import ReleaseReport
from service.auth import service as auth_service
from service.auth.facts import RequestFacts
from service.config import Settings
from service.crypto.keyring import Keyring
from service.crypto.providers import load_root_key
from service.db import Database, engine_for, ensure_sqlite_dir
from service.policy.signing import OwnerVerifier
from service.private_files import make_private_dir
from service.records import seeding
from service.schema import upgrade_async
from service.sim import audit_check, runner
from service.sim import policies as demo_policies
from service.sim.client import DemoHttpError
from service.sim.population import Person, people
from service.sim.report import DemoReport
from service.sim.setup import (
    CLIENTS_FILE,
    SEED_BATCH,
    DemoClients,
    batches,
    create_clients,
    person_fields,
    read_clients,
    read_population,
    write_clients,
    write_population,
)

# How long to wait, once traffic stops, for the sequencer to cover every entry with a
# signed checkpoint (cosigned by the witnesses, when there are any) before verifying.
CHECKPOINT_WAIT_SECONDS = 30.0


@dataclass
class Prepared:
    clients: DemoClients
    people: list[Person]
    citizen_ids: list[str]
    seed: int
    policies_dir: Path
    # Verifier keys of the departments that signed their agreements.
    owner_keys: dict[str, str]


async def _clients_valid(database: Database, clients: DemoClients) -> bool:
    everyone = [*clients.systems.values(), *clients.owners.values(), clients.auditor]
    async with database.sessions() as session:
        for credentials in everyone:
            row = await auth_service.get_client(session, credentials.client_id)
            if row is None or row.disabled_at is not None:
                return False
    return True


async def _seed(
    settings: Settings,
    database: Database,
    population: list[Person],
    registrar: RequestFacts,
    console: Console,
) -> list[str]:
    """Load the population in batches as an operator's import does: through
    ``records.seeding``, a transaction per batch."""
    keyring = Keyring.from_settings(settings)
    # The first write of each owner makes its KEK, audited in that batch's transaction as
    # the CLI's import does.
    keyring.on_key_event = KeyEventsInTransaction(operator.audit_client_id())
    ids: list[str] = []
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("seeding citizens (encrypted field by field)", total=len(population))
        for batch in batches(iter(population), SEED_BATCH):
            async with database.engine.begin() as conn:
                rows = [person_fields(p) for p in batch]
                ids.extend(await seeding.register_population(conn, keyring, registrar, rows))
            progress.advance(task, len(batch))
    return ids


async def prepare(settings: Settings, citizens: int, seed: int, base_url: str, console: Console) -> Prepared:
    """Migrate, apply policies, make clients and keys, seed (or reuse) the population."""
    make_private_dir(settings.data_dir)
    ensure_sqlite_dir(settings.database_url)
    console.print("migrating the embedded store")
    await upgrade_async(settings.database_url)
    # Made here, mode 0600, so the server finds them; development settings allow it.
    load_root_key(settings)
    load_signer(settings, AuditSettings().origin)
    database = Database(settings)
    try:
        policies_dir, owner_keys = demo_policies.signed_policies(settings.policies_dir, settings.data_dir)
        console.print(
            f"{' and '.join(owner_keys)} signed their agreements (keys in {settings.data_dir}, mode 0600)"
        )
        await demo_policies.apply(database, policies_dir, console)
        clients = read_clients(settings)
        if clients is None or not await _clients_valid(database, clients):
            clients = await create_clients(database)
            write_clients(settings, clients, base_url)
            console.print(f"clients for every department written to {settings.data_dir / CLIENTS_FILE}")
        else:
            # Reused, but this run may serve on another --port: the file says where.
            write_clients(settings, clients, base_url)
        stored = read_population(settings)
        async with database.engine.connect() as conn:
            existing = await seeding.citizen_count(conn)
        if existing == 0:
            registrar = demo_policies.seeding_facts(clients)
            population = list(people(citizens, seed))
            ids = await _seed(settings, database, population, registrar, console)
            write_population(settings, seed, ids)
            return Prepared(clients, population, ids, seed, policies_dir, owner_keys)
        if stored is None or stored[1] != len(stored[2]) or existing < stored[1]:
            raise RuntimeError(
                "the store holds citizens this demo did not seed, or fewer than it seeded; "
                "start again with `make run-reset` (tellonce demo --reset)"
            )
        population_seed, seeded, ids = stored
        console.print(
            f"reusing the store: {seeded:,} citizens already seeded (`make run-reset` starts again)"
        )
        if existing > seeded:
            # Citizens registered since (through the API or `tellonce import`): kept, and left
            # out of the scenarios.
            added = existing - seeded
            console.print(
                f"keeping {added:,} citizen{'' if added == 1 else 's'} registered since the seeding"
            )
        people_again = list(people(len(ids), population_seed))
        return Prepared(clients, people_again, ids, population_seed, policies_dir, owner_keys)
    finally:
        await database.dispose()


def log_verifier_key(settings: Settings) -> str:
    """The audit log's verifier key (vkey): what the demo's witnesses follow."""
    return load_signer(settings, AuditSettings().origin).verifier_key()


async def run(
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
    console.print("verifying the audit log, as the auditor's client")
    try:
        report.audit = await audit_check.verify_log(
            base_url, prepared.clients.auditor, CHECKPOINT_WAIT_SECONDS, witness_keys
        )
    except (CheckpointError, DemoHttpError) as exc:
        report.audit_problem = str(exc)
    return report


def sign_in_lines(
    settings: Settings, prepared: Prepared, base_url: str, *, console_available: bool
) -> list[str]:
    owner = prepared.clients.owners["dvla"]
    auditor = prepared.clients.auditor
    lines = [f"API: {base_url}   docs: {base_url}/docs"]
    if console_available:
        lines.append(f"console: {base_url}/console (sign in with a data owner's or the auditor's client)")
    lines.append(f"data owner (dvla): client_id {owner.client_id}  client_secret {owner.client_secret}")
    lines.append(
        f"auditor (audit-office): client_id {auditor.client_id}  client_secret {auditor.client_secret}"
    )
    lines.append(f"every demo client's credentials: {settings.data_dir / CLIENTS_FILE}")
    return lines


async def owner_checks(settings: Settings, owner_keys: dict[str, str]) -> list[ReleaseReport]:
    """Each signing owner's check of the live log, as ``audit check-releases`` does."""
    verifier = NoteVerifier.parse(log_verifier_key(settings))
    engine = engine_for(settings)
    try:
        reports = []
        for owner, vkey in owner_keys.items():
            _size, checked = await audit_service.check_stored_releases(
                engine.connect, verifier, owner, OwnerVerifier.parse(vkey, owner)
            )
            reports.append(checked)
        return reports
    finally:
        await engine.dispose()
