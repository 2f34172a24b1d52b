"""Cost of authenticating a request: cached versus uncached token verification.

Measures, in one run, on a temporary SQLite database and key folder:
- ``verify_uncached``: ES256 signature and claim checks on every request (the baseline);
- ``verify`` from the bounded cache (hash of the token and one dictionary lookup);
- the whole ``get_principal`` dependency with a cached token, as a server runs it: the
  cache, the revocation epoch read on the raw driver (``service.db.DriverReads``) and the
  rate limiter; next to a bare ``SELECT 1`` on the same raw connection, the price of any
  statement; and next to the same dependency reading through an ORM ``AsyncSession``
  connection (``CoreReads``, the path tests take; servers took a session before issue 16).
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncConnection
from starlette.requests import Request

from service.app import create_app
from service.auth import service as auth_service
from service.auth.dependencies import get_principal
from service.auth.runtime import AuthRuntime
from service.config import Settings
from service.db import CoreReads, SqliteReads
from service.schema import upgrade_async

ROUNDS = 20_000
DB_ROUNDS = 5_000


def per_call(label: str, rounds: int, work: Callable[[], object]) -> float:
    started = time.perf_counter()
    for _ in range(rounds):
        work()
    micros = (time.perf_counter() - started) / rounds * 1e6
    print(f"{label:<52} {micros:9.2f} µs/request")
    return micros


async def per_call_async(label: str, rounds: int, work: Callable[[], Awaitable[object]]) -> float:
    started = time.perf_counter()
    for _ in range(rounds):
        await work()
    micros = (time.perf_counter() - started) / rounds * 1e6
    print(f"{label:<52} {micros:9.2f} µs/request")
    return micros


async def run() -> None:
    folder = Path(tempfile.mkdtemp(prefix="tellonce-bench-auth-"))
    url = f"sqlite+aiosqlite:///{folder / 'bench.db'}"
    await upgrade_async(url)
    settings = Settings(
        env="test", database_url=url, data_dir=folder, client_rate_per_second=1e9, client_rate_burst=10**9
    )
    app = create_app(settings)
    auth = AuthRuntime.create(settings)
    app.state.auth = auth
    async with app.state.database.sessions.begin() as session:
        created = await auth_service.create_client(session, department="welfare", roles=["consumer"])
    token = auth.issuer.issue(
        client_id=created.client_id, department="welfare", roles=["consumer"], scope="citizens:read"
    )["access_token"]

    uncached = per_call(
        "uncached: ES256 verify + claims", ROUNDS // 4, lambda: auth.verifier.verify_uncached(token)
    )
    auth.verifier.verify(token)
    cached = per_call("cached: sha256 + dict lookup", ROUNDS, lambda: auth.verifier.verify(token))
    print(f"{'ratio uncached / cached':<52} {uncached / cached:9.1f} x")

    scope = {
        "type": "http",
        "method": "GET",
        "path": "/v1/catalog",
        "headers": [(b"authorization", f"Bearer {token}".encode())],
        "app": app,
    }
    reads = SqliteReads.open(str(folder / "bench.db"))
    app.state.driver_reads = reads
    round_trip = await per_call_async(
        "baseline: SELECT 1 on the same raw connection", DB_ROUNDS, lambda: reads.rows("SELECT 1")
    )
    full = await per_call_async(
        "get_principal, cached token, epoch on the driver",
        DB_ROUNDS,
        lambda: get_principal(Request(scope)),
    )
    async with app.state.database.sessions() as session:

        @asynccontextmanager
        async def on_session() -> AsyncIterator[AsyncConnection]:
            yield await session.connection()

        app.state.driver_reads = CoreReads(on_session)
        orm = await per_call_async(
            "get_principal, epoch through an AsyncSession",
            DB_ROUNDS // 5,
            lambda: get_principal(Request(scope)),
        )
    print(f"{'ratio full dependency / cached verify':<52} {full / cached:9.1f} x")
    print(f"{'ratio full dependency / uncached verify':<52} {full / uncached:9.2f} x")
    # The disabled-client check costs one tiny statement: compare to SELECT 1.
    print(f"{'ratio full dependency / SELECT 1':<52} {full / round_trip:9.2f} x")
    print(f"{'ratio through AsyncSession / on the driver':<52} {orm / full:9.2f} x")
    await reads.close()
    await app.state.database.dispose()


def main() -> None:
    asyncio.run(run())


if __name__ == "__main__":
    main()
