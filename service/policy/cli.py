"""``tellonce policies``: validate, apply, export, test and explain policy folders."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import typer
import yaml

from service import operator
from service.catalog import service as catalog_service
from service.catalog.errors import CatalogMissing
from service.catalog.schemas import Catalog
from service.config import get_settings
from service.db import Database, utcnow
from service.policy import repository
from service.policy import service as policy_service
from service.policy.agreements import explanation_record
from service.policy.cases import describe, folder_policy, load_cases, run_cases
from service.policy.engine import ACTIONS, RequestContext
from service.policy.loader import load_policy_folder
from service.policy.signing import OwnerSigner, SigningKeyError
from service.policy.signing_files import read_private_key, sign_folder, write_private_key
from service.private_files import SharedSecretFile
from service.sourcefile import SourceFileError

app = typer.Typer(no_args_is_help=True, help="Agreements and the catalog, from policy files.")
owners_app = typer.Typer(no_args_is_help=True, help="Owning departments' signing keys.")


def _fail(exc: SourceFileError) -> typer.Exit:
    for error in exc.errors:
        typer.echo(str(error), err=True)
    typer.echo(f"{len(exc.errors)} error(s); nothing stored", err=True)
    return typer.Exit(1)


async def _apply(directory: Path, author: str, reason: str, prune: bool) -> policy_service.ApplyReport:
    folder = load_policy_folder(directory)
    database = Database(get_settings())
    try:
        # One transaction: the catalog, every agreement version and the epoch, or nothing.
        async with database.sessions.begin() as session:
            return await policy_service.apply_folder(
                session, folder, author=author, reason=reason, prune=prune
            )
    finally:
        await database.dispose()


@app.command("apply")
def apply(
    directory: Path = typer.Argument(..., exists=True, file_okay=False, help="The policy folder."),
    reason: str = typer.Option("applied from files", help="Why; kept with every version."),
    author: str = typer.Option("", help="Who; defaults to the operator (--actor, TELLONCE_ACTOR, OS user)."),
    prune: bool = typer.Option(False, "--prune", help="Revoke stored agreements missing from DIR."),
) -> None:
    """Validate DIR, then store what changed as new versions. Invalid input stores nothing."""
    try:
        report = asyncio.run(_apply(directory, author or operator.audit_client_id(), reason, prune))
    except SourceFileError as exc:
        raise _fail(exc) from None
    if report.catalog_version is None:
        typer.echo("catalog unchanged")
    else:
        typer.echo(f"catalog stored as version {report.catalog_version}")
    typer.echo(
        f"agreements: {len(report.created)} created, {len(report.updated)} updated, "
        f"{len(report.revoked)} revoked, {len(report.unchanged)} unchanged"
    )
    for agreement_id in report.kept_missing:
        typer.echo(f"kept {agreement_id}: not in {directory}; use --prune to revoke it")
    if report.epoch is not None:
        typer.echo(f"policy epoch {report.epoch}")


async def _export() -> tuple[dict[str, Any], dict[str, list[dict[str, Any]]]]:
    database = Database(get_settings())
    try:
        async with database.sessions() as session:
            _version, catalog = await catalog_service.current(session)
            by_owner: dict[str, list[dict[str, Any]]] = {}
            for row in await repository.current_versions(session):
                if row.status == "active":
                    by_owner.setdefault(row.owner, []).append(dict(row.content))
            return catalog.model_dump(mode="json", exclude_defaults=True), by_owner
    finally:
        await database.dispose()


@app.command("export")
def export(directory: Path = typer.Argument(..., file_okay=False, help="Folder to write.")) -> None:
    """Write the live catalog and active agreements back as policy files."""
    catalog, by_owner = asyncio.run(_export())
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "catalog.yaml").write_text(yaml.safe_dump(catalog, sort_keys=False, allow_unicode=True))
    for owner, agreements in sorted(by_owner.items()):
        document = {"owner": owner, "agreements": agreements}
        (directory / f"{owner}.yaml").write_text(
            yaml.safe_dump(document, sort_keys=False, allow_unicode=True)
        )
    typer.echo(f"wrote catalog and {len(by_owner)} agreement file(s) to {directory}")


@app.command("test")
def run_tests(
    directory: Path = typer.Argument(..., exists=True, file_okay=False, help="The policy folder."),
) -> None:
    """Run DIR/tests/*.yaml against the agreements in DIR; exit 1 on any mismatch."""
    try:
        policy = folder_policy(load_policy_folder(directory))
        cases = load_cases(directory)
    except SourceFileError as exc:
        for error in exc.errors:
            typer.echo(str(error), err=True)
        raise typer.Exit(1) from None
    mismatches = run_cases(policy, cases)
    for mismatch in mismatches:
        typer.echo(describe(mismatch), err=True)
    checked = sum(len(c.case.expect) for c in cases)
    if mismatches:
        typer.echo(f"{len(mismatches)} of {checked} expectations failed in {len(cases)} cases", err=True)
        raise typer.Exit(1)
    typer.echo(f"{checked} expectations passed in {len(cases)} cases")


# The statuses a live citizen has, as the API's explain takes them (``ExplainIn``).
EXPLAINED_STATUSES = ("active", "deceased")


class UnknownNames(Exception):
    """Names in an explain question that the stored catalog does not have."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def unknown_names(catalog: Catalog, consumer: str, action: str, fields: list[str], purpose: str) -> list[str]:
    """Each name the catalog does not know, in words: a misspelt question would otherwise
    be answered "deny", which reads like a decision."""
    problems: list[str] = []
    if catalog.department(consumer) is None:
        known = ", ".join(sorted(d.id for d in catalog.departments))
        problems.append(f"unknown consumer {consumer!r} (departments: {known})")
    if action not in ACTIONS:
        problems.append(f"unknown action {action!r} (actions: {', '.join(ACTIONS)})")
    problems.extend(f"unknown field {name!r}" for name in fields if catalog.field(name) is None)
    if catalog.purpose(purpose) is None:
        known = ", ".join(sorted(p.id for p in catalog.purposes))
        problems.append(f"unknown purpose {purpose!r} (purposes: {known})")
    return problems


async def _explain(
    consumer: str, action: str, fields: list[str], purpose: str, case_ref: str | None, status: str | None
) -> dict[str, Any]:
    if status is not None and status not in EXPLAINED_STATUSES:
        # A mistyped status would be decided as an unknown one, which reads like a decision.
        raise UnknownNames([f"unknown citizen status {status!r} ({' or '.join(EXPLAINED_STATUSES)})"])
    database = Database(get_settings())
    try:
        async with database.engine.connect() as conn:
            try:
                catalog = await catalog_service.current_cached(conn)
            except CatalogMissing as exc:
                raise UnknownNames([exc.detail]) from None
            unknown = unknown_names(catalog, consumer, action, fields, purpose)
            if unknown:
                raise UnknownNames(unknown)
            policy = await policy_service.current_policy(conn)
            context = RequestContext(purpose, case_ref, utcnow(), status)
            explained = policy.explain(consumer, action, fields, context)
            return {
                "epoch": policy.epoch,
                "decisions": {name: explanation_record(e) for name, e in explained.items()},
            }
    finally:
        await database.dispose()


@app.command("explain")
def explain(
    consumer: str = typer.Option(..., help="The consumer department."),
    action: str = typer.Option("read", help=" | ".join(ACTIONS)),
    field: list[str] = typer.Option(..., "--field", help="A field; repeat for several."),
    purpose: str = typer.Option(..., help="The purpose id."),
    case_ref: str | None = typer.Option(None, help="The case reference, if any."),
    citizen_status: str | None = typer.Option(None, help="active or deceased."),
) -> None:
    """Decide against the live stored policy (as the service does) and print the reasons as JSON.

    Exits 2, deciding nothing, if the consumer, action, a field or the purpose is unknown."""
    try:
        result = asyncio.run(_explain(consumer, action, field, purpose, case_ref, citizen_status))
    except UnknownNames as exc:
        for problem in exc.problems:
            typer.echo(f"error: {problem}", err=True)
        raise typer.Exit(2) from None
    typer.echo(json.dumps(result, indent=2))


@app.command("sign")
def sign(
    directory: Path = typer.Argument(..., exists=True, file_okay=False, help="The policy folder."),
    key: Path = typer.Option(
        ...,
        "--key",
        exists=True,
        dir_okay=False,
        help="The owner's private key file (refused if other accounts may read it).",
    ),
) -> None:
    """Sign, in place, every agreement of the key's department in DIR (comments and layout kept)."""
    try:
        report = sign_folder(directory, read_private_key(key))
    except SharedSecretFile as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from None
    except SigningKeyError as exc:
        typer.echo(f"{key}: {exc}", err=True)
        raise typer.Exit(1) from None
    except SourceFileError as exc:
        for error in exc.errors:
            typer.echo(str(error), err=True)
        typer.echo(f"{len(exc.errors)} error(s); nothing signed", err=True)
        raise typer.Exit(1) from None
    for path in report.rewritten:
        typer.echo(f"{path}: rewritten cleanly (an agreement in flow style has no line to sign)")
    typer.echo(
        f"signed {len(report.signed)} agreement(s) in {len(report.files)} file(s); "
        f"{len(report.already)} already signed"
    )


@app.command("verify")
def verify(
    directory: Path = typer.Argument(..., exists=True, file_okay=False, help="The policy folder."),
) -> None:
    """Check every agreement's owner signature against catalog.yaml's keys, as `apply` would.

    Prints `FILE:LINE: message` for each unsigned or badly signed agreement (and any other
    problem `apply` would refuse), and exits 1 if there is one.
    """
    try:
        folder = load_policy_folder(directory)
    except SourceFileError as exc:
        for error in exc.errors:
            typer.echo(str(error), err=True)
        typer.echo(f"{len(exc.errors)} error(s)", err=True)
        raise typer.Exit(1) from None
    keys = folder.catalog.signing_keys
    signed = sum(1 for a in folder.agreements if a.owner in keys)
    unsigned_owners = sorted({a.owner for a in folder.agreements if a.owner not in keys})
    typer.echo(f"{signed} agreement(s) of {len(keys)} department(s) with a signing key verified")
    if unsigned_owners:
        typer.echo(f"no signing key (signatures not required): {', '.join(unsigned_owners)}")


@owners_app.command("sign")
def sign_text(
    key: Path = typer.Option(
        ...,
        "--key",
        exists=True,
        dir_okay=False,
        help="The owner's private key file (refused if other accounts may read it).",
    ),
) -> None:
    """Sign the text on stdin (the console's "text to sign") and print the base64 signature.

    The text is signed exactly as read, less one trailing line break a terminal adds.
    """
    import base64
    import sys

    try:
        signer = read_private_key(key)
    except SharedSecretFile as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from None
    except SigningKeyError as exc:
        typer.echo(f"{key}: {exc}", err=True)
        raise typer.Exit(1) from None
    text = sys.stdin.read().removesuffix("\n")
    typer.echo(base64.b64encode(signer.sign_text(text)).decode())


@owners_app.command("keygen")
def keygen(
    department: str = typer.Option(..., "--department", help="The department id the key signs for."),
    out: Path = typer.Option(..., "--out", dir_okay=False, help="The private key file to write (0600)."),
) -> None:
    """Make a department's signing key: write the private key to FILE, print the vkey for catalog.yaml."""
    try:
        signer = OwnerSigner.generate(department)
        write_private_key(out, signer)
    except SigningKeyError as exc:
        typer.echo(f"--department {department!r}: {exc}", err=True)
        raise typer.Exit(2) from None
    except FileExistsError:
        typer.echo(f"{out} exists; a signing key is never overwritten", err=True)
        raise typer.Exit(1) from None
    except OSError as exc:
        typer.echo(f"cannot write {out}: {exc.strerror or type(exc).__name__}", err=True)
        raise typer.Exit(1) from None
    typer.echo(signer.verifier_key())
    typer.echo(f"private key written to {out}; add the line above as signing_key: of {department}", err=True)
