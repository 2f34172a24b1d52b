"""Every query of the events domain, as Core statements on a connection.

The feed and the dispatcher run on the hot path and outside any request session, so they
use short transactions on the engine's connections rather than the ORM.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, func, insert, or_, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service.cases import repository as cases_repository
from service.events.models import (
    ACCESS_RECORDED,
    FIELDS_CHANGED,
    Delivery,
    HeldNotice,
    NoticeState,
    OutboxEvent,
    Subscription,
)
from service.events.notifier import PG_CHANNEL

# pg_advisory_xact_lock key for "appending to the event outbox" (ASCII 'events-o').
OUTBOX_LOCK_KEY = 0x6576656E74732D6F


@dataclass(frozen=True)
class EventRow:
    position: int
    event_id: str
    citizen_id: str
    fields: list[str]
    owner: str
    occurred_at: datetime
    type: str = FIELDS_CHANGED
    detail: dict[str, Any] | None = None


@dataclass(frozen=True)
class SubscriptionRow:
    id: str
    department: str
    client_id: str
    fields: list[str]
    purpose: str
    webhook_url: str | None
    secret_ciphertext: bytes | None
    start_position: int
    fanout_position: int
    status: str
    created_at: datetime
    type: str = FIELDS_CHANGED
    # The secret a rotation replaced, while it still signs too (secrets.previous_context).
    previous_secret_ciphertext: bytes | None = None
    previous_secret_expires_at: datetime | None = None


@dataclass(frozen=True)
class ClaimedDelivery:
    """A delivery this dispatcher holds the claim of, with what it needs to send it."""

    id: str
    claim_token: str
    # Counting the claimed attempt; the claim also set ``last_attempt_at`` to its time.
    attempts: int
    subscription: SubscriptionRow
    event: EventRow
    # ``last_attempt_at`` as it was before the claim: what a delivery left unsent keeps.
    previous_attempt_at: datetime | None


_EVENT_COLUMNS = (
    OutboxEvent.position,
    OutboxEvent.event_id,
    OutboxEvent.citizen_id,
    OutboxEvent.fields,
    OutboxEvent.owner,
    OutboxEvent.occurred_at,
    OutboxEvent.type,
    OutboxEvent.detail,
)
_SUBSCRIPTION_COLUMNS = (
    Subscription.id,
    Subscription.department,
    Subscription.client_id,
    Subscription.fields,
    Subscription.purpose,
    Subscription.webhook_url,
    Subscription.secret_ciphertext,
    Subscription.start_position,
    Subscription.fanout_position,
    Subscription.status,
    Subscription.created_at,
    Subscription.type,
    Subscription.previous_secret_ciphertext,
    Subscription.previous_secret_expires_at,
)


def _event(row: Any, prefix: str = "") -> EventRow:
    """The outbox event in ``row``, whose columns a join may have labelled ``prefix...``."""
    columns = row._mapping
    return EventRow(
        position=int(columns[f"{prefix}position"]),
        event_id=columns[f"{prefix}event_id"],
        citizen_id=columns[f"{prefix}citizen_id"],
        fields=list(columns[f"{prefix}fields"]),
        owner=columns[f"{prefix}owner"],
        occurred_at=columns[f"{prefix}occurred_at"],
        type=columns[f"{prefix}type"],
        detail=columns[f"{prefix}detail"],
    )


def _subscription(row: Any) -> SubscriptionRow:
    return SubscriptionRow(
        id=row.id,
        department=row.department,
        client_id=row.client_id,
        fields=list(row.fields),
        purpose=row.purpose,
        webhook_url=row.webhook_url,
        secret_ciphertext=row.secret_ciphertext,
        start_position=int(row.start_position),
        fanout_position=int(row.fanout_position),
        status=row.status,
        created_at=row.created_at,
        type=row.type,
        previous_secret_ciphertext=row.previous_secret_ciphertext,
        previous_secret_expires_at=row.previous_secret_expires_at,
    )


# --- the outbox ---------------------------------------------------------------------------


async def lock_outbox(conn: AsyncConnection) -> None:
    """Serialise outbox appends until the transaction ends (PostgreSQL).

    A sequence hands out positions when rows are inserted, not when they commit, so
    without this a reader could pass position 11 (committed) while 10 (still in flight)
    was not yet visible, and never see 10. Under the lock, positions become visible in
    order. SQLite already serialises writers, so it needs nothing.
    """
    if conn.dialect.name == "postgresql":
        await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": OUTBOX_LOCK_KEY})


async def notify_on_commit(conn: AsyncConnection) -> None:
    """PostgreSQL: wake listeners in every process when (and only if) this transaction commits."""
    if conn.dialect.name == "postgresql":
        await conn.execute(text("SELECT pg_notify(:channel, '')"), {"channel": PG_CHANNEL})


async def insert_events(conn: AsyncConnection, rows: Sequence[Mapping[str, Any]]) -> None:
    """Outbox rows (event_id, citizen_id, fields, owner, occurred_at; an access notice or a
    consent change also type and detail) in one executemany, positioned in their order."""
    if rows:
        await conn.execute(insert(OutboxEvent), list(rows))


async def head_position(conn: AsyncConnection) -> int:
    result = await conn.execute(select(func.max(OutboxEvent.position)))
    head = result.scalar_one_or_none()
    return int(head) if head is not None else 0


async def events_after(
    conn: AsyncConnection, after: int, limit: int, type: str | None = None
) -> list[EventRow]:
    """Outbox events after ``after`` in order; of one ``type`` only, if given."""
    statement = select(*_EVENT_COLUMNS).where(OutboxEvent.position > after)
    if type is not None:
        statement = statement.where(OutboxEvent.type == type)
    result = await conn.execute(statement.order_by(OutboxEvent.position).limit(limit))
    return [_event(row) for row in result]


# --- subscriptions ------------------------------------------------------------------------


async def insert_subscription(conn: AsyncConnection, values: dict[str, Any]) -> None:
    await conn.execute(insert(Subscription).values(**values))


async def count_subscriptions(conn: AsyncConnection, department: str) -> int:
    """The department's subscriptions not deleted (active or disabled)."""
    result = await conn.execute(
        select(func.count())
        .select_from(Subscription)
        .where(Subscription.department == department, Subscription.status != "deleted")
    )
    return int(result.scalar_one())


async def get_subscription(conn: AsyncConnection, subscription_id: str) -> SubscriptionRow | None:
    result = await conn.execute(select(*_SUBSCRIPTION_COLUMNS).where(Subscription.id == subscription_id))
    row = result.first()
    return _subscription(row) if row is not None else None


async def list_subscriptions(
    conn: AsyncConnection,
    department: str,
    *,
    after: tuple[datetime, str] | None,
    limit: int,
    with_notices: bool,
) -> list[SubscriptionRow]:
    """A department's active and disabled subscriptions (not the deleted ones), oldest
    first, from after the keyset ``after``; its access-notice ones only ``with_notices``."""
    statement = select(*_SUBSCRIPTION_COLUMNS).where(
        Subscription.department == department, Subscription.status.in_(["active", "disabled"])
    )
    if not with_notices:
        statement = statement.where(Subscription.type != ACCESS_RECORDED)
    if after is not None:
        created_at, last_id = after
        statement = statement.where(
            or_(
                Subscription.created_at > created_at,
                and_(Subscription.created_at == created_at, Subscription.id > last_id),
            )
        )
    result = await conn.execute(statement.order_by(Subscription.created_at, Subscription.id).limit(limit))
    return [_subscription(row) for row in result]


async def active_subscriptions(conn: AsyncConnection, department: str) -> list[SubscriptionRow]:
    result = await conn.execute(
        select(*_SUBSCRIPTION_COLUMNS)
        .where(Subscription.department == department, Subscription.status == "active")
        .order_by(Subscription.created_at, Subscription.id)
    )
    return [_subscription(row) for row in result]


async def delete_subscription(conn: AsyncConnection, subscription_id: str, now: datetime) -> bool:
    """Mark it deleted and cancel what it still had queued; delivery history stays. False,
    and nothing written, if it was deleted already."""
    result = await conn.execute(
        update(Subscription)
        .where(Subscription.id == subscription_id, Subscription.status != "deleted")
        .values(
            status="deleted",
            deleted_at=now,
            secret_ciphertext=None,
            previous_secret_ciphertext=None,
            previous_secret_expires_at=None,
        )
    )
    if not result.rowcount:
        return False
    await conn.execute(
        update(Delivery)
        .where(Delivery.subscription_id == subscription_id, Delivery.status == "pending")
        .values(status="cancelled", claim_token=None)
    )
    return True


async def disable_subscription(conn: AsyncConnection, subscription_id: str) -> bool:
    """Disable an active subscription (its receiver answered 410 Gone, or its department
    paused it) and cancel what it still had queued, as a delete does; False, and nothing
    written, if it was not active.

    Unlike a delete it keeps the sealed secret and its ``fanout_position`` and stays visible
    to its department, which sees why in its deliveries and may enable it again
    (``enable_subscription``); fan-out and the feed read active subscriptions only."""
    result = await conn.execute(
        update(Subscription)
        .where(Subscription.id == subscription_id, Subscription.status == "active")
        .values(status="disabled")
    )
    if not result.rowcount:
        return False
    await conn.execute(
        update(Delivery)
        .where(Delivery.subscription_id == subscription_id, Delivery.status == "pending")
        .values(status="cancelled", claim_token=None)
    )
    return True


async def enable_subscription(conn: AsyncConnection, subscription_id: str, now: datetime) -> int | None:
    """Make a disabled subscription active again and queue, with fresh attempts, what the
    disabling cancelled; None, and nothing written, if it was not disabled.

    Only a disabled subscription has cancelled deliveries that are not final (a deleted one
    is never enabled, and enabling requeues them all), so every cancelled one is requeued:
    the one its receiver answered 410 and those it had queued. Its ``fanout_position``
    stayed where the disabling left it, so fan-out then makes deliveries for the events
    that came meanwhile. The number requeued."""
    result = await conn.execute(
        update(Subscription)
        .where(Subscription.id == subscription_id, Subscription.status == "disabled")
        .values(status="active")
    )
    if not result.rowcount:
        return None
    requeued = await conn.execute(
        update(Delivery)
        .where(Delivery.subscription_id == subscription_id, Delivery.status == "cancelled")
        .values(status="pending", attempts=0, next_attempt_at=now, claim_token=None)
    )
    return int(requeued.rowcount)


async def rotate_secret(
    conn: AsyncConnection,
    subscription_id: str,
    *,
    replaced: bytes | None,
    sealed: bytes,
    previous: bytes | None,
    previous_until: datetime | None,
) -> bool:
    """Store a new sealed secret and, while it still signs too, the one it replaces; only if
    the stored secret is still ``replaced`` (so of two rotations at once, one wins) and the
    subscription is not deleted. Whether it was stored."""
    current = (
        Subscription.secret_ciphertext.is_(None)
        if replaced is None
        else Subscription.secret_ciphertext == replaced
    )
    result = await conn.execute(
        update(Subscription)
        .where(Subscription.id == subscription_id, Subscription.status.in_(["active", "disabled"]), current)
        .values(
            secret_ciphertext=sealed,
            previous_secret_ciphertext=previous,
            previous_secret_expires_at=previous_until,
        )
    )
    return bool(result.rowcount)


async def forget_previous_secrets(
    conn: AsyncConnection, subscription_ids: Sequence[str], now: datetime
) -> None:
    """Drop the rotated-out secrets of these subscriptions whose overlap has ended (a later
    rotation's, still in its overlap, stays)."""
    if subscription_ids:
        await conn.execute(
            update(Subscription)
            .where(
                Subscription.id.in_(list(subscription_ids)),
                Subscription.previous_secret_expires_at <= now,
            )
            .values(previous_secret_ciphertext=None, previous_secret_expires_at=None)
        )


# --- fan-out: outbox events -> deliveries -------------------------------------------------


async def webhook_subscriptions_to_fan_out(conn: AsyncConnection, head: int) -> list[SubscriptionRow]:
    """Active webhook subscriptions behind ``head``, each locked so only one dispatcher fans it out."""
    statement = (
        select(*_SUBSCRIPTION_COLUMNS)
        .where(
            Subscription.status == "active",
            Subscription.webhook_url.is_not(None),
            Subscription.fanout_position < head,
        )
        .order_by(Subscription.id)
        .with_for_update(skip_locked=True)
    )
    result = await conn.execute(statement)
    return [_subscription(row) for row in result]


async def insert_deliveries(conn: AsyncConnection, rows: Sequence[dict[str, Any]]) -> None:
    if rows:
        await conn.execute(insert(Delivery), list(rows))


async def set_fanout_position(conn: AsyncConnection, subscription_id: str, position: int) -> None:
    await conn.execute(
        update(Subscription).where(Subscription.id == subscription_id).values(fanout_position=position)
    )


# --- access notices: audit entries -> notices ---------------------------------------------


async def lock_notice_state(conn: AsyncConnection) -> int:
    """Take the notice worker's row for this transaction; the last entry id it passed."""
    result = await conn.execute(
        update(NoticeState)
        .where(NoticeState.id == 1)
        .values(last_entry_id=NoticeState.last_entry_id)
        .returning(NoticeState.last_entry_id)
    )
    return int(result.scalar_one())


async def notice_position(conn: AsyncConnection) -> int:
    result = await conn.execute(select(NoticeState.last_entry_id).where(NoticeState.id == 1))
    return int(result.scalar_one())


async def advance_notice_position(autocommit: AsyncEngine, passed: int, last_entry_id: int) -> bool:
    """Move the notice worker's position from ``passed`` to ``last_entry_id`` in one
    statement that commits by itself (``autocommit`` is an engine with
    ``isolation_level="AUTOCOMMIT"``); False, and nothing written, if another worker moved
    it first."""
    async with autocommit.connect() as conn:
        result = await conn.execute(
            update(NoticeState)
            .where(NoticeState.id == 1, NoticeState.last_entry_id == passed)
            .values(last_entry_id=last_entry_id)
        )
    return result.rowcount == 1


async def set_notice_position(conn: AsyncConnection, last_entry_id: int) -> None:
    await conn.execute(update(NoticeState).where(NoticeState.id == 1).values(last_entry_id=last_entry_id))


async def access_subscribed(conn: AsyncConnection) -> bool:
    """Whether any active subscription asks for access notices."""
    result = await conn.execute(
        select(Subscription.id)
        .where(Subscription.type == ACCESS_RECORDED, Subscription.status == "active")
        .limit(1)
    )
    return result.first() is not None


async def hold_notices(conn: AsyncConnection, rows: Sequence[dict[str, Any]]) -> None:
    if rows:
        await conn.execute(insert(HeldNotice), list(rows))


@dataclass(frozen=True)
class HeldRow:
    entry_id: int
    citizen_id: str
    department: str
    case_ref: str | None
    fields: list[str]
    detail: dict[str, Any]
    accessed_at: datetime
    disclose_by: datetime


async def waiting_cases(conn: AsyncConnection) -> list[tuple[str, str]]:
    """(department, case reference) of every case a held notice waits for."""
    result = await conn.execute(
        select(HeldNotice.department, HeldNotice.case_ref)
        .where(HeldNotice.released_at.is_(None), HeldNotice.case_ref.is_not(None))
        .distinct()
    )
    return [(str(d), str(r)) for d, r in result]


async def due_notices(
    conn: AsyncConnection, now: datetime, closed: Sequence[tuple[str, str]], limit: int
) -> list[HeldRow]:
    """Held notices not yet released whose maximum delay has passed or whose case is in
    ``closed``, oldest access first. ``closed`` names at most ``CASES_PER_QUERY`` cases, each
    a term of the statement's OR list (SQLite refuses one deeper than 1000)."""
    if len(closed) > cases_repository.CASES_PER_QUERY:
        raise ValueError(f"at most {cases_repository.CASES_PER_QUERY} cases in one statement")
    due = [HeldNotice.disclose_by <= now]
    due += [and_(HeldNotice.department == d, HeldNotice.case_ref == r) for d, r in closed]
    result = await conn.execute(
        select(
            HeldNotice.entry_id,
            HeldNotice.citizen_id,
            HeldNotice.department,
            HeldNotice.case_ref,
            HeldNotice.fields,
            HeldNotice.detail,
            HeldNotice.accessed_at,
            HeldNotice.disclose_by,
        )
        .where(HeldNotice.released_at.is_(None), or_(*due))
        .order_by(HeldNotice.entry_id)
        .limit(limit)
    )
    return [HeldRow(int(r[0]), r[1], r[2], r[3], list(r[4]), dict(r[5]), r[6], r[7]) for r in result]


async def release_held(conn: AsyncConnection, entry_ids: Sequence[int], now: datetime) -> None:
    if entry_ids:
        await conn.execute(
            update(HeldNotice).where(HeldNotice.entry_id.in_(list(entry_ids))).values(released_at=now)
        )


# --- claims and results -------------------------------------------------------------------


async def claim_due(
    conn: AsyncConnection,
    *,
    now: datetime,
    lease_until: datetime,
    limit: int,
    token: str,
) -> dict[str, datetime | None]:
    """Claim up to ``limit`` due deliveries for one attempt each; return their ids, in the
    order claimed, each with its ``last_attempt_at`` from before the claim.

    On PostgreSQL ``FOR UPDATE SKIP LOCKED`` lets several dispatchers claim at once without
    waiting on, or taking, each other's rows. The claim pushes ``next_attempt_at`` to the
    end of the lease, so a dispatcher that dies mid-attempt is retried after the lease.
    Only rows that carry ``token`` afterwards are this caller's (see ``claimed``).
    """
    due = (
        select(Delivery.id, Delivery.last_attempt_at)
        .where(Delivery.status == "pending", Delivery.next_attempt_at <= now)
        .order_by(Delivery.next_attempt_at, Delivery.event_position)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    previous: dict[str, datetime | None] = {row.id: row.last_attempt_at for row in await conn.execute(due)}
    if not previous:
        return {}
    ids = list(previous)
    # The update checks again that each row is still due, so that on SQLite, where the
    # select takes no lock, a second process that selected the same rows claims none.
    await conn.execute(
        update(Delivery)
        .where(Delivery.id.in_(ids), Delivery.status == "pending", Delivery.next_attempt_at <= now)
        .values(
            claim_token=token,
            next_attempt_at=lease_until,
            attempts=Delivery.attempts + 1,
            last_attempt_at=now,
        )
    )
    return previous


async def claimed(
    conn: AsyncConnection, previous: Mapping[str, datetime | None], token: str
) -> list[ClaimedDelivery]:
    """The deliveries ``claim_due`` returned (``previous``) that still carry ``token``."""
    result = await conn.execute(
        select(
            Delivery.id.label("delivery_id"),
            Delivery.attempts,
            *_SUBSCRIPTION_COLUMNS,
            *[c.label(f"event_{c.key}") for c in _EVENT_COLUMNS],
        )
        .join(Subscription, Subscription.id == Delivery.subscription_id)
        .join(OutboxEvent, OutboxEvent.position == Delivery.event_position)
        .where(Delivery.id.in_(list(previous)), Delivery.claim_token == token)
        .order_by(Delivery.event_position)
    )
    return [
        ClaimedDelivery(
            id=row.delivery_id,
            claim_token=token,
            attempts=int(row.attempts),
            subscription=_subscription(row),
            event=_event(row, prefix="event_"),
            previous_attempt_at=previous[row.delivery_id],
        )
        for row in result
    ]


async def record_result(conn: AsyncConnection, delivery_id: str, token: str, values: dict[str, Any]) -> bool:
    """Store an attempt's outcome, if the claim is still this dispatcher's."""
    result = await conn.execute(
        update(Delivery)
        .where(Delivery.id == delivery_id, Delivery.claim_token == token)
        .values(claim_token=None, **values)
    )
    return bool(result.rowcount)


async def next_due_at(conn: AsyncConnection) -> datetime | None:
    result = await conn.execute(
        select(func.min(Delivery.next_attempt_at)).where(Delivery.status == "pending")
    )
    due: datetime | None = result.scalar_one_or_none()
    return due


# --- deliveries as the API shows them -----------------------------------------------------


async def list_deliveries(
    conn: AsyncConnection, subscription_id: str, *, after: int | None, limit: int
) -> list[Any]:
    statement = (
        select(
            Delivery.id,
            Delivery.event_position,
            Delivery.status,
            Delivery.attempts,
            Delivery.next_attempt_at,
            Delivery.last_attempt_at,
            Delivery.last_status_code,
            Delivery.last_error,
            Delivery.delivered_at,
            Delivery.released_at,
            Delivery.created_at,
            OutboxEvent.event_id,
            OutboxEvent.citizen_id,
        )
        .join(OutboxEvent, OutboxEvent.position == Delivery.event_position)
        .where(Delivery.subscription_id == subscription_id)
    )
    if after is not None:
        statement = statement.where(Delivery.event_position > after)
    result = await conn.execute(statement.order_by(Delivery.event_position).limit(limit))
    return list(result)


async def requeue_dead(conn: AsyncConnection, subscription_id: str, now: datetime) -> int:
    """Put every dead delivery of a subscription back in the queue, with fresh attempts."""
    result = await conn.execute(
        update(Delivery)
        .where(Delivery.subscription_id == subscription_id, Delivery.status == "dead")
        .values(status="pending", attempts=0, next_attempt_at=now, claim_token=None)
    )
    return int(result.rowcount)


async def outbox_backlog(conn: AsyncConnection) -> int:
    """Outbox events not yet fanned out, summed over active webhook subscriptions (a metric)."""
    head = select(func.coalesce(func.max(OutboxEvent.position), 0)).scalar_subquery()
    statement = select(func.coalesce(func.sum(head - Subscription.fanout_position), 0)).where(
        Subscription.status == "active", Subscription.webhook_url.is_not(None)
    )
    return int((await conn.execute(statement)).scalar_one())


async def delivery_counts(conn: AsyncConnection) -> dict[str, int]:
    """Webhook deliveries by status (a metric)."""
    rows = await conn.execute(select(Delivery.status, func.count()).group_by(Delivery.status))
    return {str(status): int(count) for status, count in rows}
