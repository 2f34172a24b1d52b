"""``tellonce records``: maintenance of stored citizen records."""

from __future__ import annotations

import asyncio

import typer
from rich.console import Console

from service.config import get_settings
from service.crypto.keyring import Keyring
from service.db import Database
from service.records.reindex import ReindexResult, rebuild_blind_indexes

app = typer.Typer(no_args_is_help=True, help="Citizen records maintenance.")
console = Console()


@app.command("reindex")
def reindex(
    batch_size: int = typer.Option(500, min=1, help="Value rows rebuilt per transaction."),
) -> None:
    """Rebuild blind indexes computed with an older identifier normalisation.

    Safe to interrupt: run it again and it resumes after the last finished batch. Exit 1
    if, afterwards, two citizens share one national id (look-alike ids registered twice
    before normalisation); their ids are printed so the register can resolve them."""
    settings = get_settings()
    keyring = Keyring.from_settings(settings)

    async def main() -> ReindexResult:
        database = Database(settings)
        try:
            return await rebuild_blind_indexes(
                database,
                keyring,
                batch_size=batch_size,
                progress=lambda done: console.print(f"rebuilt {done} blind indexes"),
            )
        finally:
            await database.dispose()

    result = asyncio.run(main())
    console.print(f"{result.rebuilt} blind indexes rebuilt, {result.changed} changed")
    for group in result.shared:
        console.print(f"one national id is held by several citizens: {', '.join(group)}")
    if result.shared:
        raise typer.Exit(1)
