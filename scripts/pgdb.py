"""Create or drop a throw-away PostgreSQL database for one test run.

python scripts/pgdb.py create        -> prints the SQLAlchemy URL of a new database
python scripts/pgdb.py drop URL
"""

from __future__ import annotations

import asyncio
import os
import sys
import uuid

import asyncpg
from sqlalchemy.engine import make_url

HOST = os.environ.get("PGHOST", "127.0.0.1")
PORT = int(os.environ.get("PGPORT", "5432"))
USER = os.environ.get("PGUSER", "postgres")


async def _admin() -> asyncpg.Connection:
    return await asyncpg.connect(host=HOST, port=PORT, user=USER, database="postgres", timeout=5)


async def create() -> str:
    name = f"tellonce_test_{uuid.uuid4().hex[:12]}"
    connection = await _admin()
    try:
        await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()
    return f"postgresql+asyncpg://{USER}@{HOST}:{PORT}/{name}"


async def drop(url: str) -> None:
    name = make_url(url).database
    connection = await _admin()
    try:
        # Scratch databases made by tests beside this one (``<name>_<hex>``) go too; compared
        # as text, since LIKE would read the ``_`` in the name as any character.
        rows = await connection.fetch(
            "SELECT datname FROM pg_database WHERE datname = $1 OR left(datname, length($2)) = $2",
            name,
            f"{name}_",
        )
        for row in rows:
            await connection.execute(f'DROP DATABASE IF EXISTS "{row["datname"]}" WITH (FORCE)')
    finally:
        await connection.close()


def main() -> int:
    if len(sys.argv) >= 2 and sys.argv[1] == "create":
        try:
            print(asyncio.run(create()))
        except (OSError, asyncpg.PostgresError) as exc:
            print(f"cannot create a PostgreSQL database: {exc}", file=sys.stderr)
            return 1
        return 0
    if len(sys.argv) == 3 and sys.argv[1] == "drop":
        asyncio.run(drop(sys.argv[2]))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
