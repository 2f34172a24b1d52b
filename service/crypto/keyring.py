"""The keyring: department KEKs and citizens' data keys, unwrapped on demand and cached.

Methods take an ``AsyncConnection`` so they run inside the caller's transaction, whether
that is an ORM session's connection or a long-lived Core connection on the hot path.

Hierarchy: the provider's root key wraps each department's KEK versions; a KEK wraps the
data key of each (citizen, department); a data key encrypts that citizen's values.
Data keys are made only here (``data_key_for_write``, ``new_data_keys``, and
``data_keys_ahead`` for a bulk import: ids guessed on SQLite, drawn from the sequence on
PostgreSQL with ``draw_data_key_ids``).

Over 400 lines for a reason: KEKs and data keys share the unwrap cache, the provider and
the key-event hook, and each half needs the other's internals.
"""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

from fastapi import Request
from sqlalchemy import (
    Connection,
    LargeBinary,
    String,
    Table,
    func,
    insert,
    literal,
    select,
    text,
    update,
)
from sqlalchemy import event as sqlalchemy_events
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from service import bulk
from service.config import Settings
from service.crypto.aead import DataKey
from service.crypto.cache import Clock, TTLCache
from service.crypto.errors import (
    CitizenShredded,
    CryptoError,
    DataKeyDestroyed,
    DataKeyMissing,
    KeyUnwrapError,
)
from service.crypto.material import KeyMaterial
from service.crypto.models import DataKeyRecord, KeyEncryptionKey
from service.crypto.providers import (  # the KEK pieces, re-exported where callers look
    DepartmentKek,
    Kek,
    KeyProvider,
    data_key_context,
    kek_context,
    provider_from_settings,
)
from service.db import UTCDateTime, savepoint, utcnow

logger = logging.getLogger("tellonce.crypto")
__all__ = ["DataKeysAhead", "DepartmentKek", "Kek", "KeyEvent", "Keyring", "data_key_context", "kek_context"]

KEKS = cast(Table, KeyEncryptionKey.__table__)
DATA_KEYS = cast(Table, DataKeyRecord.__table__)


@dataclass(frozen=True)
class KeyEvent:
    """A key operation, for the audit trail. ``detail`` never holds key bytes or values."""

    action: str
    department: str | None
    detail: Mapping[str, Any] = field(default_factory=dict)


# Called with the connection whose transaction made the change, so the audit domain can
# record the event in that same transaction.
KeyEventHook = Callable[[AsyncConnection, KeyEvent], Awaitable[None]]


@dataclass(frozen=True)
class DataKeysAhead:
    """Fresh data keys made before their transaction under ids known or guessed in
    advance (``Keyring.data_keys_ahead``): ``keys`` to encrypt with now, ``rows`` to insert
    once ``Keyring.data_keys_ahead_hold`` finds them still good. ``keys`` is empty in a
    copy sent between processes (``without_material``): a data key is never pickled."""

    department: str
    kek_version: int
    ids: list[int]
    keys: list[DataKey]
    rows: list[tuple[Any, ...]]

    @property
    def next_id(self) -> int:
        """SQLite: the id after these keys' (their ids are consecutive there)."""
        return self.ids[-1] + 1

    def without_material(self) -> DataKeysAhead:
        """The same keys with only their wrapped form, for the process that stores them."""
        return DataKeysAhead(self.department, self.kek_version, self.ids, [], self.rows)


async def log_key_event(_conn: AsyncConnection, event: KeyEvent) -> None:
    """The default hook until the audit domain connects: a structured log line."""
    logger.info(
        "key operation", extra={"action": event.action, "department": event.department, **event.detail}
    )


class Keyring:
    """The keys one process uses. Lives on ``app.state.keyring``.

    ``data_keys`` RAISES ``DataKeyDestroyed`` (an HTTP 410 ``Gone``) when any asked-for key
    was shredded: a destroyed key is never silently left out. Shredding evicts the key from
    this process's cache at once and keeps it out (a read that loaded it before the erasure
    committed does not put it back); other processes drop it within ``cache_ttl_seconds``
    (records also refuses erased citizens by their status).

    A key made in a transaction is cached at once (the transaction reads it back), and
    forgotten if that transaction, or a savepoint in it, rolls back (``_made_in``): its id
    or KEK version may be given to another key next, which must not be answered with it.
    """

    def __init__(
        self,
        provider: KeyProvider,
        *,
        cache_size: int = 10_000,
        cache_ttl_seconds: float = 300.0,
        clock: Clock = time.monotonic,
    ) -> None:
        self.provider = provider
        self.data_key_cache: TTLCache[int, DataKey] = TTLCache(cache_size, cache_ttl_seconds, clock)
        self.kek_cache: TTLCache[tuple[str, int], Kek] = TTLCache(256, cache_ttl_seconds, clock)
        # Data keys shredded here lately: a read that loaded one from the committed state
        # before the erasure committed must not put it back into the cache afterwards.
        self._shredded: TTLCache[int, bool] = TTLCache(cache_size, cache_ttl_seconds, clock)
        # Per open connection: the data-key ids and KEK versions made in its transaction,
        # until it commits; evicted from the caches if it rolls back.
        self._made: weakref.WeakKeyDictionary[Connection, tuple[set[int], set[tuple[str, int]]]] = (
            weakref.WeakKeyDictionary()
        )
        self._blind_indexer = provider.blind_indexer()
        # The one hook for key operations; the audit domain replaces it with one that
        # appends each event in the transaction that made it.
        self.on_key_event: KeyEventHook = log_key_event

    @classmethod
    def from_settings(cls, settings: Settings, **options: Any) -> Keyring:
        return cls(provider_from_settings(settings), **options)

    def __repr__(self) -> str:
        return f"Keyring(provider={self.provider.name!r}, data_keys_cached={len(self.data_key_cache)})"

    def _made_in(
        self, conn: AsyncConnection, key_ids: Iterable[int] = (), kek: tuple[str, int] | None = None
    ) -> None:
        """Note keys made in ``conn``'s transaction: until it commits, a rollback (of it or
        of a savepoint in it) evicts them from the caches, however they got there."""
        sync = conn.sync_connection
        if sync is None:
            return
        made = self._made.get(sync)
        if made is None:
            made = self._made[sync] = (set(), set())
            sqlalchemy_events.listen(sync, "commit", self._kept)
            sqlalchemy_events.listen(sync, "rollback", self._undone)
            sqlalchemy_events.listen(sync, "rollback_savepoint", self._undone_to_savepoint)
        made[0].update(key_ids)
        if kek is not None:
            made[1].add(kek)

    def _kept(self, sync: Connection) -> None:
        made = self._made.get(sync)
        if made is not None:
            made[0].clear()
            made[1].clear()

    def _undone(self, sync: Connection) -> None:
        self._evict_made(sync)
        self._kept(sync)

    def _undone_to_savepoint(self, sync: Connection, _name: Any, _context: Any) -> None:
        # Evicted, and still noted: read back later in the transaction, they are cached
        # again, and a rollback of the whole of it must evict them again.
        self._evict_made(sync)

    def _evict_made(self, sync: Connection) -> None:
        """Evict from both caches the keys made in ``sync``'s transaction so far."""
        made = self._made.get(sync)
        if made is not None:
            self.data_key_cache.evict(made[0])
            self.kek_cache.evict(made[1])

    async def emit(self, conn: AsyncConnection, action: str, department: str | None, **detail: Any) -> None:
        """A key operation made in ``conn``'s transaction, to ``on_key_event``."""
        await self.on_key_event(conn, KeyEvent(action, department, detail))

    # ---- blind index -------------------------------------------------------------------

    def blind_index(self, field: str, value: str) -> bytes:
        """16-byte HMAC-SHA256 of the normalised value under the field's own derived key."""
        return self._blind_indexer.index(field, value)

    # ---- KEKs --------------------------------------------------------------------------

    async def kek(self, conn: AsyncConnection, department: str, version: int) -> Kek:
        """A department KEK version, unwrapped through the provider (cached)."""
        cached = self.kek_cache.get((department, version))
        if cached is not None:
            return cached
        row = (
            await conn.execute(
                select(KEKS.c.wrapped_key, KEKS.c.provider).where(
                    KEKS.c.department == department, KEKS.c.version == version
                )
            )
        ).first()
        if row is None or row.wrapped_key is None:
            raise KeyUnwrapError("a KEK version is missing or retired")
        if row.provider != self.provider.name:
            raise KeyUnwrapError(f"this KEK is held by the {row.provider!r} key provider")
        kek = await self.provider.open_kek(department, version, row.wrapped_key)
        self.kek_cache.put((department, version), kek)
        return kek

    async def active_kek(self, conn: AsyncConnection, department: str) -> Kek:
        """The department's active KEK; version 1 is created on the department's first use."""
        for _attempt in range(5):
            # FOR SHARE (PostgreSQL): a rotation waits for writers wrapping under this version.
            version = (
                await conn.execute(
                    select(KEKS.c.version)
                    .where(KEKS.c.department == department, KEKS.c.status == "active")
                    .with_for_update(read=True)
                )
            ).scalar_one_or_none()
            if version is not None:
                return await self.kek(conn, department, version)
            created = await self.create_kek_version(conn, department, first=True)
            if created is not None:
                return created
        raise CryptoError("the department's active KEK could not be settled")

    async def create_kek_version(
        self, conn: AsyncConnection, department: str, *, first: bool = False
    ) -> Kek | None:
        """A new active KEK version; the previous active one becomes decrypt-only.

        Returns None when another process won the race (the caller reads again)."""
        latest = (
            await conn.execute(select(func.max(KEKS.c.version)).where(KEKS.c.department == department))
        ).scalar_one()
        if first and latest is not None:
            return None
        version = (latest or 0) + 1
        wrapped, kek = await self.provider.create_kek(department, version)
        try:
            async with savepoint(conn):
                await conn.execute(
                    update(KEKS)
                    .where(KEKS.c.department == department, KEKS.c.status == "active")
                    .values(status="decrypt_only")
                )
                await conn.execute(
                    insert(KEKS).values(
                        department=department,
                        version=version,
                        status="active",
                        provider=self.provider.name,
                        wrapped_key=wrapped,
                        created_at=utcnow(),
                    )
                )
        except IntegrityError:
            await self.provider.destroy_kek(wrapped)
            return None
        self._made_in(conn, kek=(department, version))
        self.kek_cache.put((department, version), kek)
        await self.emit(conn, "kek.created", department, version=version, provider=self.provider.name)
        return kek

    # ---- data keys ---------------------------------------------------------------------

    async def data_key_for_write(self, conn: AsyncConnection, citizen_id: str, department: str) -> DataKey:
        """The citizen's data key for ``department``, made (under the active KEK) if new.

        Raises ``CitizenShredded`` for a citizen whose keys were shredded."""
        for _attempt in range(5):
            row = (
                await conn.execute(
                    select(DATA_KEYS.c.id, DATA_KEYS.c.kek_version, DATA_KEYS.c.wrapped_key)
                    .where(
                        DATA_KEYS.c.citizen_id == citizen_id,
                        DATA_KEYS.c.department == department,
                        DATA_KEYS.c.status == "active",
                    )
                    .with_for_update(read=True)
                )
            ).first()
            if row is not None:
                cached = self.data_key_cache.get(row.id)
                if cached is not None:
                    return cached
                kek = await self.kek(conn, department, row.kek_version)
                key = DataKey(row.id, department, row.kek_version, kek.unwrap(row.wrapped_key, citizen_id))
                self._cache_data_key(key)
                return key
            created = await self._create_data_key(conn, citizen_id, department)
            if created is not None:
                return created
        raise CryptoError("the citizen's data key could not be settled")

    async def _create_data_key(
        self, conn: AsyncConnection, citizen_id: str, department: str
    ) -> DataKey | None:
        shredded = (
            await conn.execute(
                select(DATA_KEYS.c.id)
                .where(DATA_KEYS.c.citizen_id == citizen_id, DATA_KEYS.c.status == "shredded")
                .limit(1)
            )
        ).first()
        if shredded is not None:
            raise CitizenShredded()
        kek = await self.active_kek(conn, department)
        material = KeyMaterial(DataKey.generate_material())
        wrapped = kek.wrap(material, citizen_id)
        # Insert only while that KEK version is still active: a rotation that committed
        # in between makes this insert a no-op and the loop wraps under the new version.
        still_active = (
            select(
                literal(citizen_id, String()),
                literal(department, String()),
                KEKS.c.version,
                literal("active", String()),
                literal(wrapped, LargeBinary()),
                literal(utcnow(), UTCDateTime()),
            )
            .where(KEKS.c.department == department, KEKS.c.version == kek.version, KEKS.c.status == "active")
            .with_for_update(read=True)
        )
        try:
            async with savepoint(conn):
                key_id = (
                    await conn.execute(
                        insert(DATA_KEYS)
                        .from_select(
                            [
                                "citizen_id",
                                "department",
                                "kek_version",
                                "status",
                                "wrapped_key",
                                "created_at",
                            ],
                            still_active,
                        )
                        .returning(DATA_KEYS.c.id)
                    )
                ).scalar_one_or_none()
        except IntegrityError:
            return None  # another writer made the key first; read theirs
        if key_id is None:
            return None
        self._made_in(conn, [key_id])
        key = DataKey(key_id, department, kek.version, material)
        self._cache_data_key(key)
        return key

    async def new_data_keys(
        self, conn: AsyncConnection, pairs: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], DataKey]:
        """Fresh active data keys for (citizen, department) pairs that have none active
        (citizens created in this transaction, or whose old key was just set aside), each
        wrapped by its department's active KEK.

        The bulk form of ``data_key_for_write``: one insert for the whole batch."""
        keks = {department: await self.active_kek(conn, department) for department in {d for _c, d in pairs}}
        materials = [KeyMaterial(DataKey.generate_material()) for _ in pairs]
        created_at = utcnow()
        key_ids = await bulk.insert_rows_returning_ids(
            conn,
            DATA_KEYS,
            ("citizen_id", "department", "kek_version", "status", "wrapped_key", "created_at"),
            [
                (
                    citizen_id,
                    department,
                    keks[department].version,
                    "active",
                    keks[department].wrap(material, citizen_id),
                    created_at,
                )
                for (citizen_id, department), material in zip(pairs, materials, strict=True)
            ],
        )
        self._made_in(conn, key_ids)
        return {
            pair: DataKey(key_id, pair[1], keks[pair[1]].version, material)
            for pair, key_id, material in zip(pairs, key_ids, materials, strict=True)
        }

    def data_keys_ahead(
        self, kek: Kek, citizen_ids: Sequence[str], key_ids: Sequence[int], created_at: datetime
    ) -> DataKeysAhead:
        """New active data keys of ``kek``'s department for citizens about to be
        registered, with the ids ``key_ids`` (one per citizen, in order), made without the
        database, so a bulk import prepares one batch (in a worker process) while the
        batch before it is written.

        The ids: on SQLite a guess of the next ones (a key's id is ``max(id) + 1`` under the
        one write lock), checked by ``data_keys_ahead_hold``; on PostgreSQL drawn from the
        sequence beforehand (``draw_data_key_ids``), so no other key can have them."""
        if len(key_ids) < len(citizen_ids):
            raise ValueError("a data key id is needed for every citizen")
        keys: list[DataKey] = []
        rows: list[tuple[Any, ...]] = []
        for key_id, citizen_id in zip(key_ids, citizen_ids, strict=False):
            material = KeyMaterial(DataKey.generate_material())
            keys.append(DataKey(key_id, kek.department, kek.version, material))
            rows.append(
                (
                    key_id,
                    citizen_id,
                    kek.department,
                    kek.version,
                    "active",
                    kek.wrap(material, citizen_id),
                    created_at,
                )
            )
        ids = list(key_ids[: len(citizen_ids)])
        return DataKeysAhead(kek.department, kek.version, ids, keys, rows)

    async def data_keys_ahead_hold(self, conn: AsyncConnection, ahead: DataKeysAhead) -> bool:
        """Whether keys made ahead can be stored as they are in the transaction on
        ``conn``: their KEK version is still the department's active one (PostgreSQL: held
        FOR SHARE until commit, so a rotation waits) and, on SQLite, where the transaction
        holds the write lock, their ids are the next ones. If not, the caller makes them
        afresh."""
        kek = await self.active_kek(conn, ahead.department)
        if kek.version != ahead.kek_version:
            return False
        if conn.dialect.name != "sqlite":
            return True
        next_id = await self.next_data_key_id(conn)
        return ahead.ids == list(range(next_id, next_id + len(ahead.ids)))

    @staticmethod
    async def draw_data_key_ids(conn: AsyncConnection, count: int) -> list[int]:
        """PostgreSQL: ``count`` data-key ids drawn from the table's sequence, in order, for
        ``data_keys_ahead``. An id drawn and never used leaves a gap, as a rolled-back
        insert does."""
        return await bulk.draw_ids(conn, DATA_KEYS, count)

    async def store_data_keys_ahead(self, conn: AsyncConnection, ahead: DataKeysAhead) -> None:
        """Insert keys that ``data_keys_ahead_hold`` accepted in this transaction."""
        self._made_in(conn, ahead.ids)
        await bulk.insert_rows(
            conn,
            DATA_KEYS,
            ("id", "citizen_id", "department", "kek_version", "status", "wrapped_key", "created_at"),
            ahead.rows,
        )

    @staticmethod
    async def next_data_key_id(conn: AsyncConnection) -> int:
        """SQLite: the id the next data key gets (exact while the transaction holds the
        write lock, a guess otherwise)."""
        last = (await conn.execute(select(func.max(DATA_KEYS.c.id)))).scalar_one_or_none()
        return int(last or 0) + 1

    async def data_keys_for_write_many(
        self, conn: AsyncConnection, citizen_ids: Sequence[str], department: str
    ) -> dict[str, DataKey]:
        """``data_key_for_write`` for many citizens of one department (a bulk import):
        their active keys in one query per 500 citizens, and one insert for those who have
        none.

        Raises ``CitizenShredded`` if any of them had their keys shredded."""
        wanted = list(dict.fromkeys(citizen_ids))
        found: dict[str, DataKey] = {}
        for start in range(0, len(wanted), 500):
            rows = await conn.execute(
                select(
                    DATA_KEYS.c.id, DATA_KEYS.c.citizen_id, DATA_KEYS.c.kek_version, DATA_KEYS.c.wrapped_key
                )
                .where(
                    DATA_KEYS.c.citizen_id.in_(wanted[start : start + 500]),
                    DATA_KEYS.c.department == department,
                    DATA_KEYS.c.status == "active",
                )
                .with_for_update(read=True)
            )
            for row in rows:
                key = self.data_key_cache.get(row.id)
                if key is None:
                    kek = await self.kek(conn, department, row.kek_version)
                    key = DataKey(
                        row.id, department, row.kek_version, kek.unwrap(row.wrapped_key, row.citizen_id)
                    )
                    self._cache_data_key(key)
                found[row.citizen_id] = key
        missing = [citizen_id for citizen_id in wanted if citizen_id not in found]
        if missing:
            shredded = (
                await conn.execute(
                    select(DATA_KEYS.c.id)
                    .where(DATA_KEYS.c.citizen_id.in_(missing), DATA_KEYS.c.status == "shredded")
                    .limit(1)
                )
            ).first()
            if shredded is not None:
                raise CitizenShredded()
            created = await self.new_data_keys(conn, [(citizen_id, department) for citizen_id in missing])
            found.update({citizen_id: key for (citizen_id, _d), key in created.items()})
        return found

    async def data_keys(self, conn: AsyncConnection, key_ids: Iterable[int]) -> dict[int, DataKey]:
        """Unwrapped data keys by id, through the cache. Raises ``DataKeyDestroyed`` if any
        was shredded or destroyed, ``DataKeyMissing`` if any id does not exist."""
        found: dict[int, DataKey] = {}
        missing: list[int] = []
        for key_id in set(key_ids):
            cached = self.data_key_cache.get(key_id)
            if cached is None:
                missing.append(key_id)
            else:
                found[key_id] = cached
        if not missing:
            return found
        rows = (
            await conn.execute(
                select(
                    DATA_KEYS.c.id,
                    DATA_KEYS.c.citizen_id,
                    DATA_KEYS.c.department,
                    DATA_KEYS.c.kek_version,
                    DATA_KEYS.c.wrapped_key,
                ).where(DATA_KEYS.c.id.in_(missing))
            )
        ).all()
        if len(rows) != len(missing):
            raise DataKeyMissing("a value names a data key that does not exist")
        destroyed = sorted(row.id for row in rows if row.wrapped_key is None)
        if destroyed:
            raise DataKeyDestroyed(destroyed)
        for row in rows:
            kek = await self.kek(conn, row.department, row.kek_version)
            key = DataKey(
                row.id, row.department, row.kek_version, kek.unwrap(row.wrapped_key, row.citizen_id)
            )
            self._cache_data_key(key)
            found[key.id] = key
        return found

    def _cache_data_key(self, key: DataKey) -> None:
        if self._shredded.get(key.id) is None:
            self.data_key_cache.put(key.id, key)

    async def shred_citizen(self, conn: AsyncConnection, citizen_id: str) -> int:
        """Crypto-shredding: destroy every data key of the citizen. Returns how many.

        The wrapped bytes are overwritten with NULL (SQLite's secure_delete zeroes the
        freed cells), the rows are marked ``shredded``, and the keys leave the cache for good.
        A key event per department goes to ``on_key_event`` in the caller's transaction
        (an erasure's), so it is recorded only if the erasure commits.

        Destroys until a fresh look finds no live key. On PostgreSQL a re-encryption batch
        may hold the citizen's key (about to be set aside) while it inserts the new one:
        the destroying update waits for that batch, and once it commits the next look
        (a statement of its own, so a snapshot of its own) sees the new key. Every key
        destroyed here stays locked until the erasure commits, so no later batch can claim
        one and make another."""
        if conn.dialect.name == "sqlite":
            await conn.execute(text("PRAGMA secure_delete = ON"))
        per_department: dict[str, int] = {}
        live = (DATA_KEYS.c.citizen_id == citizen_id, DATA_KEYS.c.status.in_(("active", "replaced")))
        while (await conn.execute(select(DATA_KEYS.c.id).where(*live).limit(1))).first() is not None:
            # A row a batch holds is checked again once the batch commits: a key the batch
            # destroyed is left as it is, and its new key is found by the next look.
            rows = (
                await conn.execute(
                    update(DATA_KEYS)
                    .where(*live)
                    .values(wrapped_key=None, status="shredded", destroyed_at=utcnow())
                    .returning(DATA_KEYS.c.id, DATA_KEYS.c.department)
                )
            ).all()
            for row in rows:
                self._shredded.put(row.id, True)
                per_department[row.department] = per_department.get(row.department, 0) + 1
            self.data_key_cache.evict(row.id for row in rows)
        for department, count in sorted(per_department.items()):
            await self.emit(conn, "data_keys.shredded", department, citizen_id=citizen_id, count=count)
        return sum(per_department.values())


async def get_keyring(request: Request) -> Keyring:
    keyring: Keyring = request.app.state.keyring
    return keyring
