"""``tellonce policies``: validate and apply a policy folder."""

from __future__ import annotations

import asyncio
import getpass
from pathlib import Path

import typer

from service.catalog import service as catalog_service
from service.catalog.loader import load_catalog
from service.config import get_settings
from service.db import Database
from service.sourcefile import SourceFileError

app = typer.Typer(no_args_is_help=True, help="Agreements and the catalog, from policy files.")


async def _apply(directory: Path, author: str, reason: str) -> int | None:
    catalog = load_catalog(directory)
    database = Database(get_settings())
    try:
        async with database.sessions.begin() as session:
            return await catalog_service.store(session, catalog, author=author, reason=reason)
    finally:
        await database.dispose()


@app.command("apply")
def apply(
    directory: Path = typer.Argument(..., exists=True, file_okay=False, help="The policy folder."),
    reason: str = typer.Option("applied from files", help="Why; kept with every version."),
    author: str = typer.Option("", help="Who; defaults to the operating-system user."),
) -> None:
    """Validate DIR, then store what changed as new versions. Invalid input stores nothing."""
    try:
        version = asyncio.run(_apply(directory, author or getpass.getuser(), reason))
    except SourceFileError as exc:
        for error in exc.errors:
            typer.echo(str(error), err=True)
        raise typer.Exit(1) from None
    if version is None:
        typer.echo("catalog unchanged")
    else:
        typer.echo(f"catalog stored as version {version}")
