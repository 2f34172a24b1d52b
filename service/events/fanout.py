"""Fan-out, the dispatcher's step after the access notices: outbox events -> pending
deliveries. A subscription to field changes gets the changes to its fields; one to
access notices gets every notice."""

from __future__ import annotations

import uuid

from sqlalchemy.ext.asyncio import AsyncConnection

from service.db import utcnow
from service.events import repository
from service.events.service import tells

# Events fanned out per subscription per cycle, so one transaction stays short.
FANOUT_BATCH = 1000


async def fan_out(conn: AsyncConnection) -> int:
    """Turn the outbox events of each webhook subscription's type after its
    ``fanout_position`` (for field changes: those that touch its fields) into ``pending``
    deliveries, in the caller's transaction; return how
    many were created. At most ``FANOUT_BATCH`` events per subscription per call."""
    created = 0
    now = utcnow()
    head = await repository.head_position(conn)
    subscriptions = await repository.webhook_subscriptions_to_fan_out(conn, head)
    for subscription in subscriptions:
        rows = await repository.events_after(
            conn, subscription.fanout_position, FANOUT_BATCH, type=subscription.type
        )
        # Fewer than a batch: every event of its type up to ``head`` is here, so the
        # subscription moves to ``head`` (past the other type's events too).
        reached = rows[-1].position if len(rows) == FANOUT_BATCH else head
        rows = [row for row in rows if row.position <= head]
        deliveries = [
            {
                "id": str(uuid.uuid4()),
                "subscription_id": subscription.id,
                "event_position": row.position,
                "status": "pending",
                "attempts": 0,
                "next_attempt_at": now,
                "created_at": now,
            }
            for row in rows
            if tells(subscription, row)
        ]
        await repository.insert_deliveries(conn, deliveries)
        await repository.set_fanout_position(conn, subscription.id, min(reached, head))
        created += len(deliveries)
    return created
