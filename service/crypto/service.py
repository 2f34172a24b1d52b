"""Key operations that span many rows: rotation, re-encryption, status.

Each batch is its own transaction, so an interrupted run leaves every row consistent
and readable, and running the command again continues where it stopped:
- rotation: rows remember their KEK version; keys still on an older version are left;
- re-encryption: a ``key_jobs`` row remembers which data keys were suspect.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from sqlalchemy import Table, and_, bindparam, exists, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service.catalog import service as catalog_service
from service.catalog.errors import CatalogMissing
from service.crypto.aead import DataKey
from service.crypto.errors import NoDepartmentKeys, UnknownDepartment
from service.crypto.keyring import DATA_KEYS, KEKS, Keyring
from service.crypto.models import KeyJob
from service.db import savepoint, utcnow
from service.records import public as records_public

KEY_JOBS = cast(Table, KeyJob.__table__)
LIVE_KEY = DATA_KEYS.c.wrapped_key.is_not(None)
# What rewrapping and re-encrypting a data key read: which key, whose, under which KEK.
WRAPPED_KEY_COLUMNS = (
    DATA_KEYS.c.id,
    DATA_KEYS.c.citizen_id,
    DATA_KEYS.c.kek_version,
    DATA_KEYS.c.wrapped_key,
)

# Called after each committed batch with (done, total). Raising from it stops the run
# between batches, which is how tests interrupt one.
Progress = Callable[[int, int], None]


def _no_progress(_done: int, _total: int) -> None:
    return None


@dataclass
class RotationResult:
    department: str
    version: int
    resumed: bool
    rewrapped: int
    retired_versions: list[int] = field(default_factory=list)


@dataclass
class ReencryptionResult:
    department: str
    resumed: bool
    data_keys: int
    values: int


@dataclass
class KekVersionStatus:
    version: int
    status: str
    data_keys: int


@dataclass
class DepartmentKeyStatus:
    department: str
    active_version: int | None
    versions: list[KekVersionStatus]
    live_data_keys: int
    destroyed_data_keys: int
    reencryption_pending: bool


async def _active_version(conn: AsyncConnection, department: str) -> int | None:
    return (
        await conn.execute(
            select(KEKS.c.version).where(KEKS.c.department == department, KEKS.c.status == "active")
        )
    ).scalar_one_or_none()


async def _active_kek_that_opens(conn: AsyncConnection, keyring: Keyring, department: str) -> int:
    """The department's active KEK version, once this keyring has opened it.

    Before any department-wide operation writes: with another root key (or token) than
    the database's, a rotation would otherwise commit a new active KEK wrapped under that
    key, and no new data key of the department could be made with the right one again."""
    active = await _active_version(conn, department)
    if active is None:
        # A typo must not mint a KEK for a department that does not exist.
        await _refuse_unknown_department(conn, department)
        raise NoDepartmentKeys(f"department {department!r} has no keys yet")
    await keyring.kek(conn, department, active)  # KeyUnwrapError if it cannot
    return active


async def _refuse_unknown_department(conn: AsyncConnection, department: str) -> None:
    """Raise ``UnknownDepartment`` unless the catalog in force names ``department`` (one
    without keys yet is then only that); the refusal lists the catalog's department ids,
    as ``policies explain`` does, so a typo is seen for one."""
    try:
        catalog = await catalog_service.current_cached(conn)
    except CatalogMissing:
        raise UnknownDepartment(f"unknown department {department!r}: no catalog has been applied") from None
    if catalog.department(department) is None:
        known = ", ".join(sorted(d.id for d in catalog.departments))
        raise UnknownDepartment(f"unknown department {department!r} (departments: {known})")


async def _count_behind(conn: AsyncConnection, department: str, version: int) -> int:
    return (
        await conn.execute(
            select(func.count())
            .select_from(DATA_KEYS)
            .where(DATA_KEYS.c.department == department, DATA_KEYS.c.kek_version < version, LIVE_KEY)
        )
    ).scalar_one()


async def rotate_department(
    engine: AsyncEngine,
    keyring: Keyring,
    department: str,
    *,
    batch_size: int = 1000,
    progress: Progress = _no_progress,
) -> RotationResult:
    """A new KEK version for ``department``, then every data key rewrapped under it.

    If an earlier run was interrupted (keys remain on older versions), or another run made
    the new version first, no new version is made: the run resumes rewrapping to the active
    one. Old versions are retired (their wrapped bytes destroyed) once no data key uses
    them."""
    async with engine.begin() as conn:
        active = await _active_kek_that_opens(conn, keyring, department)
        resumed = await _count_behind(conn, department, active) > 0
        created = None if resumed else await keyring.create_kek_version(conn, department)
        if created is not None:
            target = created
            await keyring.emit(
                conn, "kek.rotated", department, previous_version=active, version=target.version
            )
        else:
            # Resuming, or another rotation made the new version first (two runs at once):
            # finish the rotation to whichever version is active now.
            resumed = True
            now_active = await _active_version(conn, department)
            if now_active is None:
                raise NoDepartmentKeys(f"department {department!r} has no keys yet")
            target = await keyring.kek(conn, department, now_active)
        total = await _count_behind(conn, department, target.version)

    rewrap = (
        update(DATA_KEYS)
        .where(
            DATA_KEYS.c.id == bindparam("b_id"),
            DATA_KEYS.c.kek_version == bindparam("b_old_version"),
            LIVE_KEY,  # never resurrect a key shredded meanwhile
        )
        .values(wrapped_key=bindparam("b_wrapped"), kek_version=target.version)
    )
    done = 0
    last_id = 0
    final_pass = False
    while True:
        async with engine.begin() as conn:
            rows = (
                await conn.execute(
                    select(*WRAPPED_KEY_COLUMNS)
                    .where(
                        DATA_KEYS.c.department == department,
                        DATA_KEYS.c.kek_version < target.version,
                        DATA_KEYS.c.id > last_id,
                        LIVE_KEY,
                    )
                    .order_by(DATA_KEYS.c.id)
                    .limit(batch_size)
                )
            ).all()
            if not rows:
                if final_pass:
                    break
                # One more sweep from the start catches keys written under an old
                # version while this run was going.
                final_pass, last_id = True, 0
                continue
            final_pass = False
            updates = []
            for row in rows:
                old = await keyring.kek(conn, department, row.kek_version)
                material = old.unwrap(row.wrapped_key, row.citizen_id)
                updates.append(
                    {
                        "b_id": row.id,
                        "b_old_version": row.kek_version,
                        "b_wrapped": target.wrap(material, row.citizen_id),
                    }
                )
            await conn.execute(rewrap, updates)
            last_id = rows[-1].id
        done += len(rows)
        progress(done, max(total, done))

    retired = await _retire_unused_versions(engine, keyring, department)
    async with engine.begin() as conn:
        await keyring.emit(
            conn,
            "kek.rewrap_completed",
            department,
            version=target.version,
            rewrapped=done,
            retired_versions=retired,
        )
    return RotationResult(department, target.version, resumed, done, retired)


async def _retire_unused_versions(engine: AsyncEngine, keyring: Keyring, department: str) -> list[int]:
    in_use = exists().where(
        DATA_KEYS.c.department == department, DATA_KEYS.c.kek_version == KEKS.c.version, LIVE_KEY
    )
    async with engine.begin() as conn:
        unused = (
            await conn.execute(
                select(KEKS.c.version, KEKS.c.wrapped_key)
                .where(KEKS.c.department == department, KEKS.c.status == "decrypt_only", ~in_use)
                .with_for_update()
            )
        ).all()
        versions = sorted(row.version for row in unused)
        if versions:
            await conn.execute(
                update(KEKS)
                .where(KEKS.c.department == department, KEKS.c.version.in_(versions))
                .values(status="retired", wrapped_key=None, retired_at=utcnow())
            )
            for version in versions:
                await keyring.emit(conn, "kek.retired", department, version=version)
    # After the commit: a token-held KEK is destroyed in the token too.
    for row in unused:
        if row.wrapped_key is not None:
            await keyring.provider.destroy_kek(row.wrapped_key)
    keyring.kek_cache.evict((department, version) for version in versions)
    return versions


async def reencrypt_department(
    engine: AsyncEngine,
    keyring: Keyring,
    department: str,
    *,
    batch_size: int = 200,
    progress: Progress = _no_progress,
) -> ReencryptionResult:
    """After a suspected compromise: a new data key for every citizen of ``department``,
    every value of theirs re-encrypted (and re-bound to the new key id), then the old
    data keys destroyed. Each batch of citizens is one transaction."""
    async with engine.begin() as conn:
        await _active_kek_that_opens(conn, keyring, department)
        job_id, cutoff, resumed = await _reencryption_job(conn, department)
        suspect = and_(
            DATA_KEYS.c.department == department,
            DATA_KEYS.c.status == "active",
            DATA_KEYS.c.id <= cutoff,
        )
        total = (await conn.execute(select(func.count()).select_from(DATA_KEYS).where(suspect))).scalar_one()

    keys_done = 0
    values_done = 0
    while True:
        async with engine.begin() as conn:
            batch = (
                await conn.execute(
                    select(DATA_KEYS.c.id)
                    .where(suspect)
                    .order_by(DATA_KEYS.c.id)
                    .limit(batch_size)
                    .with_for_update()
                )
            ).scalars()
            batch_ids = list(batch)
            if not batch_ids:
                break
            # Claim the batch before reading its keys: on SQLite this first write takes the
            # lock, so what is read is current, and keys another run re-encrypted since the
            # select above are no longer active and left to it. (PostgreSQL: locked above.)
            # Setting them aside also frees the (citizen, department) slot for the new key.
            rows = (
                await conn.execute(
                    update(DATA_KEYS)
                    .where(DATA_KEYS.c.id.in_(batch_ids), DATA_KEYS.c.status == "active")
                    .values(status="replaced")
                    .returning(*WRAPPED_KEY_COLUMNS)
                )
            ).all()
            if not rows:
                continue
            values_done += await _reencrypt_batch(conn, keyring, department, rows)
            await conn.execute(
                update(KEY_JOBS)
                .where(KEY_JOBS.c.id == job_id)
                .values(processed=KEY_JOBS.c.processed + len(rows))
            )
        keyring.data_key_cache.evict(row.id for row in rows)
        keys_done += len(rows)
        progress(keys_done, max(total, keys_done))

    async with engine.begin() as conn:
        await conn.execute(update(KEY_JOBS).where(KEY_JOBS.c.id == job_id).values(finished_at=utcnow()))
        await keyring.emit(conn, "data_keys.reencrypted", department, data_keys=keys_done, values=values_done)
    return ReencryptionResult(department, resumed, keys_done, values_done)


async def _reencryption_job(conn: AsyncConnection, department: str) -> tuple[int, int, bool]:
    """The department's unfinished re-encryption (id, cutoff, resumed), begun if none is:
    a run started at the same time as another joins the job the other began."""
    unfinished = select(KEY_JOBS.c.id, KEY_JOBS.c.cutoff_data_key_id).where(
        KEY_JOBS.c.department == department,
        KEY_JOBS.c.kind == "reencrypt",
        KEY_JOBS.c.finished_at.is_(None),
    )
    job = (await conn.execute(unfinished)).first()
    if job is not None:
        return job.id, job.cutoff_data_key_id, True
    cutoff = (await conn.execute(select(func.coalesce(func.max(DATA_KEYS.c.id), 0)))).scalar_one()
    try:
        async with savepoint(conn):
            job_id = (
                await conn.execute(
                    insert(KEY_JOBS)
                    .values(
                        department=department,
                        kind="reencrypt",
                        cutoff_data_key_id=cutoff,
                        processed=0,
                        started_at=utcnow(),
                    )
                    .returning(KEY_JOBS.c.id)
                )
            ).scalar_one()
    except IntegrityError:  # the other run's job (one unfinished per department)
        job = (await conn.execute(unfinished)).one()
        return job.id, job.cutoff_data_key_id, True
    return job_id, cutoff, False


async def _reencrypt_batch(
    conn: AsyncConnection, keyring: Keyring, department: str, rows: Sequence[Any]
) -> int:
    """Re-encrypt the values under the keys ``rows`` (claimed: set aside as ``replaced``)."""
    old_keys: dict[int, DataKey] = {}
    for row in rows:
        kek = await keyring.kek(conn, department, row.kek_version)
        old_keys[row.id] = DataKey(
            row.id, department, row.kek_version, kek.unwrap(row.wrapped_key, row.citizen_id)
        )
    old_ids = list(old_keys)
    fresh = await keyring.new_data_keys(conn, [(row.citizen_id, department) for row in rows])
    replacements = {row.id: (old_keys[row.id], fresh[(row.citizen_id, department)]) for row in rows}
    moved = await records_public.rebind_values(conn, replacements)
    now = utcnow()
    await conn.execute(
        update(DATA_KEYS)
        .where(DATA_KEYS.c.id.in_(old_ids))
        .values(wrapped_key=None, status="destroyed", destroyed_at=now)
    )
    for key in fresh.values():
        keyring.data_key_cache.put(key.id, key)
    return moved


async def key_status(conn: AsyncConnection) -> list[DepartmentKeyStatus]:
    """KEK versions and data-key counts per department."""
    keks = (
        await conn.execute(
            select(KEKS.c.department, KEKS.c.version, KEKS.c.status).order_by(
                KEKS.c.department, KEKS.c.version
            )
        )
    ).all()
    counts = (
        await conn.execute(
            select(
                DATA_KEYS.c.department,
                DATA_KEYS.c.kek_version,
                LIVE_KEY.label("live"),
                func.count().label("n"),
            ).group_by(DATA_KEYS.c.department, DATA_KEYS.c.kek_version, LIVE_KEY)
        )
    ).all()
    pending = set(
        (await conn.execute(select(KEY_JOBS.c.department).where(KEY_JOBS.c.finished_at.is_(None)))).scalars()
    )
    live: dict[tuple[str, int], int] = {}
    destroyed: dict[str, int] = {}
    for row in counts:
        if row.live:
            live[(row.department, row.kek_version)] = row.n
        else:
            destroyed[row.department] = destroyed.get(row.department, 0) + row.n
    statuses: dict[str, DepartmentKeyStatus] = {}
    for kek in keks:
        status = statuses.setdefault(
            kek.department,
            DepartmentKeyStatus(
                kek.department, None, [], 0, destroyed.get(kek.department, 0), kek.department in pending
            ),
        )
        count = live.get((kek.department, kek.version), 0)
        status.versions.append(KekVersionStatus(kek.version, kek.status, count))
        status.live_data_keys += count
        if kek.status == "active":
            status.active_version = kek.version
    return [statuses[name] for name in sorted(statuses)]
