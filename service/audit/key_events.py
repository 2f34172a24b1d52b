"""Key operations land in the same audit log as every access.

Key events fire inside the transactions that cause them (a KEK made by a first write,
keys shredded by an erasure). Appending through the batched writer there would wait on
the very lock that transaction holds on SQLite, so they are queued and appended just
after: through the writer in the server, in one transaction of their own in the CLI.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from service.audit.entries import key_event_entry
from service.audit.writer import AuditWriter, append_many_in_transaction
from service.crypto.keyring import KeyEvent

logger = logging.getLogger("tellonce.audit.key_events")


class KeyEventsToWriter:
    """The server's key-event hook: each event is appended through the batched writer
    right after the operation, on a task of its own."""

    def __init__(self, writer: AuditWriter) -> None:
        self.writer = writer
        self.pending: set[asyncio.Task[Any]] = set()

    async def __call__(self, event: KeyEvent) -> None:
        task = asyncio.get_running_loop().create_task(self._append(event))
        self.pending.add(task)
        task.add_done_callback(self.pending.discard)

    async def _append(self, event: KeyEvent) -> None:
        try:
            await self.writer.append(key_event_entry(event))
        except Exception:
            logger.exception("a key operation could not be audited", extra={"action": event.action})

    async def drain(self) -> None:
        if self.pending:
            await asyncio.gather(*self.pending, return_exceptions=True)


class KeyEventsCollected:
    """The CLI's key-event hook: events are kept, then appended in one transaction under
    the operator who ran the command."""

    def __init__(self, actor: str) -> None:
        self.actor = actor
        self.events: list[KeyEvent] = []

    async def __call__(self, event: KeyEvent) -> None:
        self.events.append(event)

    async def flush(self, engine: AsyncEngine) -> int:
        events: Sequence[KeyEvent] = list(self.events)
        self.events.clear()
        if events:
            async with engine.begin() as conn:
                await append_many_in_transaction(
                    conn, [key_event_entry(event, self.actor) for event in events]
                )
        return len(events)
