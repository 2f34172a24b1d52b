"""Alembic, driven from code: the migrations are the schema."""

from __future__ import annotations

import asyncio
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.ext.asyncio import AsyncEngine


def _migrations_dir() -> Path:
    """``migrations/`` beside the source tree, or in the working folder of an installed copy."""
    for candidate in (Path(__file__).resolve().parent.parent / "migrations", Path.cwd() / "migrations"):
        if (candidate / "env.py").is_file():
            return candidate
    raise RuntimeError("migrations/ not found beside the package or in the working folder")


MIGRATIONS_DIR = _migrations_dir()


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("path_separator", "os")
    # ConfigParser interpolation would choke on a '%' in a password.
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    config.attributes["database_url"] = database_url
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    """Migrate to ``revision``. Synchronous: Alembic's env runs its own event loop."""
    command.upgrade(alembic_config(database_url), revision)


def check(database_url: str) -> None:
    """Raise if the models differ from what the migrations build."""
    command.check(alembic_config(database_url))


def head_revisions() -> set[str]:
    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    return set(script.get_heads())


async def current_revisions(engine: AsyncEngine) -> set[str]:
    async with engine.connect() as connection:
        heads = await connection.run_sync(
            lambda sync_conn: MigrationContext.configure(sync_conn).get_current_heads()
        )
    return set(heads)


async def upgrade_async(database_url: str) -> None:
    """``upgrade`` for callers already inside an event loop."""
    await asyncio.to_thread(upgrade, database_url)
