"""What the records domain offers other domains, so that none touches its tables.

- ``citizen_statuses``: citizens' statuses in clear (events re-checks policy at delivery,
  audit answers a citizen's access log only for a known citizen). No field is read.
- ``rebind_values``: move every value under some data keys to their replacements (crypto's
  re-encryption after a compromise). Values are decrypted and encrypted again in memory;
  plaintext never leaves this function.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from service.crypto.aead import DataKey, decrypt_value, encrypt_value
from service.records import repository


async def citizen_statuses(db: AsyncConnection | AsyncSession, citizen_ids: Sequence[str]) -> dict[str, str]:
    """Each citizen's status (``active``, ``deceased`` or ``erased``); an id not in the
    register is absent."""
    if not citizen_ids:
        return {}
    citizens = repository.citizens
    result = await db.execute(
        select(citizens.c.id, citizens.c.status).where(citizens.c.id.in_(sorted(set(citizen_ids))))
    )
    return {row.id: row.status for row in result}


async def rebind_values(conn: AsyncConnection, replacements: Mapping[int, tuple[DataKey, DataKey]]) -> int:
    """Re-encrypt every value under an old data key with its new one, in the caller's
    transaction; ``replacements`` maps an old key's id to (old key, new key). Returns how
    many values moved. The associated data (citizen, field, version) stays the same, and
    the key id in it becomes the new key's."""
    if not replacements:
        return 0
    rows = await repository.values_under_data_keys(conn, list(replacements))
    changes: list[tuple[int, int, int, bytes]] = []
    for row in rows:
        old_key, new_key = replacements[row.data_key_id]
        citizen_id, field, version = row.citizen_id, row.field, row.version
        plaintext = decrypt_value(
            old_key, citizen_id=citizen_id, field=field, version=version, ciphertext=row.ciphertext
        )
        ciphertext = encrypt_value(
            new_key, citizen_id=citizen_id, field=field, version=version, plaintext=plaintext
        )
        changes.append((row.id, row.data_key_id, new_key.id, ciphertext))
    if changes:
        await repository.rebind(conn, changes)
    return len(changes)
