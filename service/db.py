"""Engine, sessions and the one declarative ``Base`` for every model.

SQLite gets WAL, foreign keys and a busy timeout on every connection; PostgreSQL goes
through asyncpg. A request holds one session: the dependency commits when the handler
returns and rolls back when it raises. Services ``flush()``, never ``commit()``.

The per-request reads (the revocation epoch, a client's standing, a citizen's rows) skip
SQLAlchemy and go through ``DriverReads``: the raw driver on connections kept for the
life of the process (``bench/README.md`` has the profile that chose this).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, ClassVar, Protocol

import asyncpg
from fastapi import Depends, FastAPI, Request
from sqlalchemy import DateTime, MetaData, event
from sqlalchemy.engine import URL, Dialect, make_url
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.types import TypeDecorator

from service import tracing
from service.config import Settings
from service.hotpath import app_state
from service.private_files import make_private_dir
from service.sqlite_turns import queue_writers

logger = logging.getLogger("tellonce.db")

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


# How long a connection waits for SQLite's write lock (and, on the engines below, for its
# turn to write) before "database is locked".
SQLITE_BUSY_TIMEOUT_SECONDS = 10.0


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT_SECONDS * 1000)}")
    # FULL: a commit is on disk before it returns, which the audit's
    # "durable before release" promise depends on. Group commit pays for it.
    cursor.execute("PRAGMA synchronous=FULL")
    # Freed space is zeroed, on every write and not only on erasure: otherwise the page
    # reorganisations of ordinary writes leave stale copies of blind indexes and wrapped
    # keys that no later overwrite reaches. The default varies by build (Debian's is on).
    cursor.execute("PRAGMA secure_delete=ON")
    cursor.close()


@contextlib.asynccontextmanager
async def savepoint(conn: AsyncConnection) -> AsyncIterator[None]:
    """``conn.begin_nested()`` that stays inside the caller's transaction on SQLite too.

    pysqlite (Python 3.11's legacy transaction control) sends its BEGIN only in front of an
    INSERT, UPDATE, DELETE or REPLACE. A SAVEPOINT sent before any of them opens a
    transaction of its own, and its RELEASE commits it: what the savepoint wrote would
    outlive a rollback of the caller's transaction (an audit entry that could not be
    written would leave the change it describes committed). So the transaction is begun
    first, and as a writing one (``begin_on_sqlite``)."""
    await begin_on_sqlite(conn)
    async with conn.begin_nested():
        yield


async def begin_on_sqlite(conn: AsyncConnection) -> None:
    """Open ``conn``'s SQLite transaction now if pysqlite has not (see ``savepoint``), for a
    caller that is about to write: with the write lock, after this process's write turn.

    In WAL mode a deferred BEGIN reads from a snapshot taken at its first read, and a write
    after that read fails at once ("database is locked", SQLITE_BUSY_SNAPSHOT, no busy
    timeout) if any other connection committed since, or holds the write lock. So it is
    ``BEGIN IMMEDIATE``, which waits for the lock like any first write; the turn is taken
    before it (``service.sqlite_turns``)."""
    if conn.dialect.name != "sqlite":
        return
    driver = (await conn.get_raw_connection()).driver_connection
    if driver is not None and not driver.in_transaction:
        await conn.exec_driver_sql("BEGIN IMMEDIATE")


def sqlite_file(engine: AsyncEngine) -> str | None:
    """The database file of a SQLite engine, or None (PostgreSQL, in-memory, a URI): what
    a component that opens its own ``sqlite3`` connections to the same file needs."""
    database = engine.url.database
    if engine.dialect.name != "sqlite" or not database or database == ":memory:":
        return None
    return None if database.startswith("file:") else database


def ensure_sqlite_dir(url: str) -> None:
    """Create the folder of a file-backed SQLite URL (0700 if it is made here: by default it
    is the data dir, ``./.tellonce``), so a fresh checkout just works, and the database file
    readable by its owner only (0600, like the key files).

    SQLite creates the ``-wal`` and ``-shm`` files with the database file's mode, so those
    follow; files left 0644 by an older version are tightened here too."""
    prefix = "sqlite+aiosqlite:///"
    if url.startswith(prefix):
        path = url[len(prefix) :].split("?", 1)[0]
        if path and path != ":memory:" and not path.startswith("file:"):
            database = Path(path)
            make_private_dir(database.parent)
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
    # A statement's error names its statement, never its bound values: they may be an
    # officer's name, a reason or a legal basis, and an error is logged.
    kwargs.setdefault("hide_parameters", True)
    if database_url.startswith("sqlite"):
        ensure_sqlite_dir(database_url)
        engine = create_async_engine(database_url, **kwargs)
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        path = sqlite_file(engine)
        if path is not None:
            # Writers take turns instead of racing for the lock (service/sqlite_turns.py).
            queue_writers(engine, path, SQLITE_BUSY_TIMEOUT_SECONDS)
        return engine
    kwargs.setdefault("pool_size", 10)
    kwargs.setdefault("max_overflow", 20)
    kwargs["connect_args"] = {"connection_class": KeptAliveConnection, **kwargs.get("connect_args", {})}
    # No pre-ping: on a local database it is a round trip on every checkout (every audit
    # batch, every write). A connection the server closed (a restart, a failover, an
    # administrator's pg_terminate_backend) is known closed to the driver without one,
    # and is replaced at checkout (``_replace_closed``). One that breaks while its
    # statement runs, or whose loss the driver has not seen, fails that statement once
    # (503 to that caller) and SQLAlchemy then discards the pool's older connections.
    engine = create_async_engine(database_url, **kwargs)
    event.listen(engine.sync_engine, "checkout", _replace_closed)
    return engine


# TCP keepalives on every connection to PostgreSQL, so that a server gone without a word (a
# network partition, a middlebox that forgot the connection: no RST ever comes) is noticed
# within about a minute, not at the OS's defaults (no keepalives at all; a statement's
# unacknowledged bytes retransmitted for some 15 minutes on Linux). A connection that has
# heard nothing for ``KEEPALIVE_IDLE_SECONDS`` (a statement waiting for its answer, or one
# idle in its pool) is probed every ``KEEPALIVE_INTERVAL_SECONDS`` and ended after
# ``KEEPALIVE_PROBES`` unanswered probes: 30 + 3 x 10 seconds. Bytes the server has not
# acknowledged within ``TCP_USER_TIMEOUT_SECONDS`` end it too (a statement sent into the
# partition). Its statement then fails as on any lost connection (a 503 to its caller).
# They are libpq's keepalives_idle, _interval, _count and tcp_user_timeout; asyncpg has no
# option for them (MagicStack/asyncpg#606), so they are set on the socket
# (``KeptAliveConnection``). Not the server's tcp_keepalives_* as startup parameters:
# PgBouncer refuses a connection that sends a startup parameter it does not know.
KEEPALIVE_IDLE_SECONDS = 30
KEEPALIVE_INTERVAL_SECONDS = 10
KEEPALIVE_PROBES = 3
TCP_USER_TIMEOUT_SECONDS = 60


def keep_alive(sock: Any) -> None:
    """Turn on TCP keepalives (and the user timeout) on ``sock`` with the settings above, as
    far as the platform has them; a Unix-domain socket has nothing to probe."""
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    # TCP_KEEPIDLE is macOS's TCP_KEEPALIVE; TCP_USER_TIMEOUT is Linux's.
    for name, value in (
        ("TCP_KEEPIDLE", KEEPALIVE_IDLE_SECONDS),
        ("TCP_KEEPALIVE", KEEPALIVE_IDLE_SECONDS),
        ("TCP_KEEPINTVL", KEEPALIVE_INTERVAL_SECONDS),
        ("TCP_KEEPCNT", KEEPALIVE_PROBES),
        ("TCP_USER_TIMEOUT", TCP_USER_TIMEOUT_SECONDS * 1000),
    ):
        option = getattr(socket, name, None)
        if option is not None:
            sock.setsockopt(socket.IPPROTO_TCP, option, value)


class KeptAliveConnection(asyncpg.Connection):
    """An asyncpg connection whose socket has TCP keepalives (``keep_alive``): the
    ``connection_class`` of every PostgreSQL connection the service makes (the engines', the
    raw pool's, the event listener's). asyncpg hands its transport to the constructor and
    offers no other way to the socket."""

    def __init__(self, protocol: Any, transport: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(protocol, transport, *args, **kwargs)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            keep_alive(sock)


def engine_for(settings: Settings, **kwargs: Any) -> AsyncEngine:
    """``create_engine`` on the settings' database, with the operator's pool settings: on
    PostgreSQL, a connection older than ``db_pool_recycle_seconds`` is replaced at its next
    checkout (SQLAlchemy's ``pool_recycle``: a check of its age, no round trip), so one a
    firewall silently dropped while it sat idle is never used."""
    if not settings.is_sqlite and settings.db_pool_recycle_seconds:
        kwargs.setdefault("pool_recycle", settings.db_pool_recycle_seconds)
    return create_engine(settings.database_url, **kwargs)


def _replace_closed(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
    """At checkout, hand back a pooled PostgreSQL connection the driver already knows is
    closed, so that the pool connects again (up to once more) before anything is sent:
    nothing of the caller's has run, so nothing is lost and its request is served.

    A local check of asyncpg's state (the server's goodbye and the socket's end were read
    by the event loop while the connection sat in the pool), not a round trip."""
    driver = getattr(dbapi_connection, "driver_connection", None)
    if driver is not None and driver.is_closed():
        logger.info("a pooled database connection was closed by the server; connecting again")
        raise DisconnectionError("the database server closed this pooled connection")


def create_session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


class Database:
    """The engine and session factory one process uses; kept on ``app.state``."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.engine = engine_for(settings)
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


# --- the per-request reads, on the raw driver -------------------------------------------


class DriverReads(Protocol):
    """Statements on the raw driver, on connections kept for the process's life: the
    per-request reads, and the shared rate limiter's ``rate_buckets`` upsert
    (``service.auth.ratelimit``), which writes.

    ``sql`` uses ``?`` placeholders on every backend; rows come back as sequences."""

    async def rows(self, sql: str, params: Sequence[Any] = ()) -> Sequence[Sequence[Any]]: ...

    async def close(self) -> None: ...


class SqliteReads:
    """One read-only ``sqlite3`` connection, used directly on the event loop. With tracing
    on, each statement is a ``db.read`` span (its SQL, never its parameters).

    An aiosqlite statement is two thread hand-offs; on a busy two-core machine each waits
    for a time slice (about a millisecond, profiled under wrk), while an indexed read of a
    few rows from SQLite's page cache takes tens of microseconds. So these statements run
    on the loop itself. In WAL mode a reader never waits for a writer; the busy timeout
    only covers WAL recovery after a crash. Autocommit: every statement sees the newest
    commit of any process, which the revocation check depends on.

    ``commit_marker`` tells whether any other connection, of any process, has committed
    since an earlier call: the revocation check reads its key again only then."""

    def __init__(self, connection: sqlite3.Connection, marks: bool = True, path: str | None = None) -> None:
        self.connection = connection
        # Whether ``commit_marker`` answers: a database file, which other connections share.
        self.marks = marks
        # The database file and its write-ahead log as they were opened (``replaced``).
        self.path = path
        self._opened = _file_ids(path) if path is not None else ()

    @classmethod
    def open(cls, path: str) -> SqliteReads:
        connection = sqlite3.connect(path, isolation_level=None)
        connection.execute("PRAGMA query_only=ON")
        connection.execute("PRAGMA busy_timeout=1000")
        # A first read opens the write-ahead log, which this connection keeps open (so
        # SQLite never deletes it) for the process's life.
        connection.execute("PRAGMA schema_version").fetchone()
        is_file = bool(path) and path != ":memory:" and not path.startswith("file:")
        return cls(connection, marks=is_file, path=path if is_file else None)

    def replaced(self) -> bool:
        """Whether the database file or its write-ahead log is no longer the one this
        process opened: replaced (a copy or a restore moved over it), deleted, or the log
        deleted. The process's open connections go on using the old files, which no new
        connection (another process's, or this one's next) sees, so its writes are lost
        when it ends and other processes see none of them: it must be restarted (SQLite,
        "How To Corrupt An SQLite Database File", 2.4 and 2.5). Two ``stat`` calls: for
        ``/readyz``, not for every request.

        A log that was not there when the process opened the database (one not yet in WAL
        mode: ``tellonce serve`` started before ``tellonce db upgrade``) is no replacement:
        the first one made since is the one this connection reads from then on."""
        if self.path is None:
            return False
        database, log = _file_ids(self.path)
        opened_database, opened_log = self._opened
        if opened_log is None:
            self._opened = (opened_database, log)
            return database != opened_database
        return (database, log) != self._opened

    async def rows(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        with tracing.span("db.read", **{"db.system": "sqlite", "db.statement": sql}):
            return self.connection.execute(sql, tuple(params)).fetchall()

    def commit_marker(self) -> int | None:
        """``PRAGMA data_version``: equal values from two calls mean no other connection, of
        this process or another, committed in between (https://sqlite.org/pragma.html,
        "data_version"; in WAL mode and with a rollback journal alike). None for a database
        no other connection shares (in memory, a URI), or when the statement fails: the
        caller then reads as if something had changed.

        Not the WAL index header read from a mapping of the ``-shm`` file of our own, as
        this was before: opening and closing a descriptor of that file released every POSIX
        lock this process's SQLite connections held on it, the write lock and the
        dead-man switch included, so another process could write at the same time or
        reinitialise the index under them ("locking protocol" at start-up; sqlite.org,
        "How To Corrupt An SQLite Database File", 2.2). A statement costs a few
        microseconds more (bench/README.md, "The commit marker's lost locks")."""
        if not self.marks:
            return None
        try:
            return int(self.connection.execute("PRAGMA data_version").fetchone()[0])
        except sqlite3.Error:
            return None

    async def close(self) -> None:
        self.connection.close()


def _file_ids(path: str) -> tuple[tuple[int, int] | None, ...]:
    """(device, inode) of the database file and of its ``-wal``, None for one not there."""
    ids: list[tuple[int, int] | None] = []
    for name in (path, f"{path}-wal"):
        try:
            found = os.stat(name)
        except FileNotFoundError:
            ids.append(None)
        else:
            ids.append((found.st_dev, found.st_ino))
    return tuple(ids)


async def _keep_session(_connection: asyncpg.Connection) -> None:
    """A pool ``reset`` that sends nothing (asyncpg still rolls back an open transaction)."""


class PostgresReads:
    """An asyncpg pool (asyncpg is asyncio-native: no thread hop); ``?`` becomes ``$n``.

    These connections only ever run single autocommit statements that leave no session
    state behind (SELECTs, and the shared rate limit's upsert of ``rate_buckets``):
    the pool's default reset on release (``RESET ALL``, ``UNLISTEN *``, advisory unlock:
    a round trip after every statement, 8% of the profiled read) is skipped.

    With ``recycle_seconds`` (``db_pool_recycle_seconds``), as SQLAlchemy's engines: every
    connection older than that is replaced when next acquired. asyncpg's own
    ``max_inactive_connection_lifetime`` (set to the same) closes only the idle connections
    above ``min_size``, so the pool's connections are also expired (``expire_connections``)
    every ``recycle_seconds``."""

    def __init__(self, pool: asyncpg.Pool, recycle_seconds: float = 0) -> None:
        self.pool = pool
        self._numbered: dict[str, str] = {}
        self._expiring = (
            asyncio.create_task(self._expire_every(recycle_seconds), name="driver-reads-recycle")
            if recycle_seconds
            else None
        )

    @classmethod
    async def open(
        cls, dsn: str, *, min_size: int = 2, max_size: int = 10, recycle_seconds: float = 0
    ) -> PostgresReads:
        pool = await asyncpg.create_pool(
            dsn,
            connection_class=KeptAliveConnection,
            min_size=min_size,
            max_size=max_size,
            reset=_keep_session,
            # 0 keeps asyncpg's own default for idle connections above min_size (5 minutes).
            max_inactive_connection_lifetime=recycle_seconds or 300.0,
        )
        return cls(pool, recycle_seconds)

    async def _expire_every(self, seconds: float) -> None:
        while True:
            await asyncio.sleep(seconds)
            await self.pool.expire_connections()

    async def rows(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        statement = self._numbered.get(sql)
        if statement is None:
            statement = self._numbered[sql] = numbered(sql)
        with tracing.span("db.read", **{"db.system": "postgresql", "db.statement": statement}):
            return list(await self.pool.fetch(statement, *params))

    async def close(self) -> None:
        if self._expiring is not None:
            self._expiring.cancel()
        await asyncio.wait_for(self.pool.close(), timeout=10)


def numbered(sql: str) -> str:
    """``?`` placeholders as PostgreSQL's ``$1``, ``$2``..."""
    parts = sql.split("?")
    return parts[0] + "".join(f"${n}{part}" for n, part in enumerate(parts[1:], 1))


class CoreReads:
    """``DriverReads`` on a SQLAlchemy connection from ``connect`` (one per statement): for
    an app run without its lifespan, and for tests, whose rows live in one uncommitted
    transaction (``tests/fixtures/auth.py`` puts one on ``app.state.driver_reads``)."""

    def __init__(self, connect: Callable[[], AbstractAsyncContextManager[AsyncConnection]]) -> None:
        self.connect = connect

    async def rows(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        async with self.connect() as conn:
            statement = numbered(sql) if conn.dialect.name == "postgresql" else sql
            return list((await conn.exec_driver_sql(statement, tuple(params))).all())

    async def close(self) -> None:
        return None


def driver_reads(request: Request) -> DriverReads:
    """The app's raw-driver reads (opened at startup), or, for an app run without its
    lifespan, reads on connections of the app's engine.

    A plain function, not a dependency: on the hottest routes FastAPI's resolution of each
    dependency costs more than the read itself (``bench/README.md``)."""
    state = app_state(request)
    reads: DriverReads | None = state.get("driver_reads")
    if reads is None:
        database: Database = state["database"]
        reads = CoreReads(database.engine.connect)
    return reads


def asyncpg_dsn(database_url: str | URL) -> str:
    """The PostgreSQL SQLAlchemy URL ``database_url`` as a DSN for asyncpg itself."""
    return make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)


async def open_driver_reads(database_url: str, recycle_seconds: float = 0) -> SqliteReads | PostgresReads:
    """The raw-driver reads for ``database_url``; the caller closes them. ``recycle_seconds``:
    ``PostgresReads``'."""
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        return SqliteReads.open(url.database or ":memory:")
    return await PostgresReads.open(asyncpg_dsn(url), recycle_seconds=recycle_seconds)


@contextlib.asynccontextmanager
async def driver_reads_lifecycle(app: FastAPI) -> AsyncIterator[None]:
    """The process's raw-driver reads on ``app.state.driver_reads``, open as long as the app."""
    settings: Settings = app.state.settings
    reads = await open_driver_reads(settings.database_url, settings.db_pool_recycle_seconds)
    app.state.driver_reads = reads
    try:
        yield
    finally:
        await reads.close()


async def reach(database_url: str, timeout: float = 10.0) -> None:
    """Connect to a PostgreSQL server once and leave; raise the driver's error if it cannot
    be reached. SQLite is not tried: opening a file that is not there would create it."""
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        return
    connection = await asyncpg.connect(asyncpg_dsn(url), timeout=timeout)
    await connection.close(timeout=timeout)


# What the drivers raise when the database itself cannot be used: not there, not
# listening, refusing the role or password, gone mid-way, or a SQLite file that cannot
# be opened.
_REFUSALS: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError,
    asyncpg.InvalidCatalogNameError,
    asyncpg.InvalidAuthorizationSpecificationError,
    asyncpg.CannotConnectNowError,
)
_SQLITE_REFUSALS = ("unable to open database file", "disk i/o error", "file is not a database")


def _from_driver(error: OSError) -> bool:
    """Whether the OS error came up through a database driver (a socket that would not
    connect), rather than from the command's own files."""
    trace = error.__traceback__
    while trace is not None:
        path = trace.tb_frame.f_code.co_filename.replace("\\", "/")
        if "/asyncpg/" in path or "/aiosqlite/" in path:
            return True
        trace = trace.tb_next
    return False


def _causes(error: BaseException) -> Iterator[BaseException]:
    """``error``, then what it wraps (a driver's error under SQLAlchemy's), or caused it."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        wrapped = getattr(current, "orig", None)
        current = (
            wrapped if isinstance(wrapped, BaseException) else (current.__cause__ or current.__context__)
        )


def missing_schema(error: BaseException) -> str | None:
    """The driver's one line if ``error`` (or what it wraps) is a table that is not there:
    a database that was never migrated, or is behind the code. None otherwise."""
    for current in _causes(error):
        if isinstance(current, sqlite3.OperationalError) and str(current).startswith("no such table: "):
            return str(current)
        if isinstance(current, asyncpg.UndefinedTableError):
            return str(current).splitlines()[0]
    return None


def unusable_database(error: BaseException) -> str | None:
    """Why the database could not be used, if that is what ``error`` (or what it wraps) is:
    one line from the driver, which names the host, database or role but never a value.
    None for any other error, which the caller lets through."""
    for current in _causes(error):
        if isinstance(current, _REFUSALS):
            return str(current).splitlines()[0] if str(current) else type(current).__name__
        if isinstance(current, sqlite3.OperationalError) and str(current).lower() in _SQLITE_REFUSALS:
            return str(current)
        if isinstance(current, OSError) and _from_driver(current):
            return current.strerror or str(current) or type(current).__name__
    return None
