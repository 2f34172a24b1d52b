"""Key operations land in the same audit log as every access, in their own transaction.

A key event fires inside the transaction that causes it: a KEK made by a department's
first write or by a rotation, data keys shredded by an erasure, a KEK version retired, a
rotation or re-encryption finished. Its entry is appended on that same connection
(``append_in_transaction``), so the trail holds the key change exactly when the change
committed: a process killed after the commit cannot leave it unaudited, and an entry that
cannot be written rolls the change back (``AuditUnavailable``, 503 through the API).

On PostgreSQL the append takes the audit append lock until the transaction ends; a KEK is
made once per department and rotation, so holding it for the rest of that one transaction
costs the other writers little.
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncConnection

from service.audit.entries import SERVICE_ACTOR, key_event_entry
from service.audit.writer import append_in_transaction
from service.crypto.keyring import KeyEvent


class KeyEventsInTransaction:
    """The key-event hook the audit domain installs on a keyring: each event is appended,
    under ``actor``, in the transaction that caused it. The server's actor is the service;
    a command's is the operator who ran it."""

    def __init__(self, actor: str = SERVICE_ACTOR) -> None:
        self.actor = actor

    async def __call__(self, conn: AsyncConnection, event: KeyEvent) -> None:
        await append_in_transaction(conn, key_event_entry(event, self.actor))
