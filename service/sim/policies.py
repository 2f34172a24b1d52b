"""The demo's use of the policy domain: apply ``policies/``, name the seeding registrar,
and read back one agreement from its file (to restore it after the demo revokes it).
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console

from service.auth.dependencies import Principal
from service.db import Database
from service.records.service import Access
from service.sim.scenarios import REVOKED_AGREEMENT
from service.sim.setup import DemoClients


async def apply(database: Database, directory: Path, console: Console) -> None:
    """Validate and store ``directory`` through the policy domain, as `policies apply` does."""
    from service.policy import service as policy_service

    result = await policy_service.apply_directory(database, directory, author="tellonce demo", reason="demo")
    console.print(f"policies applied from {directory}: {result}")


def seeding_access(clients: DemoClients) -> Access:
    """The register's system registers the population: its client id is on every entry."""
    register = clients.systems["register"]
    principal = Principal.with_roles(register.client_id, register.department, *register.roles)
    return Access(principal=principal, request_id=f"demo-seed-{uuid.uuid4()}", source=None, case_ref=None)


def agreement_entry(
    directory: Path, owner: str, agreement_id: str = REVOKED_AGREEMENT
) -> dict[str, Any] | None:
    """The agreement as its owner's file states it, for a PUT that restores it."""
    path = directory / f"{owner}.yaml"
    if not path.exists():
        return None
    document = yaml.safe_load(path.read_text())
    for entry in document.get("agreements", []) if isinstance(document, dict) else []:
        if isinstance(entry, dict) and entry.get("id") == agreement_id:
            return {key: _plain(value) for key, value in entry.items()}
    return None


def _plain(value: Any) -> Any:
    # YAML dates become ISO strings, as the policy API takes them in JSON.
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return value
