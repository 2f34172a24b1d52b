"""The demo's use of the policy domain: apply ``policies/`` and name the seeding registrar."""

from __future__ import annotations

import uuid
from pathlib import Path

from rich.console import Console

from service.auth.dependencies import Principal
from service.auth.facts import RequestFacts
from service.db import Database
from service.policy import service as policy_service
from service.policy.loader import load_policy_folder
from service.sim.setup import DemoClients


async def apply(database: Database, directory: Path, console: Console) -> None:
    """Validate and store ``directory``, as ``tellonce policies apply`` does.

    Applying again re-activates an agreement a previous run revoked through the API,
    since the files still hold it."""
    folder = load_policy_folder(directory)
    async with database.sessions.begin() as session:
        report = await policy_service.apply_folder(
            session, folder, author="tellonce demo", reason="demo start"
        )
    console.print(
        f"policies from {directory}: {len(report.created)} agreements created, {len(report.updated)} "
        f"updated, {len(report.unchanged)} unchanged"
    )


def seeding_facts(clients: DemoClients) -> RequestFacts:
    """The register's system registers the population: its client id is on every entry."""
    register = clients.systems["register"]
    principal = Principal.with_roles(register.client_id, register.department, *register.roles)
    return RequestFacts(principal=principal, request_id=f"demo-seed-{uuid.uuid4()}")
