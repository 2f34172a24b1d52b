"""The rules of tell-us-once events: the outbox, subscriptions and deliveries. The pull
feed is in ``feed.py``; the cursors of both are in ``cursors.py``.

The records write path calls ``record_change`` inside its own transaction, once per
owning department whose fields changed, and ``notify`` after that transaction commits.
A write that rolls back takes its outbox rows with it, so nothing is ever told about a
change that did not happen.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, NoReturn

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service.audit.entries import (
    events_access_entry,
    query_entry,
    subscription_change_entry,
    subscription_refusal_entry,
)
from service.audit.schemas import AuditEntry
from service.auth.facts import RequestFacts
from service.catalog import service as catalog_service
from service.catalog.schemas import Catalog
from service.config import Settings
from service.db import utcnow
from service.errors import Conflict, Forbidden, bad_cursor
from service.events import repository
from service.events.access import AuditSink, PolicySource
from service.events.cursors import decode_position, decode_text, encode_position, encode_text
from service.events.errors import (
    InvalidSubscription,
    SubscribeNotPermitted,
    SubscriptionNotFound,
    UnsafeWebhookUrl,
)
from service.events.notifier import EventNotifier, feed_notifier
from service.events.schemas import (
    ACCESS_RECORDED,
    CONSENT_CHANGED,
    EVENT_TYPE,
    AccessNotice,
    ConsentChanged,
    DeliveryOut,
    DeliveryPage,
    EventData,
    RedeliverOut,
    SecretRotated,
    SubscriptionCreated,
    SubscriptionIn,
    SubscriptionOut,
    SubscriptionPage,
)
from service.events.secrets import (
    SecretBox,
    SecretSealer,
    SecretUndecryptable,
    new_signing_secret,
    previous_context,
)
from service.events.targets import Resolver, UnsafeWebhookTarget, check_target, parse
from service.policy.terms import AgreementTerms, agreement_terms

# The citizen portal's scope: it may read any citizen's access log on the citizen's behalf.
NOTICES_SCOPE = "citizens:access-log"

_FIELD_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")


@dataclass
class EventsRuntime:
    """What the events domain needs at run time; one per app on ``app.state.events``."""

    settings: Settings
    engine: AsyncEngine
    policy: PolicySource
    audit: AuditSink
    notifier: EventNotifier = field(default_factory=lambda: feed_notifier)
    # None: the system resolver. Tests give a stub that never leaves the machine.
    resolver: Resolver | None = None
    # What access notices (delayed disclosure) and a rotated secret's overlap take as now;
    # tests move it forward.
    clock: Callable[[], datetime] = utcnow
    # The terms of the agreement versions audit entries cite (basis, disclosure).
    terms: AgreementTerms = field(default_factory=lambda: agreement_terms)
    _secret_box: SecretSealer | None = None

    @property
    def secret_box(self) -> SecretSealer:
        if self._secret_box is None:
            self._secret_box = SecretBox.from_settings(self.settings)
        return self._secret_box


# --- the outbox: called by the records write path -----------------------------------------


@dataclass(frozen=True)
class Change:
    """One change to tell: the names of the fields of ``owner`` that changed; never values."""

    citizen_id: str
    fields: Sequence[str]
    owner: str


async def record_change(
    conn: AsyncConnection,
    *,
    citizen_id: str,
    fields: Sequence[str],
    owner: str,
    occurred_at: datetime | None = None,
) -> str:
    """Add one change event to the outbox inside the caller's transaction; return its id.

    ``fields`` are the names of the changed fields that ``owner`` owns; never values. The
    event becomes visible when the caller's transaction commits, and vanishes if it rolls
    back. Call ``notify()`` after the commit to wake waiting feeds and the dispatcher.
    """
    (event_id,) = await record_changes(conn, [Change(citizen_id, fields, owner)], occurred_at=occurred_at)
    return event_id


async def record_changes(
    conn: AsyncConnection, changes: Sequence[Change], *, occurred_at: datetime | None = None
) -> list[str]:
    """``record_change`` for many changes in one statement (a bulk import); their ids."""
    rows: list[dict[str, Any]] = []
    when = occurred_at or utcnow()
    for change in changes:
        if isinstance(change.fields, (str, bytes, Mapping)):
            raise TypeError("record_change takes a list of field names, never values")
        names = list(dict.fromkeys(change.fields))
        if not names or not all(isinstance(name, str) and _FIELD_NAME.match(name) for name in names):
            raise ValueError("record_change needs at least one field name, and only field names")
        rows.append(
            {
                "event_id": str(uuid.uuid4()),
                "citizen_id": change.citizen_id,
                "fields": names,
                "owner": change.owner,
                "occurred_at": when,
            }
        )
    if rows:
        await repository.lock_outbox(conn)
        await repository.insert_events(conn, rows)
        await repository.notify_on_commit(conn)
    return [row["event_id"] for row in rows]


def notify(target: Any = None) -> None:
    """Wake feeds and dispatchers waiting in this process; call after the write commits.

    ``target`` may be an ``EventNotifier``, an app's ``state`` (or anything with an
    ``events_notifier`` attribute), or nothing for the process-wide notifier.
    """
    if isinstance(target, EventNotifier):
        target.notify()
        return
    notifier = getattr(target, "events_notifier", None) if target is not None else None
    (notifier if isinstance(notifier, EventNotifier) else feed_notifier).notify()


# --- subscriptions ------------------------------------------------------------------------


def _validate_against_catalog(catalog: Catalog, body: SubscriptionIn, purpose: str) -> list[str]:
    """The subscription's fields, each once, in the order sent. A name the catalog does not
    hold is located by its position and never repeated, as on the citizen routes
    (``records.validation.require_known``): a national id sent there by mistake stays out of the
    answer and of everything that keeps answers."""
    errors: list[dict[str, Any]] = [
        {"loc": ["body", "fields", index], "msg": "unknown field"}
        for index, name in enumerate(body.fields)
        if catalog.field(name) is None
    ]
    if catalog.purpose(purpose) is None:
        errors.append({"loc": ["body", "purpose"], "msg": "unknown purpose"})
    if errors:
        raise InvalidSubscription(
            "The subscription names fields or a purpose the catalog does not have.", errors=errors
        )
    return list(dict.fromkeys(body.fields))


def _subscription_out(row: repository.SubscriptionRow, now: datetime) -> SubscriptionOut:
    """What the API shows of ``row`` at ``now`` (the rotated-out secret's end only while it
    still signs)."""
    until = row.previous_secret_expires_at
    return SubscriptionOut(
        id=row.id,
        type=ACCESS_RECORDED
        if row.type == ACCESS_RECORDED
        else (CONSENT_CHANGED if row.type == CONSENT_CHANGED else EVENT_TYPE),
        department=row.department,
        fields=row.fields,
        purpose=row.purpose or None,
        webhook_url=row.webhook_url,
        status="active"
        if row.status == "active"
        else ("disabled" if row.status == "disabled" else "deleted"),
        created_at=row.created_at,
        previous_secret_expires_at=until
        if until is not None and row.previous_secret_ciphertext is not None and until > now
        else None,
    )


async def create_subscription(
    runtime: EventsRuntime, caller: RequestFacts, body: SubscriptionIn
) -> SubscriptionCreated:
    """Refused (403) unless an agreement lets the caller's department subscribe to every field
    for the purpose. At this point no citizen is in view, so conditions are judged as for an
    active citizen; every event is checked again, with its citizen's real status. Access
    notices need the citizen portal's scope instead (``_notice_subscription``)."""
    if body.type == ACCESS_RECORDED:
        return await _notice_subscription(runtime, caller, body)
    if body.type == CONSENT_CHANGED:
        # Only the department's own agreements' consents are ever told (``tells``).
        entry = query_entry(caller.principal, "subscribe", source=caller.source)
        return await _store_subscription(runtime, caller, body, [], entry, utcnow())
    now = utcnow()
    # A subscription to changes always states one (``SubscriptionIn`` checks).
    purpose = body.purpose or ""
    async with runtime.engine.connect() as conn:
        catalog = await catalog_service.current_cached(conn)
        fields = _validate_against_catalog(catalog, body, purpose)
        if body.webhook_url is not None:
            try:
                parse(body.webhook_url)
            except UnsafeWebhookTarget as exc:
                raise _unsafe(exc) from None
        decide = await runtime.policy.current(conn)
    decisions = decide(caller.department, fields, purpose, "active", now)
    denied = [name for name in fields if decisions[name].effect != "permit"]
    owners = [spec.owner for name in fields if (spec := catalog.field(name)) is not None]
    entry = events_access_entry(
        action="subscribe",
        time=now,
        client_id=caller.principal.client_id,
        department=caller.department,
        on_behalf_of=caller.principal.on_behalf_of,
        citizen_id=None,
        owners=owners,
        requested=fields,
        decisions=decisions,
        purpose=purpose,
        status=403 if denied else 201,
        citizen_status="active",
        request_id=caller.request_id,
        source=caller.source,
    )
    if denied:
        await runtime.audit.record([entry])
        reasons = "; ".join(f"{name}: {decisions[name].reason}" for name in denied)
        raise SubscribeNotPermitted(
            f"Your department may not subscribe to {', '.join(denied)} for {purpose}: {reasons}"
        )
    return await _store_subscription(runtime, caller, body, fields, entry, now)


async def _notice_subscription(
    runtime: EventsRuntime, caller: RequestFacts, body: SubscriptionIn
) -> SubscriptionCreated:
    """Access notices, for a client with the citizen portal's scope (403 otherwise): the
    portal may read any citizen's access log on the citizen's behalf, and a notice is one
    line of it."""
    now = utcnow()
    if body.webhook_url is not None:
        try:
            parse(body.webhook_url)
        except UnsafeWebhookTarget as exc:
            raise _unsafe(exc) from None
    if NOTICES_SCOPE not in caller.principal.scopes:
        raise Forbidden(f"Access notices need the scope {NOTICES_SCOPE} (the citizen-portal role).")
    entry = query_entry(caller.principal, "subscribe", source=caller.source)
    return await _store_subscription(runtime, caller, body, [], entry, now)


async def _store_subscription(
    runtime: EventsRuntime,
    caller: RequestFacts,
    body: SubscriptionIn,
    fields: list[str],
    entry: AuditEntry,
    now: datetime,
) -> SubscriptionCreated:
    if body.webhook_url is not None:
        try:
            await check_target(
                body.webhook_url,
                allow_private=runtime.settings.webhook_allow_private,
                resolver=runtime.resolver,
            )
        except UnsafeWebhookTarget as exc:
            raise _unsafe(exc) from None
    subscription_id = str(uuid.uuid4())
    secret = new_signing_secret() if body.webhook_url is not None else None
    sealed = runtime.secret_box.seal(secret, subscription_id) if secret is not None else None
    # Audited in the transaction that stores it: no subscription exists that the trail does
    # not show, and no entry shows one that was not stored.
    limit = runtime.settings.max_subscriptions_per_department
    async with runtime.engine.begin() as conn:
        # Each subscription is a delivery of every change it is told of: without a bound,
        # one department's subscriptions would multiply the dispatcher's work (and the
        # requests it sends to a webhook URL) as many times as it liked.
        if await repository.count_subscriptions(conn, caller.department) >= limit:
            raise Conflict(
                f"Your department has {limit} subscriptions, the most it may have "
                "(TELLONCE_MAX_SUBSCRIPTIONS_PER_DEPARTMENT); delete one it no longer needs first."
            )
        head = await repository.head_position(conn)
        await repository.insert_subscription(
            conn,
            {
                "id": subscription_id,
                "department": caller.department,
                "client_id": caller.principal.client_id,
                "fields": fields,
                "purpose": body.purpose or "",
                "webhook_url": body.webhook_url,
                "secret_ciphertext": sealed,
                "start_position": head,
                "fanout_position": head,
                "status": "active",
                "created_at": now,
                "type": body.type,
            },
        )
        await runtime.audit.record_in(conn, [entry])
    return SubscriptionCreated(
        id=subscription_id,
        type=body.type,
        department=caller.department,
        fields=fields,
        purpose=body.purpose,
        webhook_url=body.webhook_url,
        status="active",
        created_at=now,
        secret=secret,
    )


def _unsafe(exc: UnsafeWebhookTarget) -> UnsafeWebhookUrl:
    message = str(exc)
    return UnsafeWebhookUrl(
        f"The webhook URL is refused: {message}.",
        errors=[{"loc": ["body", "webhook_url"], "msg": message}],
    )


async def _own_subscription(
    conn: AsyncConnection, caller: RequestFacts, subscription_id: str
) -> repository.SubscriptionRow:
    """The subscription if it is the caller's department's and not deleted (it may be
    disabled); 404 otherwise, so one department cannot learn of another's subscriptions.
    An access-notice subscription is the citizen portal's role's alone (``NOTICES_SCOPE``),
    whichever client of the department asks, as in the feed and at its making."""
    row = await _own_or_none(conn, caller, subscription_id)
    if row is None:
        raise SubscriptionNotFound("No such subscription.")
    return row


async def _own_or_none(
    conn: AsyncConnection, caller: RequestFacts, subscription_id: str
) -> repository.SubscriptionRow | None:
    row = await repository.get_subscription(conn, subscription_id)
    if row is None or row.department != caller.department or row.status not in ("active", "disabled"):
        return None
    if row.type == ACCESS_RECORDED and NOTICES_SCOPE not in caller.principal.scopes:
        return None
    return row


async def _subscription_to_change(
    runtime: EventsRuntime, caller: RequestFacts, subscription_id: str, change: str
) -> tuple[repository.SubscriptionRow, list[str]]:
    """The caller's subscription that it asks to change (``change``: ``deleted``, ...) and
    the owners of its fields. A refusal (404, ``_own_subscription``) is audited before it is
    answered, as every refused change is, and the same whether the subscription is another
    department's, unknown or deleted; while the audit cannot be written the answer is 503."""
    async with runtime.engine.connect() as conn:
        row = await _own_or_none(conn, caller, subscription_id)
        owners = await field_owners(conn, row.fields) if row is not None else []
    if row is None:
        await _refuse_unknown(runtime, caller, subscription_id, change)
    return row, owners


async def _refuse_unknown(
    runtime: EventsRuntime, caller: RequestFacts, subscription_id: str, change: str
) -> NoReturn:
    """404 for a subscription the caller's department does not have, audited first."""
    await runtime.audit.record(
        [
            subscription_refusal_entry(
                client_id=caller.principal.client_id,
                department=caller.department,
                on_behalf_of=caller.principal.on_behalf_of,
                subscription_id=subscription_id,
                change=change,
                source=caller.source,
            )
        ]
    )
    raise SubscriptionNotFound("No such subscription.")


def _change_entry(
    caller: RequestFacts,
    subscription_id: str,
    row: repository.SubscriptionRow,
    owners: Sequence[str],
    change: str,
    status: int,
    why: str = "",
    refused: bool = False,
) -> AuditEntry:
    """The caller's ``change`` of its subscription as the audit records it
    (``subscription-change``): made, or ``refused`` with ``status``."""
    return subscription_change_entry(
        client_id=caller.principal.client_id,
        department=caller.department,
        on_behalf_of=caller.principal.on_behalf_of,
        subscription_id=subscription_id,
        change=change,
        why=why,
        fields=row.fields,
        owners=owners,
        purpose=row.purpose or None,
        status=status,
        source=caller.source,
        refused=refused,
    )


async def get_subscription(
    runtime: EventsRuntime, caller: RequestFacts, subscription_id: str
) -> SubscriptionOut:
    async with runtime.engine.connect() as conn:
        return _subscription_out(await _own_subscription(conn, caller, subscription_id), runtime.clock())


async def delete_subscription(runtime: EventsRuntime, caller: RequestFacts, subscription_id: str) -> None:
    """End the subscription, audited (``subscription-change``) in the transaction that ends
    it: the entry and the change commit together or not at all, so while the audit cannot
    be written it stays as it is (503). A refusal is audited too, and so is a delete that
    finds the subscription deleted meanwhile (404, as for any deleted one)."""
    row, owners = await _subscription_to_change(runtime, caller, subscription_id, "deleted")
    async with runtime.engine.begin() as conn:
        deleted = await repository.delete_subscription(conn, subscription_id, utcnow())
        if deleted:
            await runtime.audit.record_in(
                conn, [_change_entry(caller, subscription_id, row, owners, "deleted", 204)]
            )
    if not deleted:
        await _refuse_unknown(runtime, caller, subscription_id, "deleted")


async def disable_subscription(
    runtime: EventsRuntime, caller: RequestFacts, subscription_id: str
) -> SubscriptionOut:
    """Pause an active subscription (a receiver under maintenance, say): nothing more is
    sent to it or read from the feed for it, and what it had queued is cancelled, as after
    a 410 Gone answer; ``enable_subscription`` resumes it where it stopped, with nothing
    lost. Audited (``subscription-change``, ``disabled``) in the transaction that disables
    it: while the audit cannot be written it stays active (503). A disabled subscription
    (disabled by another request meanwhile too) is answered as it is, and nothing is
    written."""
    row, owners = await _subscription_to_change(runtime, caller, subscription_id, "disabled")
    if row.status == "disabled":
        return _subscription_out(row, runtime.clock())
    async with runtime.engine.begin() as conn:
        disabled = await repository.disable_subscription(conn, subscription_id)
        now_row = await _own_or_none(conn, caller, subscription_id)
        if disabled:
            entry = _change_entry(
                caller, subscription_id, row, owners, "disabled", 200, why="by its department"
            )
            await runtime.audit.record_in(conn, [entry])
    if now_row is None:
        # Deleted between the read and the update: there is nothing to disable.
        await _refuse_unknown(runtime, caller, subscription_id, "disabled")
    return _subscription_out(now_row, runtime.clock())


async def enable_subscription(
    runtime: EventsRuntime, caller: RequestFacts, subscription_id: str
) -> SubscriptionOut:
    """Make a disabled subscription (its receiver answered 410 Gone, or its department
    paused it: ``disable_subscription``) active again, audited
    (``subscription-change``, ``enabled``) in the transaction that enables it: while the
    audit cannot be written it stays disabled (503). Delivery resumes where it stopped
    (``repository.enable_subscription``): the deliveries the disabling cancelled are queued
    again with fresh attempts and the same ``webhook-id``, and every event that came while
    it was disabled; the outbox is never pruned, so none is missing. Each is checked
    against the policy when it is sent, as always. An active subscription (enabled by
    another request meanwhile too) is answered as it is, and nothing is written."""
    row, owners = await _subscription_to_change(runtime, caller, subscription_id, "enabled")
    if row.status == "active":
        return _subscription_out(row, runtime.clock())
    async with runtime.engine.begin() as conn:
        requeued = await repository.enable_subscription(conn, subscription_id, utcnow())
        now_row = await _own_or_none(conn, caller, subscription_id)
        if requeued is not None:
            await runtime.audit.record_in(
                conn, [_change_entry(caller, subscription_id, row, owners, "enabled", 200)]
            )
    if now_row is None:
        # Deleted between the read and the update: there is nothing to enable.
        await _refuse_unknown(runtime, caller, subscription_id, "enabled")
    if requeued is not None:
        runtime.notifier.notify()
    return _subscription_out(now_row, runtime.clock())


async def rotate_secret(runtime: EventsRuntime, caller: RequestFacts, subscription_id: str) -> SecretRotated:
    """Give a webhook subscription a new signing secret, returned only now and stored only
    sealed. For ``webhook_secret_overlap_seconds`` (default 24 h) deliveries carry the old
    secret's signature beside the new one's (Standard Webhooks allows several, space
    separated), so the receiver can switch without refusing one; then only the new one's.
    A second rotation within the overlap keeps only the secret it replaces: the oldest
    stops at once. Audited (``subscription-change``, ``secret-rotated``) in the transaction
    that stores the secret: while the audit cannot be written nothing changes (503). 409
    for a feed subscription, which has no secret, and for a rotation that lost a race with
    another, which is audited as refused and changes nothing."""
    row, owners = await _subscription_to_change(runtime, caller, subscription_id, "secret-rotated")
    if row.webhook_url is None:
        raise Conflict("The subscription reads the feed and has no webhook, so it has no signing secret.")
    now = runtime.clock()
    overlap = runtime.settings.webhook_secret_overlap_seconds
    replaced = None
    if row.secret_ciphertext is not None and overlap > 0:
        try:
            replaced = runtime.secret_box.open(row.secret_ciphertext, subscription_id)
        except SecretUndecryptable:
            # Nothing signs with it now, so there is nothing to carry over (and a new secret
            # is how such a subscription is mended).
            replaced = None
    until = now + timedelta(seconds=overlap) if replaced is not None else None
    secret = new_signing_secret()
    sealed = runtime.secret_box.seal(secret, subscription_id)
    previous = (
        runtime.secret_box.seal(replaced, previous_context(subscription_id)) if replaced is not None else None
    )
    why = (
        f"the previous secret signs too until {until.isoformat()}"
        if until is not None
        else "the previous secret no longer signs"
    )
    async with runtime.engine.begin() as conn:
        stored = await repository.rotate_secret(
            conn,
            subscription_id,
            replaced=row.secret_ciphertext,
            sealed=sealed,
            previous=previous,
            previous_until=until,
        )
        now_row = await _own_or_none(conn, caller, subscription_id)
        if stored:
            entry = _change_entry(caller, subscription_id, row, owners, "secret-rotated", 200, why=why)
            await runtime.audit.record_in(conn, [entry])
    if now_row is None:
        await _refuse_unknown(runtime, caller, subscription_id, "secret-rotated")
    if not stored:
        lost = "another request rotated the secret at the same time"
        await runtime.audit.record(
            [
                _change_entry(
                    caller, subscription_id, row, owners, "secret-rotated", 409, why=lost, refused=True
                )
            ]
        )
        raise Conflict("The secret was rotated by another request at the same time; rotate again.")
    shown = _subscription_out(now_row, now)
    return SecretRotated(**shown.model_dump(), secret=secret)


async def field_owners(conn: AsyncConnection, fields: Sequence[str]) -> list[str]:
    """The departments owning ``fields`` in the catalog in force: whom a subscription's
    audit entries name, so each owner sees the subscriptions to its fields."""
    catalog = await catalog_service.current_cached(conn)
    return sorted({spec.owner for name in fields if (spec := catalog.field(name)) is not None})


async def list_subscriptions(
    runtime: EventsRuntime, caller: RequestFacts, *, cursor: str | None, limit: int
) -> SubscriptionPage:
    """The department's subscriptions, oldest first; its access-notice ones only for the
    citizen portal's role, which alone may make, feed or manage them."""
    after: tuple[datetime, str] | None = None
    if cursor:
        text = decode_text(cursor, ["query", "cursor"])
        stamp, _, last_id = text.partition("|")
        try:
            after = (datetime.fromisoformat(stamp), last_id)
        except ValueError:
            raise bad_cursor() from None
        if after[0].tzinfo is None or not last_id:
            raise bad_cursor()
    async with runtime.engine.connect() as conn:
        rows = await repository.list_subscriptions(
            conn,
            caller.department,
            after=after,
            limit=limit + 1,
            with_notices=NOTICES_SCOPE in caller.principal.scopes,
        )
    page = rows[:limit]
    next_cursor = None
    if len(rows) > limit:
        last = page[-1]
        next_cursor = encode_text(f"{last.created_at.isoformat()}|{last.id}")
    now = runtime.clock()
    return SubscriptionPage(items=[_subscription_out(row, now) for row in page], next_cursor=next_cursor)


# --- deliveries ---------------------------------------------------------------------------


async def list_deliveries(
    runtime: EventsRuntime, caller: RequestFacts, subscription_id: str, *, cursor: str | None, limit: int
) -> DeliveryPage:
    """The subscription's deliveries in event order, each with its status and last attempt;
    its event and citizen only where ``_told``."""
    after = decode_position(cursor, ["query", "cursor"]) if cursor else None
    async with runtime.engine.connect() as conn:
        await _own_subscription(conn, caller, subscription_id)
        rows = await repository.list_deliveries(conn, subscription_id, after=after, limit=limit + 1)
    page = rows[:limit]
    items = [_delivery_out(row) for row in page]
    next_cursor = encode_position(int(page[-1].event_position)) if len(rows) > limit else None
    return DeliveryPage(items=items, next_cursor=next_cursor)


def _delivery_out(row: Any) -> DeliveryOut:
    told = _told(row)
    return DeliveryOut(
        id=row.id,
        webhook_id=webhook_id(row.id),
        event_id=row.event_id if told else None,
        citizen_id=row.citizen_id if told else None,
        status=row.status,
        attempts=row.attempts,
        next_attempt_at=row.next_attempt_at if row.status == "pending" else None,
        last_attempt_at=row.last_attempt_at,
        last_status_code=row.last_status_code,
        last_error=row.last_error,
        delivered_at=row.delivered_at,
        created_at=row.created_at,
    )


def _told(row: Any) -> bool:
    """Whether the deliveries list may name the delivery's event and citizen: only once the
    event was released to the department (its audit entry written, the webhook sent), and
    not once the policy withheld it. Otherwise the list would tell of a change, and of the
    citizen it was to, that the policy kept from the department, unaudited."""
    return row.released_at is not None and row.status != "withheld"


async def redeliver(runtime: EventsRuntime, caller: RequestFacts, subscription_id: str) -> RedeliverOut:
    """Queue every dead delivery of the subscription again; policy is checked again at send.
    Refused (409) while the subscription is disabled: its receiver asked for nothing more,
    until the department enables it again (``enable_subscription``)."""
    async with runtime.engine.begin() as conn:
        row = await _own_subscription(conn, caller, subscription_id)
        if row.status == "disabled":
            raise Conflict(
                "The subscription is disabled: its receiver answered 410 Gone, so nothing more is "
                f"sent to it. Enable it again with POST /v1/subscriptions/{subscription_id}/enable "
                "once the receiver takes webhooks, then redeliver."
            )
        count = await repository.requeue_dead(conn, subscription_id, utcnow())
    if count:
        runtime.notifier.notify()
    return RedeliverOut(requeued=count)


def webhook_id(delivery_id: str) -> str:
    """The stable ``webhook-id`` of a delivery: the same on every attempt and redelivery."""
    return "msg_" + uuid.UUID(delivery_id).hex


def tells(subscription: repository.SubscriptionRow, event: repository.EventRow) -> bool:
    """Whether ``event`` is for ``subscription``: of its type, and a change to its fields, a
    consent change of an agreement its department is consumer of, or any access notice."""
    if subscription.type != event.type:
        return False
    if event.type == CONSENT_CHANGED:
        return (event.detail or {}).get("consumer") == subscription.department
    return event.type == ACCESS_RECORDED or bool(set(event.fields) & set(subscription.fields))


async def record_consent_change(
    conn: AsyncConnection,
    *,
    citizen_id: str,
    consent_id: str,
    agreement: str,
    owner: str,
    consumer: str,
    purpose: str,
    fields: Sequence[str],
    status: str,
    occurred_at: datetime,
) -> None:
    """Tell the consumer department, in the caller's transaction, that a citizen's consent
    to one of its agreements was given or changed: names and the status, never a value."""
    await repository.lock_outbox(conn)
    await repository.insert_events(
        conn,
        [
            {
                "event_id": str(uuid.uuid4()),
                "citizen_id": citizen_id,
                "fields": list(fields),
                "owner": owner,
                "occurred_at": occurred_at,
                "type": CONSENT_CHANGED,
                "detail": {
                    "consent_id": consent_id,
                    "agreement": agreement,
                    "consumer": consumer,
                    "purpose": purpose,
                    "status": status,
                },
            }
        ],
    )
    await repository.notify_on_commit(conn)


def event_data(
    event: repository.EventRow, fields: Sequence[str]
) -> EventData | AccessNotice | ConsentChanged:
    """What a receiver is told of ``event``: only ``fields`` of a change (those it may be
    told of now); an access notice or a consent change whole."""
    if event.type == CONSENT_CHANGED:
        detail = event.detail or {}
        return ConsentChanged(
            event_id=event.event_id,
            citizen_id=event.citizen_id,
            consent_id=detail["consent_id"],
            agreement=detail["agreement"],
            purpose=detail["purpose"],
            fields=list(event.fields),
            status=detail["status"],
            occurred_at=event.occurred_at,
        )
    if event.type == ACCESS_RECORDED:
        detail = event.detail or {}
        return AccessNotice(
            event_id=event.event_id,
            citizen_id=event.citizen_id,
            department=detail["department"],
            action=detail["action"],
            fields=list(fields),
            purpose=detail.get("purpose"),
            basis=detail.get("basis", "statutory"),
            legal_basis=detail.get("legal_basis") or [],
            occurred_at=event.occurred_at,
            disclosed_at=detail.get("disclosed_at"),
            disclosed_by=detail.get("disclosed_by"),
        )
    return EventData(
        event_id=event.event_id,
        citizen_id=event.citizen_id,
        fields=list(fields),
        owner=event.owner,
        occurred_at=event.occurred_at,
    )


def dumps_payload(data: EventData | AccessNotice | ConsentChanged) -> str:
    """The webhook body: compact JSON of ``{"type", "timestamp", "data"}``, exactly the bytes
    signed. ``timestamp`` is when the event occurred, as Standard Webhooks' payload structure
    asks: the event's ``occurred_at``, written exactly as in ``data`` (an access notice's is
    the access's own time, even when it is disclosed later). Each attempt rebuilds the body
    from the stored event, so every attempt of one delivery carries the same timestamp."""
    kind = data.type if isinstance(data, (AccessNotice, ConsentChanged)) else EVENT_TYPE
    told = data.model_dump(mode="json")
    payload = {"type": kind, "timestamp": told["occurred_at"], "data": told}
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
