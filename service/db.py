"""Engine, sessions and the one declarative ``Base`` for every model.

SQLite gets WAL, foreign keys and a busy timeout on every connection; PostgreSQL goes
through asyncpg. A request holds one session: the dependency commits when the handler
returns and rolls back when it raises. Services ``flush()``, never ``commit()``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, ClassVar

from fastapi import Depends, Request
from sqlalchemy import DateTime, MetaData, event
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.types import TypeDecorator

from service.config import Settings

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp that is always timezone-aware UTC, on SQLite as on PostgreSQL."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:  # noqa: ARG002
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are not stored; use datetime.now(UTC)")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:  # noqa: ARG002
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: UTCDateTime()}


def utcnow() -> datetime:
    return datetime.now(UTC)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=10000")
    # FULL: a commit is on disk before it returns, which the audit's
    # "durable before release" promise depends on. Group commit pays for it.
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.close()


def ensure_sqlite_dir(url: str) -> None:
    """Create the folder of a file-backed SQLite URL, so a fresh checkout just works, and
    the database file readable by its owner only (0600, like the key files).

    SQLite creates the ``-wal`` and ``-shm`` files with the database file's mode, so those
    follow; files left 0644 by an older version are tightened here too."""
    prefix = "sqlite+aiosqlite:///"
    if url.startswith(prefix):
        path = url[len(prefix) :].split("?", 1)[0]
        if path and path != ":memory:" and not path.startswith("file:"):
            database = Path(path)
            database.parent.mkdir(parents=True, exist_ok=True)
            # Never open an existing database file here: closing any descriptor of a file drops
            # every POSIX lock this process holds on it, so a second engine made while the first
            # holds a connection would silently unlock it (SQLite's documented corruption path).
            if not database.exists():
                with contextlib.suppress(FileExistsError):
                    os.close(os.open(database, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
            for existing in (database, Path(f"{path}-wal"), Path(f"{path}-shm")):
                if existing.exists() and existing.stat().st_mode & 0o077:
                    existing.chmod(0o600)


def create_engine(database_url: str, **kwargs: Any) -> AsyncEngine:
    if database_url.startswith("sqlite"):
        ensure_sqlite_dir(database_url)
        engine = create_async_engine(database_url, **kwargs)
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    kwargs.setdefault("pool_size", 10)
    kwargs.setdefault("max_overflow", 20)
    kwargs.setdefault("pool_pre_ping", True)
    return create_async_engine(database_url, **kwargs)


def create_session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


class Database:
    """The engine and session factory one process uses; kept on ``app.state``."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.engine = create_engine(settings.database_url)
        self.sessions = create_session_factory(self.engine)

    async def dispose(self) -> None:
        await self.engine.dispose()


async def get_database(request: Request) -> Database:
    # async: FastAPI runs a plain ``def`` dependency on a worker thread, per request.
    database: Database = request.app.state.database
    return database


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    """One transaction per request: commit on success, roll back on any error."""
    database: Database = request.app.state.database
    async with database.sessions() as session:
        try:
            yield session
            await session.commit()
        except BaseException:
            await session.rollback()
            raise


# scope="function": commit before the response is sent, so a client that gets its 201
# or 303 and asks again at once sees its write (FastAPI otherwise tears a ``yield``
# dependency down after the response).
SessionDep = Annotated[AsyncSession, Depends(get_session, scope="function")]
DatabaseDep = Annotated[Database, Depends(get_database)]
