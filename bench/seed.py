"""bench/seed: loading the demo population, in bulk against one citizen at a time.

Both paths encrypt every field under a per-(citizen, owner) data key and write a
``register`` audit entry in the same transaction; they run on the same fresh SQLite
store, one after the other, with citizens from the same seeded population:

- baseline: ``records.writes.register`` (the register's own fields) then ``write`` once
  per other owning department, as the API would do it: a transaction per call;
- bulk: ``records.seeding.register_population``, ``SEED_BATCH`` citizens per transaction.

It prints citizens and field values per second for each, and the ratio bulk/baseline.
"""

from __future__ import annotations

import asyncio
import base64
import os
import secrets
import tempfile
import time
from pathlib import Path

from rich.console import Console

from service.audit.writer import AuditWriter
from service.auth.dependencies import Principal
from service.auth.facts import RequestFacts
from service.config import Settings
from service.crypto.keyring import Keyring
from service.db import Database
from service.policy.service import PolicyHolder
from service.records import seeding, writes
from service.records.service import RecordsService
from service.records.store import open_store
from service.schema import upgrade_async
from service.sim import policies as demo_policies
from service.sim.population import people
from service.sim.setup import SEED_BATCH, batches, person_fields

ROOT = Path(__file__).resolve().parent.parent
BASELINE_CITIZENS = int(os.environ.get("BENCH_SEED_BASELINE", "60"))
BULK_CITIZENS = int(os.environ.get("BENCH_SEED_BULK", "3000"))


def _facts(department: str, *roles: str) -> RequestFacts:
    principal = Principal.with_roles(f"bench-{department}", department, *roles)
    return RequestFacts(principal=principal, request_id="bench-seed")


async def _run() -> None:
    folder = Path(tempfile.mkdtemp(prefix="tellonce-bench-seed-"))
    settings = Settings(
        env="test",
        database_url=f"sqlite+aiosqlite:///{folder / 'seed.db'}",
        data_dir=folder,
        root_key=base64.b64encode(secrets.token_bytes(32)).decode(),  # type: ignore[arg-type]
        log_level="WARNING",
        policies_dir=ROOT / "policies",
    )
    await upgrade_async(settings.database_url)
    database = Database(settings)
    store = await open_store(settings.database_url)
    audit = AuditWriter(database.engine)
    await audit.start()
    try:
        await demo_policies.apply(database, settings.policies_dir, Console(quiet=True))
        keyring = Keyring.from_settings(settings)
        records = RecordsService(database.engine, keyring, audit, store, PolicyHolder())
        population = list(people(BASELINE_CITIZENS + BULK_CITIZENS, seed=11))
        registrar = _facts("register", "registrar")

        started = time.perf_counter()
        baseline_values = 0
        for person in population[:BASELINE_CITIZENS]:
            registered = await writes.register(records, registrar, person.national_id, person.register_fields)
            baseline_values += 1 + len(person.register_fields)
            for owner, fields in person.owned.items():
                await writes.write(
                    records, _facts(owner, "writer"), registered.id, fields, reason="seed", if_match=None
                )
                baseline_values += len(fields)
        baseline = time.perf_counter() - started

        started = time.perf_counter()
        bulk_values = 0
        for batch in batches(iter(population[BASELINE_CITIZENS:]), SEED_BATCH):
            rows = [person_fields(p) for p in batch]
            async with database.engine.begin() as conn:
                await seeding.register_population(conn, keyring, registrar, rows)
            bulk_values += sum(len(r) for r in rows)
        bulk = time.perf_counter() - started
    finally:
        await audit.stop()
        await store.close()
        await database.dispose()

    base_rate, bulk_rate = BASELINE_CITIZENS / baseline, BULK_CITIZENS / bulk
    base_values, bulk_values_rate = baseline_values / baseline, bulk_values / bulk
    print(
        f"  baseline, register + a write per owner: {base_rate:7.0f} citizens/s {base_values:7.0f} values/s"
    )
    print(
        f"  bulk, register_population ({SEED_BATCH}/tx):  {bulk_rate:7.0f} citizens/s "
        f"{bulk_values_rate:7.0f} values/s"
    )
    print(f"  ratio bulk/baseline: {bulk_rate / base_rate:.1f}x")
    print(f"  5,000 citizens: {5000 / bulk_rate:.1f} s in bulk, {5000 / base_rate:.0f} s one at a time")


def main() -> None:
    asyncio.run(_run())


if __name__ == "__main__":
    main()
