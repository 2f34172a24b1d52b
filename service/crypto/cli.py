"""``tellonce keys``: rotate KEKs, re-encrypt after a compromise, show key status."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from service import operator
from service.audit.key_events import KeyEventsInTransaction
from service.config import get_settings
from service.crypto import service as key_service
from service.crypto.errors import KeyUnwrapError, NoDepartmentKeys, UnknownDepartment
from service.crypto.keyring import Keyring
from service.db import Database

app = typer.Typer(no_args_is_help=True, help="Key-encryption keys and data keys.")
# The outcome goes to standard output; the progress bar and refusals to standard error,
# so that a script reading the outcome gets nothing else.
console = Console()
errors = Console(stderr=True)
T = TypeVar("T")
UNWRAP_HINT = "is this the root key (or PKCS#11 token) this database's keys were made under?"


def _run(work: Callable[[Database, Keyring, Callable[[int, int], None]], Awaitable[T]], label: str) -> T:
    settings = get_settings()
    keyring = Keyring.from_settings(settings)
    # Key operations are audited under the operator, each in the transaction that makes it.
    keyring.on_key_event = KeyEventsInTransaction(operator.audit_client_id())

    async def main() -> T:
        database = Database(settings)
        try:
            with Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                console=errors,
            ) as bar:
                # The label names the department as typed: text, not rich markup.
                task = bar.add_task(escape(label), total=None)

                def report(done: int, total: int) -> None:
                    bar.update(task, completed=done, total=total)

                return await work(database, keyring, report)
        finally:
            await database.dispose()

    try:
        return asyncio.run(main())
    except NoDepartmentKeys as exc:
        # soft_wrap: each refusal is one line whatever the width (rich's 80 in a log file).
        errors.print(f"[red]{escape(str(exc))}[/red]", soft_wrap=True)
        # A name the catalog does not know is exit 2, as `policies explain` and `import` refuse one.
        raise typer.Exit(2 if isinstance(exc, UnknownDepartment) else 1) from None
    except KeyUnwrapError as exc:
        # Another root key (or token) than the database's, or a tampered key row. Each
        # finished batch is whole, so running again with the right key carries on.
        errors.print(f"[red]{escape(str(exc))}[/red]: {UNWRAP_HINT}", soft_wrap=True)
        raise typer.Exit(1) from None


@app.command("rotate")
def rotate(
    department: str = typer.Option(..., "--department", "-d", help="The owning department."),
    batch_size: int = typer.Option(1000, min=1, help="Data keys rewrapped per transaction."),
) -> None:
    """New KEK version for DEPARTMENT, then every data key rewrapped under it.

    Safe to interrupt: run it again and it resumes. Data stays readable throughout."""
    result = _run(
        lambda db, keyring, report: key_service.rotate_department(
            db.engine, keyring, department, batch_size=batch_size, progress=report
        ),
        f"rewrapping {department}",
    )
    verb = "resumed rotation to" if result.resumed else "rotated to"
    retired = ", ".join(f"v{v}" for v in result.retired_versions) or "none"
    console.print(
        f"{department}: {verb} KEK v{result.version}; "
        f"{result.rewrapped} data keys rewrapped; retired: {retired}"
    )


@app.command("reencrypt")
def reencrypt(
    department: str = typer.Option(..., "--department", "-d", help="The owning department."),
    batch_size: int = typer.Option(200, min=1, help="Citizens re-encrypted per transaction."),
) -> None:
    """After a suspected compromise: new data keys for every citizen of DEPARTMENT, every
    value re-encrypted, old data keys destroyed. Safe to interrupt and run again."""
    result = _run(
        lambda db, keyring, report: key_service.reencrypt_department(
            db.engine, keyring, department, batch_size=batch_size, progress=report
        ),
        f"re-encrypting {department}",
    )
    verb = "resumed and re-encrypted" if result.resumed else "re-encrypted"
    console.print(f"{department}: {verb} {result.values} values under {result.data_keys} new data keys")


@app.command("status")
def status() -> None:
    """KEK versions and data-key counts per department."""

    async def main() -> list[key_service.DepartmentKeyStatus]:
        database = Database(get_settings())
        try:
            async with database.engine.connect() as conn:
                return await key_service.key_status(conn)
        finally:
            await database.dispose()

    rows = asyncio.run(main())
    table = Table(title="Keys")
    for column in (
        "department",
        "active KEK",
        "versions (data keys)",
        "live data keys",
        "destroyed",
        "re-encryption",
    ):
        table.add_column(column)
    for row in rows:
        versions = ", ".join(f"v{v.version} {v.status} ({v.data_keys})" for v in row.versions)
        table.add_row(
            row.department,
            f"v{row.active_version}" if row.active_version else "-",
            versions,
            str(row.live_data_keys),
            str(row.destroyed_data_keys),
            "pending" if row.reencryption_pending else "-",
        )
    if not rows:
        console.print("no keys yet")
        return
    console.print(table)
