"""Fan-out, the dispatcher's first step: outbox events -> pending deliveries."""

from __future__ import annotations

import uuid

from sqlalchemy.ext.asyncio import AsyncConnection

from service.db import utcnow
from service.events import repository

# Events fanned out per subscription per cycle, so one transaction stays short.
FANOUT_BATCH = 1000


async def fan_out(conn: AsyncConnection) -> int:
    """Turn the outbox events after each webhook subscription's ``fanout_position`` that
    touch its fields into ``pending`` deliveries, in the caller's transaction; return how
    many were created. At most ``FANOUT_BATCH`` events per subscription per call."""
    created = 0
    now = utcnow()
    head = await repository.head_position(conn)
    subscriptions = await repository.webhook_subscriptions_to_fan_out(conn, head)
    for subscription in subscriptions:
        wanted = set(subscription.fields)
        rows = await repository.events_after(conn, subscription.fanout_position, FANOUT_BATCH)
        rows = [row for row in rows if row.position <= head]
        if not rows:
            continue
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
            if wanted.intersection(row.fields)
        ]
        await repository.insert_deliveries(conn, deliveries)
        await repository.set_fanout_position(conn, subscription.id, rows[-1].position)
        created += len(deliveries)
    return created
