"""Rebuild blind indexes computed with an older normalisation (``tellonce records reindex``).

Each value row records the normalisation version its blind index was computed with. This
decrypts each older row, recomputes its index under the current normalisation and marks
it current, a batch per transaction. It is resumable: an interrupted run leaves finished
batches marked, and the next run starts after them. Plaintext stays in memory only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from service.crypto.aead import decrypt_value
from service.crypto.blind_index import NORMALISATION_VERSION
from service.crypto.keyring import Keyring
from service.db import Database
from service.records import repository
from service.records.validation import NATIONAL_ID_FIELD


@dataclass(frozen=True)
class ReindexResult:
    rebuilt: int
    changed: int
    # Citizens now sharing one national id's index: registered twice under look-alike ids.
    shared: list[list[str]]


async def rebuild_blind_indexes(
    database: Database,
    keyring: Keyring,
    *,
    batch_size: int = 500,
    progress: Callable[[int], None] | None = None,
) -> ReindexResult:
    rebuilt = changed = 0
    after = 0
    while True:
        async with database.engine.begin() as conn:
            rows = await repository.stale_blind_indexes(
                conn, below_version=NORMALISATION_VERSION, after_id=after, limit=batch_size
            )
            if not rows:
                break
            keys = await keyring.data_keys(conn, {row.data_key_id for row in rows})
            for row in rows:
                plaintext = decrypt_value(
                    keys[row.data_key_id],
                    citizen_id=row.citizen_id,
                    field=row.field,
                    version=row.version,
                    ciphertext=row.ciphertext,
                )
                # The canonical plaintext bytes are the text the index was computed over
                # (values.encode and values.normalise_for_index agree for every type).
                index = keyring.blind_index(row.field, plaintext.decode("utf-8"))
                await repository.set_blind_index(conn, row.id, index, NORMALISATION_VERSION)
                changed += row.blind_index != index
            rebuilt += len(rows)
            after = rows[-1].id
        if progress is not None:
            progress(rebuilt)
    async with database.engine.connect() as conn:
        shared = await repository.shared_blind_indexes(conn, NATIONAL_ID_FIELD)
    return ReindexResult(rebuilt=rebuilt, changed=changed, shared=shared)
