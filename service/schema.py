"""Alembic, driven from code: the migrations are the schema."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

logger = logging.getLogger("tellonce.schema")


def _migrations_dir() -> Path:
    """``migrations/`` beside the source tree, or in the working folder of an installed copy."""
    for candidate in (Path(__file__).resolve().parent.parent / "migrations", Path.cwd() / "migrations"):
        if (candidate / "env.py").is_file():
            return candidate
    raise RuntimeError("migrations/ not found beside the package or in the working folder")


MIGRATIONS_DIR = _migrations_dir()


class NewerSchema(RuntimeError):
    """The database is at a revision these migrations do not have: a newer release migrated
    it. The message is one line naming the revision and what to do."""


def refuse_newer_schema(current: Iterable[str], script: ScriptDirectory) -> None:
    """Raise ``NewerSchema`` if any of the database's ``current`` revisions is not one of
    ``script``'s; called by ``migrations/env.py`` before it migrates either way, where
    Alembic itself would fail with a traceback ("Can't locate revision")."""
    known = {revision.revision for revision in script.walk_revisions()}
    unknown = sorted(set(current) - known)
    if unknown:
        raise NewerSchema(
            f"the database is at revision {', '.join(unknown)}, which this release does not know "
            "(a newer release migrated it): this release cannot migrate it; run the newer "
            "release, or restore the backup taken before its upgrade"
        )


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("path_separator", "os")
    # ConfigParser interpolation would choke on a '%' in a password.
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    config.attributes["database_url"] = database_url
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    """Migrate to ``revision``; nothing is done if the database is already there. Synchronous:
    Alembic's env runs its own event loop. Raises ``NewerSchema``, nothing done, if the
    database was migrated by a newer release."""
    command.upgrade(alembic_config(database_url), revision)


def check(database_url: str) -> None:
    """Raise if the models differ from what the migrations build."""
    command.check(alembic_config(database_url))


@functools.cache
def _revisions() -> tuple[frozenset[str], frozenset[str]]:
    """The migrations' head revisions and every revision they have, read once per process:
    the migrations a process runs with do not change under it, and reading the folder (one
    Python file per revision) cost about 30 ms each time an app was made."""
    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    return frozenset(script.get_heads()), frozenset(revision.revision for revision in script.walk_revisions())


def head_revisions() -> set[str]:
    return set(_revisions()[0])


def known_revisions() -> frozenset[str]:
    """Every revision these migrations have, head or not."""
    return _revisions()[1]


def newer_schema(current: set[str], known: frozenset[str]) -> bool:
    """Whether the database is at a revision these migrations do not have: a newer release
    migrated it. The migration policy is additive first (docs/operations.md), so the
    release before it serves on that schema: a rolling upgrade keeps the old processes
    ready while the new ones start, and a code rollback runs without a schema rollback.
    Any other revision than the head (an older one, or none) is not ready."""
    return bool(current) and not current <= known


async def current_revisions(engine: AsyncEngine) -> set[str]:
    async with engine.connect() as connection:
        heads = await connection.run_sync(
            lambda sync_conn: MigrationContext.configure(sync_conn).get_current_heads()
        )
    return set(heads)


async def upgrade_async(database_url: str) -> None:
    """``upgrade`` for callers already inside an event loop."""
    await asyncio.to_thread(upgrade, database_url)


class SchemaGate:
    """Holds the background loops back until the database is at the code's head revision
    (or at a newer one: ``newer_schema``).

    Against an unmigrated (or unreachable) database every loop would fail each round and log
    a traceback each time. Instead the gate logs one line saying what to run, answers
    ``ready`` False (``/readyz`` says 503 on its own), and checks again with exponential
    backoff; it logs once more when the database is ready.
    """

    def __init__(self, engine: AsyncEngine, *, first_delay: float = 0.5, max_delay: float = 30.0) -> None:
        self.engine = engine
        self.heads = head_revisions()
        self.known = known_revisions()
        self.first_delay = first_delay
        self.max_delay = max_delay
        self.ready = asyncio.Event()

    async def _current(self) -> tuple[bool, str]:
        """Whether the schema serves, and what to say: the problem when it does not, a
        note when it is newer than this code (``newer_schema``)."""
        try:
            current = await current_revisions(self.engine)
        except (SQLAlchemyError, OSError) as exc:
            return False, f"the database is not reachable ({type(exc).__name__})"
        if current == self.heads:
            return True, ""
        have = ", ".join(sorted(current)) or "no schema"
        if newer_schema(current, self.known):
            return True, (
                f"the database is at {have}, which this release does not know (a newer release "
                "migrated it); serving on it, as the additive migration policy allows the release before"
            )
        want = ", ".join(sorted(self.heads))
        return False, f"the database is at {have} but this code needs {want}: run `tellonce db upgrade`"

    async def wait(self, stop: asyncio.Event) -> bool:
        """True once the schema is current; False if ``stop`` was set first."""
        delay = self.first_delay
        told = ""
        while not stop.is_set():
            ready, problem = await self._current()
            if ready:
                if problem:
                    logger.warning("%s", problem)
                elif told:
                    logger.info("database ready; background work starting")
                self.ready.set()
                return True
            if not told:
                logger.warning("%s; background work waits and retries with backoff", problem)
            elif problem != told:
                # One warning is enough; a migration in progress passes through other states.
                logger.debug("still waiting: %s", problem)
            told = problem
            try:
                await asyncio.wait_for(stop.wait(), timeout=delay)
            except TimeoutError:
                pass
            delay = min(delay * 2, self.max_delay)
        return False

    async def run_when_ready(
        self, stop: asyncio.Event, work: Callable[[asyncio.Event], Awaitable[None]]
    ) -> None:
        """Run ``work(stop)`` once the schema is current, unless ``stop`` comes first."""
        ready = asyncio.create_task(self.ready.wait())
        stopped = asyncio.create_task(stop.wait())
        _done, pending = await asyncio.wait({ready, stopped}, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        if self.ready.is_set() and not stop.is_set():
            await work(stop)
