"""Registering, listing and disabling clients. Secrets are returned once, here only.

``register_client`` and ``disable_client`` are the one rule for both ways in: the operator's
``tellonce clients`` command and an admin client's ``/v1/clients`` API. Each records its
change in the audit log, in the transaction that makes it, under the actor who made it.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from service.audit import entries as audit_entries
from service.audit import writer as audit_writer
from service.auth import client_keys
from service.auth.errors import ClientNotFound, InvalidClientRegistration
from service.auth.models import Client, UsedAssertion
from service.auth.scopes import ROLES
from service.auth.secrets import hash_secret, new_client_id, new_client_secret, secret_matches
from service.auth.server import SeenAssertion, plausible_client_id
from service.auth.tokens import LEEWAY_SECONDS as REPLICA_CLOCK_SKEW_SECONDS
from service.catalog import repository as catalog_repository
from service.db import DriverReads, utcnow
from service.errors import Forbidden, sayable_name
from service.policy import epoch as policy_epoch

# A client's own rate limit: at most this many requests per second, and this burst.
MAX_RATE_PER_SECOND = 100_000
MAX_RATE_BURST = 1_000_000


@dataclass(frozen=True)
class NewClient:
    client_id: str
    # Shown once to the operator; None for a private_key_jwt client.
    client_secret: str | None

    def __repr__(self) -> str:
        return f"NewClient(client_id={self.client_id!r}, client_secret=***)"

    def as_json(self) -> dict[str, str]:
        out = {"client_id": self.client_id}
        if self.client_secret is not None:
            out["client_secret"] = self.client_secret
        return out


def parse_public_jwk(text: str | bytes) -> dict[str, Any]:
    """A public JWK (EC, OKP or RSA) from JSON; refuses private keys and junk (bytes that
    are not UTF-8 text, nesting too deep to parse, included)."""
    try:
        document = json.loads(text)
    except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise InvalidClientRegistration("The JWK is not valid JSON.") from None
    return check_public_jwk(document)


def check_public_jwk(document: object) -> dict[str, Any]:
    """``document`` if it is a public JWK an accepted assertion can be verified with
    (``client_keys.signing_key``'s rule); 422 saying why otherwise."""
    try:
        return client_keys.check(document)
    except client_keys.UnusableKey as unusable:
        raise InvalidClientRegistration(str(unusable)) from None


async def _validate(session: AsyncSession, department: str, roles: list[str]) -> None:
    if not roles:
        raise InvalidClientRegistration("A client needs at least one role.")
    unknown = sorted(set(roles) - ROLES)
    if unknown:
        # Named only if of a name's shape: anything else may be a value sent by mistake.
        shown = [role for role in unknown if sayable_name(role) is not None]
        hidden = len(unknown) - len(shown)
        said = [", ".join(shown)] if shown else []
        if hidden:
            said.append(f"{hidden} not shown")
        raise InvalidClientRegistration(
            f"Unknown role(s): {' and '.join(said)}. Roles are: {', '.join(sorted(ROLES))}."
        )
    latest = await catalog_repository.latest(session)
    if latest is not None:
        departments = {d["id"] for d in latest.content.get("departments", [])}
        if department not in departments:
            raise InvalidClientRegistration(
                f"Unknown department {department!r}; the catalog has: {', '.join(sorted(departments))}."
            )
    elif not department:
        raise InvalidClientRegistration("A client needs a department.")


async def create_client(
    session: AsyncSession,
    *,
    department: str,
    roles: list[str],
    name: str | None = None,
    public_jwk: dict[str, Any] | None = None,
    rate_per_second: float | None = None,
    rate_burst: int | None = None,
) -> NewClient:
    """Register a client. Without ``public_jwk`` it gets a secret, returned only here."""
    roles = sorted(set(roles))
    # The column's length; the name is printed on operators' terminals (`clients list`),
    # where a control character (an escape sequence) would act rather than show, and a
    # format character (a bidirectional override) would show other text than it holds.
    if name is not None and (len(name) > 200 or not name.isprintable()):
        raise InvalidClientRegistration(
            "A client's name is at most 200 characters, without control characters."
        )
    await _validate(session, department, roles)
    # The API's schema says the same; the command's options only set a floor.
    if rate_per_second is not None and not 0 < rate_per_second <= MAX_RATE_PER_SECOND:
        raise InvalidClientRegistration(
            f"The rate must be above 0 and at most {MAX_RATE_PER_SECOND} per second."
        )
    if rate_burst is not None and not 1 <= rate_burst <= MAX_RATE_BURST:
        raise InvalidClientRegistration(f"The burst must be 1 to {MAX_RATE_BURST}.")
    client_id = new_client_id()
    secret = None if public_jwk is not None else new_client_secret()
    session.add(
        Client(
            client_id=client_id,
            name=name or f"{department} ({', '.join(roles)})",
            department=department,
            roles=roles,
            public_jwk=public_jwk,
            secret_hash=hash_secret(secret) if secret is not None else None,
            rate_per_second=rate_per_second,
            rate_burst=rate_burst,
        )
    )
    await session.flush()
    return NewClient(client_id, secret)


# The roles an admin client may grant through the API: each reaches no further than its
# department's own agreements. ``admin``, ``auditor`` and ``citizen-portal`` reach across
# departments (every client, the whole audit trail, every citizen's access log), so only the
# operator's command grants them.
ADMIN_GRANTABLE_ROLES = frozenset({"consumer", "writer", "registrar", "data-owner"})


def check_admin_grant(admin_department: str, department: str, roles: Collection[str]) -> None:
    """An admin client registers clients of its own department only, with roles it may
    grant (``ADMIN_GRANTABLE_ROLES``); 403 naming what it may not do."""
    if department != admin_department:
        raise Forbidden(f"An admin client registers clients of its own department ({admin_department}) only.")
    beyond = sorted(set(roles) & (ROLES - ADMIN_GRANTABLE_ROLES))
    if beyond:
        raise Forbidden(
            f"Only an operator (tellonce clients create) grants the role(s): {', '.join(beyond)}; "
            f"an admin client grants {', '.join(sorted(ADMIN_GRANTABLE_ROLES))}."
        )


async def _audit(session: AsyncSession, actor: str, action: str, department: str, what: str) -> None:
    entry = audit_entries.operator_entry(actor, action, department, what)
    await audit_writer.append_in_transaction(await session.connection(), entry)


async def register_client(
    session: AsyncSession,
    actor: str,
    *,
    department: str,
    roles: list[str],
    name: str | None = None,
    public_jwk: dict[str, Any] | None = None,
    rate_per_second: float | None = None,
    rate_burst: int | None = None,
) -> NewClient:
    """``create_client``, audited (``client-create``) under ``actor``: an operator
    (``operator:NAME``) or the admin client that asked."""
    created = await create_client(
        session,
        department=department,
        roles=roles,
        name=name,
        public_jwk=public_jwk,
        rate_per_second=rate_per_second,
        rate_burst=rate_burst,
    )
    method = "private_key_jwt" if public_jwk else "client_secret"
    what = f"client {created.client_id} created: roles {','.join(sorted(set(roles)))}, {method}"
    await _audit(session, actor, "client-create", department, what + (f", name {name!r}" if name else ""))
    return created


async def list_clients(session: AsyncSession, department: str | None = None) -> list[Client]:
    """Every client, or ``department``'s, oldest first."""
    query = select(Client).order_by(Client.created_at, Client.client_id)
    if department is not None:
        query = query.where(Client.department == department)
    return list((await session.scalars(query)).all())


async def get_client(session: AsyncSession, client_id: str) -> Client | None:
    return await session.get(Client, client_id)


async def client_with_secret(session: AsyncSession, client_id: str, client_secret: str) -> Client | None:
    """The client whose secret this is, disabled or not; ``None`` for an unknown id or a
    wrong secret, in the same time (the secret is compared in constant time). An id no
    client can have is not looked up (PostgreSQL cannot even take a NUL as an argument)."""
    client = await session.get(Client, client_id) if plausible_client_id(client_id) else None
    matches = secret_matches(client_secret, client.secret_hash if client else None)
    return client if client is not None and matches else None


async def disable_client(
    session: AsyncSession, actor: str, client_id: str, *, department: str | None = None
) -> Client:
    """Disable a client, audited (``client-disable``) under ``actor``; its tokens are
    refused from the very next request, in every process. With ``department`` (an admin
    client's), only that department's clients are found: another's is 404, as if unknown;
    and only those it could have registered (``ADMIN_GRANTABLE_ROLES``): one holding a role
    only an operator grants (an auditor, another admin) is 403, so a department's admin
    cannot switch off the clients that check it. Disabling a disabled client changes
    nothing and records nothing."""
    client = await session.get(Client, client_id)
    if client is None or (department is not None and client.department != department):
        raise ClientNotFound(f"No client {client_id!r}.")
    if department is not None:
        beyond = sorted(set(client.roles) - ADMIN_GRANTABLE_ROLES)
        if beyond:
            raise Forbidden(
                f"Only an operator (tellonce clients disable) disables a client with the role(s): "
                f"{', '.join(beyond)}."
            )
    if client.disabled_at is None:
        client.disabled_at = utcnow()
        await session.flush()
        # Every process keeps clients' standing until the revocation epoch moves.
        await policy_epoch.bump_epoch(session)
        await _audit(session, actor, "client-disable", client.department, f"client {client_id} disabled")
    return client


@dataclass(frozen=True)
class ClientStatus:
    disabled: bool
    rate_per_second: float | None
    rate_burst: int | None


_CLIENT_STANDING = "SELECT disabled_at, rate_per_second, rate_burst FROM clients WHERE client_id = ?"


async def client_standing(reads: DriverReads, client_id: str) -> ClientStatus | None:
    """``client_status`` on the raw driver, for authentication (``service.db.DriverReads``)."""
    rows = await reads.rows(_CLIENT_STANDING, (client_id,))
    if not rows:
        return None
    disabled_at, rate_per_second, rate_burst = rows[0]
    return ClientStatus(disabled_at is not None, rate_per_second, rate_burst)


async def client_status(session: AsyncSession, client_id: str) -> ClientStatus | None:
    """The console's check on each page it serves (API requests use ``client_standing``):
    one primary-key lookup, Core, no ORM object built."""
    row = (
        await session.execute(
            select(Client.disabled_at, Client.rate_per_second, Client.rate_burst).where(
                Client.client_id == client_id
            )
        )
    ).one_or_none()
    if row is None:
        return None
    return ClientStatus(row.disabled_at is not None, row.rate_per_second, row.rate_burst)


async def disabled_clients(conn: AsyncConnection, client_ids: Collection[str]) -> set[str]:
    """Those of ``client_ids`` that are registered and disabled: what they subscribed to is
    no longer sent to them (``service.events.dispatcher``)."""
    if not client_ids:
        return set()
    rows = await conn.execute(
        select(Client.client_id).where(
            Client.client_id.in_(sorted(client_ids)), Client.disabled_at.is_not(None)
        )
    )
    return set(rows.scalars())


async def first_use_of_assertion(session: AsyncSession, assertion: SeenAssertion) -> bool:
    """Store a verified assertion's id until it expires; False if it was already used.

    In the database, so a replay is refused on any replica and after a restart. One
    atomic insert-if-absent; ids of assertions expired by more than the clock skew
    tolerated between replicas are deleted on the way (a replica whose clock is that far
    behind this one's still accepts an assertion this one sees as expired)."""
    purge_before = utcnow() - timedelta(seconds=REPLICA_CLOCK_SKEW_SECONDS)
    await session.execute(delete(UsedAssertion).where(UsedAssertion.expires_at < purge_before))
    dialect = session.get_bind().dialect.name
    upsert = postgresql_insert if dialect == "postgresql" else sqlite_insert
    inserted = await session.execute(
        upsert(UsedAssertion)
        .values(
            client_id=assertion.client_id[:64],
            jti=assertion.jti,
            expires_at=datetime.fromtimestamp(assertion.expires_at, UTC),
        )
        .on_conflict_do_nothing(index_elements=["client_id", "jti"])
        .returning(UsedAssertion.jti)
    )
    return inserted.first() is not None
