"""The demo's use of the policy domain: sign, apply ``policies/`` and name the seeding registrar."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import yaml
from rich.console import Console

from service.audit.policy_changes import connect_policy_changes
from service.auth.dependencies import Principal
from service.auth.facts import RequestFacts
from service.catalog.loader import CATALOG_FILE
from service.db import Database
from service.policy import service as policy_service
from service.policy.loader import load_policy_folder
from service.policy.signing import OwnerSigner, SigningKeyError
from service.policy.signing_files import read_private_key, sign_folder, write_private_key
from service.private_files import SharedSecretFile
from service.sim.setup import DemoClients

# The departments that sign their agreements in the demo.
SIGNING_OWNERS = ("register", "dvla")
SIGNED_FOLDER = "policies-signed"


def owner_key_path(data_dir: Path, department: str) -> Path:
    return data_dir / f"owner-{department}.key"


def signed_policies(source: Path, data_dir: Path) -> tuple[Path, dict[str, str]]:
    """A copy of ``source`` under the data dir in which each of ``SIGNING_OWNERS`` has a
    signing key (made there, mode 0600, on the first run; never in the repository) and
    has signed its agreements. Returns the folder and each owner's verifier key; raises
    ``RuntimeError`` if a key file kept from an earlier run cannot be used (not a key, or
    open to other accounts)."""
    folder = data_dir / SIGNED_FOLDER
    if folder.exists():
        shutil.rmtree(folder)
    shutil.copytree(source, folder)
    signers: dict[str, OwnerSigner] = {}
    for department in SIGNING_OWNERS:
        path = owner_key_path(data_dir, department)
        if not path.exists():
            write_private_key(path, OwnerSigner.generate(department))
        try:
            signers[department] = read_private_key(path)
        except (SigningKeyError, SharedSecretFile) as exc:
            raise RuntimeError(
                f"the owner key of {department} ({path}) cannot be read: {exc}; "
                "`make run-reset` (tellonce demo --reset) starts again"
            ) from None
    catalog = yaml.safe_load((folder / CATALOG_FILE).read_text(encoding="utf-8"))
    for department in catalog["departments"]:
        if department["id"] in signers:
            department["signing_key"] = signers[department["id"]].verifier_key()
    (folder / CATALOG_FILE).write_text(
        yaml.safe_dump(catalog, sort_keys=False, allow_unicode=True), encoding="utf-8"
    )
    for signer in signers.values():
        sign_folder(folder, signer)
    return folder, {department: signer.verifier_key() for department, signer in signers.items()}


async def apply(database: Database, directory: Path, console: Console) -> None:
    """Validate and store ``directory``, as ``tellonce policies apply`` does.

    Applying again re-activates an agreement a previous run revoked through the API,
    since the files still hold it. Audited as the command is: every new agreement version
    and catalog lands in the log, which the signing owners' check re-decides from."""
    connect_policy_changes()
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
