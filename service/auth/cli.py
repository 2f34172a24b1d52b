"""``tellonce clients`` and ``tellonce auth``: register clients, rotate the signing key."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text
from sqlalchemy.ext.asyncio import AsyncSession

from service import operator
from service.audit import entries
from service.audit import writer as audit_writer
from service.auth import service as auth_service
from service.auth.keys import KEY_NAME, rotate_signing_key
from service.config import get_settings
from service.db import Database
from service.errors import ServiceError
from service.private_files import os_refusal

clients_app = typer.Typer(no_args_is_help=True, help="OAuth2 clients of department systems.")
auth_app = typer.Typer(no_args_is_help=True, help="Access-token signing keys.")

T = TypeVar("T")


async def _in_transaction(work: Callable[[AsyncSession], Awaitable[T]]) -> T:
    database = Database(get_settings())
    try:
        async with database.sessions.begin() as session:
            return await work(session)
    finally:
        await database.dispose()


async def _audit(session: AsyncSession, action: str, department: str, what: str) -> None:
    """The operator's change, audited in the transaction that makes it."""
    entry = entries.operator_entry(operator.audit_client_id(), action, department, what)
    await audit_writer.append_in_transaction(await session.connection(), entry)


def _run(work: Callable[[AsyncSession], Awaitable[T]]) -> T:
    try:
        return asyncio.run(_in_transaction(work))
    except ServiceError as exc:
        typer.echo(f"error: {exc.detail}", err=True)
        raise typer.Exit(1) from None


@clients_app.command("create")
def create(
    department: str = typer.Option(..., help="The client's department (an id from the catalog)."),
    roles: str = typer.Option(..., help="Comma-separated roles, e.g. consumer,writer."),
    name: str = typer.Option("", help="A human name for the client."),
    jwk: Path | None = typer.Option(
        None, exists=True, dir_okay=False, help="Public JWK file: the client uses private_key_jwt."
    ),
    rate: float | None = typer.Option(None, min=0.001, help="Requests per second (default: settings)."),
    burst: int | None = typer.Option(None, min=1, help="Burst size (default: settings)."),
    as_json: bool = typer.Option(False, "--json", help="Print only the JSON credentials."),
) -> None:
    """Register a client. Its secret is printed now and never again."""
    role_list = [r.strip() for r in roles.split(",") if r.strip()]
    try:
        public_jwk = auth_service.parse_public_jwk(jwk.read_bytes()) if jwk else None
    except ServiceError as exc:
        typer.echo(f"error: {exc.detail}", err=True)
        raise typer.Exit(1) from None

    async def work(session: AsyncSession) -> auth_service.NewClient:
        return await auth_service.register_client(
            session,
            operator.audit_client_id(),
            department=department,
            roles=role_list,
            name=name or None,
            public_jwk=public_jwk,
            rate_per_second=rate,
            rate_burst=burst,
        )

    created = _run(work)
    if as_json:
        typer.echo(json.dumps(created.as_json()))
        return
    typer.echo(f"client_id:     {created.client_id}")
    if created.client_secret is not None:
        typer.echo(f"client_secret: {created.client_secret}")
        typer.echo("Store the secret now: only its hash is kept, it cannot be shown again.")


def _shown(name: str) -> Text:
    """A client's name as a table cell: plain text, never Rich markup (a stray closing tag
    raised MarkupError), with control characters (terminal escape codes) replaced. An
    admin client names its department's clients through ``/v1/clients``."""
    return Text("".join(char if char.isprintable() else "\ufffd" for char in name))


@clients_app.command("list")
def list_(as_json: bool = typer.Option(False, "--json", help="Print JSON lines.")) -> None:
    """Every client, with its department, roles and state. Secrets are never shown."""
    clients = _run(auth_service.list_clients)
    if as_json:
        for c in clients:
            record = {
                "client_id": c.client_id,
                "name": c.name,
                "department": c.department,
                "roles": c.roles,
                "auth_method": "private_key_jwt" if c.public_jwk else "client_secret",
                "created_at": c.created_at.isoformat(),
                "disabled_at": c.disabled_at.isoformat() if c.disabled_at else None,
            }
            typer.echo(json.dumps(record))
        return
    table = Table("client_id", "name", "department", "roles", "auth", "disabled")
    for c in clients:
        table.add_row(
            c.client_id,
            _shown(c.name),
            c.department,
            ",".join(c.roles),
            "private_key_jwt" if c.public_jwk else "secret",
            c.disabled_at.isoformat(timespec="seconds") if c.disabled_at else "",
        )
    Console(width=200).print(table)


@clients_app.command("disable")
def disable(client_id: str = typer.Argument(..., help="The client to disable.")) -> None:
    """Disable a client: its tokens are refused from the next request on, everywhere."""

    async def work(session: AsyncSession) -> None:
        await auth_service.disable_client(session, operator.audit_client_id(), client_id)

    _run(work)
    typer.echo(f"client {client_id} disabled")


@auth_app.command("rotate-signing-key")
def rotate() -> None:
    """Make a new access-token signing key active; the old one verifies until its tokens expire."""
    data_dir = get_settings().data_dir
    try:
        kid = rotate_signing_key(data_dir)
    except OSError as exc:
        # The folder (or the data directory) is not a folder, or cannot be read or written:
        # one line and exit 2, as a key file that cannot be parsed.
        typer.echo(f"tellonce: cannot use the {KEY_NAME}s in {data_dir}: {os_refusal(exc)}", err=True)
        raise typer.Exit(2) from None

    async def work(session: AsyncSession) -> None:
        await _audit(session, "signing-key-rotate", "", f"access-token signing key {kid} made active")

    _run(work)
    typer.echo(f"new signing key {kid} is active")
