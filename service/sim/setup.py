"""Building the demo government on the embedded store: schema, policies, clients, keys,
and the population, loaded through the records service's encryption path.

Everything here is idempotent: a second run reuses the store, the clients and the
population it finds, and ``--reset`` (in the command) starts again from nothing.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service.auth import service as auth_service
from service.config import Settings
from service.db import Database
from service.sim.client import Credentials
from service.sim.population import Person

CLIENTS_FILE = "clients.json"
POPULATION_FILE = "population.json"
SQLITE_PREFIX = "sqlite+aiosqlite:///"
# Each department's systems, and the roles they need. Every owner also gets a data-owner
# client, so its people can change agreements and see who used its data.
SYSTEM_ROLES: dict[str, tuple[str, ...]] = {
    "register": ("registrar", "writer", "consumer"),
    "dvla": ("consumer", "writer"),
    "hmrc": ("consumer", "writer"),
    "dwp": ("consumer", "writer"),
    "hmpo": ("consumer", "writer"),
    "home-office": ("consumer", "writer"),
    "council": ("consumer", "writer"),
    "citizen-portal": ("citizen-portal", "consumer"),
}
OWNER_DEPARTMENTS = ("register", "dvla", "hmrc", "dwp", "hmpo", "home-office", "council")
AUDITOR_DEPARTMENT = "audit-office"
# The demo drives hundreds of requests a second from one client: lift the default limit.
DEMO_RATE_PER_SECOND = 100_000.0
DEMO_RATE_BURST = 100_000
# Citizens per transaction while seeding: large enough to amortise each commit.
SEED_BATCH = 500


@dataclass(frozen=True)
class DemoClients:
    systems: dict[str, Credentials]
    owners: dict[str, Credentials]
    auditor: Credentials

    def as_json(self, base_url: str) -> dict[str, Any]:
        return {
            "base_url": base_url,
            "token_url": f"{base_url}/oauth/token",
            "systems": {d: c.as_json() for d, c in self.systems.items()},
            "data_owners": {d: c.as_json() for d, c in self.owners.items()},
            "auditor": self.auditor.as_json(),
        }

    @classmethod
    def from_json(cls, document: dict[str, Any]) -> DemoClients:
        return cls(
            systems={d: Credentials.from_json(c) for d, c in document["systems"].items()},
            owners={d: Credentials.from_json(c) for d, c in document["data_owners"].items()},
            auditor=Credentials.from_json(document["auditor"]),
        )


def sqlite_path(database_url: str) -> Path | None:
    if not database_url.startswith(SQLITE_PREFIX):
        return None
    path = database_url[len(SQLITE_PREFIX) :].split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


def reset_store(settings: Settings) -> None:
    """Remove the embedded store and the data folder (keys, clients). Refuses a server DB."""
    database = sqlite_path(settings.database_url)
    if database is None:
        raise ValueError("--reset wipes only the embedded SQLite store; drop a server database yourself")
    for suffix in ("", "-wal", "-shm", "-journal"):
        candidate = database.with_name(database.name + suffix)
        if candidate.exists():
            candidate.unlink()
    if settings.data_dir.exists():
        shutil.rmtree(settings.data_dir)


def write_private(path: Path, document: dict[str, Any]) -> None:
    """Write JSON readable by the owner only (0600), created with that mode from the start."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        path.unlink()
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        json.dump(document, handle, indent=2)
        handle.write("\n")


def write_clients(settings: Settings, clients: DemoClients, base_url: str) -> None:
    """Write ``clients.json`` (0600) unless it already holds these credentials and this
    run's ``base_url``: a run on another ``--port`` keeps the clients but serves elsewhere."""
    path = settings.data_dir / CLIENTS_FILE
    document = clients.as_json(base_url)
    try:
        if json.loads(path.read_text()) == document:
            return
    except (OSError, ValueError):
        pass
    write_private(path, document)


def read_clients(settings: Settings) -> DemoClients | None:
    path = settings.data_dir / CLIENTS_FILE
    if not path.exists():
        return None
    try:
        return DemoClients.from_json(json.loads(path.read_text()))
    except (ValueError, KeyError, TypeError):
        return None


async def create_clients(database: Database) -> DemoClients:
    """One client per department system, one data-owner client per owner, one auditor."""

    async def make(session: Any, department: str, roles: Sequence[str], name: str) -> Credentials:
        created = await auth_service.create_client(
            session,
            department=department,
            roles=list(roles),
            name=name,
            rate_per_second=DEMO_RATE_PER_SECOND,
            rate_burst=DEMO_RATE_BURST,
        )
        assert created.client_secret is not None  # noqa: S101 - secret clients always get one
        return Credentials(department, tuple(sorted(roles)), created.client_id, created.client_secret)

    async with database.sessions.begin() as session:
        systems = {d: await make(session, d, roles, f"{d} system") for d, roles in SYSTEM_ROLES.items()}
        owners = {d: await make(session, d, ("data-owner",), f"{d} data owner") for d in OWNER_DEPARTMENTS}
        auditor = await make(session, AUDITOR_DEPARTMENT, ("auditor",), "National Audit Office auditor")
    return DemoClients(systems, owners, auditor)


def read_population(settings: Settings) -> tuple[int, int, list[str]] | None:
    """(seed, count, citizen ids in population order) from an earlier run, if any."""
    path = settings.data_dir / POPULATION_FILE
    if not path.exists():
        return None
    try:
        document = json.loads(path.read_text())
        return int(document["seed"]), int(document["count"]), [str(i) for i in document["ids"]]
    except (ValueError, KeyError, TypeError):
        return None


def write_population(settings: Settings, seed: int, ids: Sequence[str]) -> None:
    # Only pseudonymous ids: the national ids are regenerated from the seed when needed.
    write_private(settings.data_dir / POPULATION_FILE, {"seed": seed, "count": len(ids), "ids": list(ids)})


def batches(population: Iterator[Person], size: int) -> Iterator[list[Person]]:
    batch: list[Person] = []
    for person in population:
        batch.append(person)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def person_fields(person: Person) -> dict[str, object]:
    """Every field the population holds for ``person``, across its owning departments."""
    fields: dict[str, object] = {"national_id": person.national_id, **person.register_fields}
    for owned in person.owned.values():
        fields.update(owned)
    return fields
