"""The outbox of events, subscriptions, webhook deliveries, and the access-notice worker's place.

Three kinds of event share the outbox: a change to a citizen's fields
(``citizen.fields_changed``); an access notice (``access.recorded``): a department read,
verified or looked up a citizen, for a purpose; and a consent change
(``consent.changed``): a citizen gave, paused, resumed or revoked consent to one of a
consumer's agreements. No table here holds a field value: an event names the citizen (by
pseudonymous id) and field names; a consumer that wants the values reads them with a
purpose.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, ForeignKey, Index, Integer, LargeBinary, String, text
from sqlalchemy.orm import Mapped, mapped_column

from service.db import Base, utcnow

# SQLite only makes an INTEGER PRIMARY KEY an alias of the rowid; BIGINT elsewhere.
Position = BigInteger().with_variant(Integer, "sqlite")

FIELDS_CHANGED = "citizen.fields_changed"
ACCESS_RECORDED = "access.recorded"
# A citizen's consent to an agreement given, paused, resumed, revoked: told to the consumer.
CONSENT_CHANGED = "consent.changed"


class OutboxEvent(Base):
    """One change to one citizen's fields of one owner, written in the change's transaction;
    one access notice, written by the notice worker from the audit log; or one change to a
    citizen's consent, written in the consent's transaction."""

    __tablename__ = "event_outbox"
    __table_args__ = (
        # Fan-out and the feed read one type after a position, past the other types' rows.
        Index("ix_event_outbox_type_position", "type", "position"),
        # AUTOINCREMENT on SQLite: a position is never reused, even after the newest row goes.
        {"sqlite_autoincrement": True},
    )

    position: Mapped[int] = mapped_column(Position, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(String(36), unique=True)
    citizen_id: Mapped[str] = mapped_column(String(36), index=True)
    fields: Mapped[list[str]] = mapped_column(JSON)
    owner: Mapped[str] = mapped_column(String(63))
    occurred_at: Mapped[datetime] = mapped_column()
    type: Mapped[str] = mapped_column(String(32), server_default=text(f"'{FIELDS_CHANGED}'"))
    # An access notice's department, action, purpose, basis and disclosure; a consent
    # change's consent id, agreement, consumer, purpose and status (never a value).
    detail: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)


class Subscription(Base):
    """A department's standing interest in some fields, for one purpose; pull or webhook."""

    __tablename__ = "event_subscriptions"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    department: Mapped[str] = mapped_column(String(63), index=True)
    client_id: Mapped[str] = mapped_column(String(200))
    fields: Mapped[list[str]] = mapped_column(JSON)
    purpose: Mapped[str] = mapped_column(String(63))
    webhook_url: Mapped[str | None] = mapped_column(String(2048), default=None)
    # The whsec_ signing secret, AES-GCM encrypted under a key derived from the root key,
    # or with TELLONCE_KEY_PROVIDER=pkcs11 under a key in the PKCS#11 token (secrets.py).
    secret_ciphertext: Mapped[bytes | None] = mapped_column(LargeBinary, default=None)
    # After a rotation, the secret it replaced, sealed the same way but bound to its role
    # (secrets.previous_context), and until when deliveries are signed with it too.
    previous_secret_ciphertext: Mapped[bytes | None] = mapped_column(LargeBinary, default=None)
    previous_secret_expires_at: Mapped[datetime | None] = mapped_column(default=None)
    # The outbox head when the subscription was made: only later changes are told.
    start_position: Mapped[int] = mapped_column(Position)
    # How far the dispatcher has turned outbox events into deliveries (webhooks only).
    fanout_position: Mapped[int] = mapped_column(Position)
    status: Mapped[str] = mapped_column(String(16), default="active")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    deleted_at: Mapped[datetime | None] = mapped_column(default=None)
    # What it is told of: field changes (fields and purpose), or access notices or consent
    # changes (neither).
    type: Mapped[str] = mapped_column(String(32), server_default=text(f"'{FIELDS_CHANGED}'"))


class Delivery(Base):
    """One event for one webhook subscription, and how its attempts went.

    Every attempt carries the same ``webhook-id``, ``msg_`` and the hex of this id, so a
    receiver can de-duplicate.
    """

    __tablename__ = "event_deliveries"
    __table_args__ = (
        Index("uq_event_deliveries_subscription_event", "subscription_id", "event_position", unique=True),
        # The dispatcher's claim: pending deliveries whose next attempt is due.
        Index("ix_event_deliveries_due", "status", "next_attempt_at"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    subscription_id: Mapped[str] = mapped_column(ForeignKey("event_subscriptions.id"))
    event_position: Mapped[int] = mapped_column(Position, ForeignKey("event_outbox.position"))
    # pending, delivered, dead, withheld or cancelled.
    status: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column()
    # Set by the dispatcher that claimed the current attempt; its result is recorded only
    # if the claim is still its own (a lease that ran out may have been taken over).
    claim_token: Mapped[str | None] = mapped_column(String(36), default=None)
    last_attempt_at: Mapped[datetime | None] = mapped_column(default=None)
    last_status_code: Mapped[int | None] = mapped_column(Integer, default=None)
    last_error: Mapped[str | None] = mapped_column(String(500), default=None)
    delivered_at: Mapped[datetime | None] = mapped_column(default=None)
    # When the event was last released to the subscribing department: the attempt's audit
    # entry was written and the webhook sent. Until then (not yet decided, withheld by the
    # policy, or stopped before the audit) the deliveries list does not name its event or
    # citizen, as the feed does not tell of it.
    released_at: Mapped[datetime | None] = mapped_column(default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class NoticeState(Base):
    """One row: the last audit entry the access-notice worker has turned into notices.

    A round reads the position and works out its notices without the lock. To write them
    it locks this row (UPDATE first) and goes on only if the position is still the one it
    read, so an entry becomes at most one notice; the notices and the new position commit
    together, so it becomes at least one. A round with nothing to add moves the position
    with one conditional UPDATE (only from the position it read), committed by itself."""

    __tablename__ = "access_notice_state"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    last_entry_id: Mapped[int] = mapped_column(Position)


class HeldNotice(Base):
    """An access notice held back until its case closes or its maximum delay passes; then
    the worker adds it to the outbox and stamps ``released_at``, in one transaction."""

    __tablename__ = "event_held_notices"
    __table_args__ = (Index("ix_event_held_notices_waiting", "released_at", "disclose_by"),)

    # The audit entry the notice is of: one notice per access.
    entry_id: Mapped[int] = mapped_column(Position, primary_key=True, autoincrement=False)
    citizen_id: Mapped[str] = mapped_column(String(36))
    department: Mapped[str] = mapped_column(String(63))
    case_ref: Mapped[str | None] = mapped_column(String(100))
    fields: Mapped[list[str]] = mapped_column(JSON)
    detail: Mapped[dict[str, Any]] = mapped_column(JSON)
    accessed_at: Mapped[datetime] = mapped_column()
    # The latest it may be held: the access's time plus the agreement's maximum delay.
    disclose_by: Mapped[datetime] = mapped_column()
    released_at: Mapped[datetime | None] = mapped_column(default=None)
