"""bench/ratelimit: the secured read on PostgreSQL with the rate limit shared by replicas
(``TELLONCE_RATE_LIMIT_STORE=database``, one upsert per batch of a client's concurrent
requests) against the same read with each process's buckets in memory (the baseline).

One ``tellonce serve --no-worker`` and one ``tellonce worker`` on a scratch database, the
secured read of ``bench/read`` driven by ``wrk`` at ``-c32`` and at ``-c1`` (where no
request shares a claim: one upsert each). The stores run in the order memory, database,
database, memory, memory, database, so a steady drift on the shared machine falls on both
alike. The
client's rate is lifted so that nothing is refused: the shared store still claims a token
for every request. The server's CPU time per request is the steadier figure on a shared
machine. Then, in this process on the same database, the claim alone: one request at a
time (a statement each) and 32 at a time (sharing claims), next to a bare ``SELECT 1`` on
the same pool. Needs ``wrk``.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from bench import goals
from bench._load import CONNECTIONS, DURATION, ROOT, _cli, _token, _wrk, server_env
from bench._postgres import drop as drop_postgres
from bench.read import _check, _register, _scratch_postgres, _secured_url, _serve, _start, _stop
from service.auth.ratelimit import SharedRateLimiter
from service.db import open_driver_reads
from service.schema import upgrade

STORES = ("memory", "database")
ORDER = ("memory", "database", "database", "memory", "memory", "database")
# Sharing the limit may cost the secured read at most a tenth of its rate (our goal).
SHARED_OVER_MEMORY = 0.9


def run() -> dict[str, dict[str, list[float]]]:
    folder = Path(tempfile.mkdtemp(prefix="tellonce-bench-ratelimit-"))
    url = asyncio.run(_scratch_postgres())
    processes: list[subprocess.Popen[bytes]] = []
    figures: dict[str, dict[str, list[float]]] = {
        store: {"rps": [], "p50_c1": [], "cpu_ms": []} for store in STORES
    }
    try:
        upgrade(url)
        env = server_env(url, folder)
        _cli(env, "policies", "apply", str(ROOT / "policies"))
        registrar = json.loads(
            _cli(env, "clients", "create", "--department", "register", "--roles", "registrar", "--json")
        )
        consumer = json.loads(
            _cli(env, "clients", "create", "--department", "dwp", "--roles", "consumer", "--json")
        )
        processes.append(_start([sys.executable, "-m", "service.cli", "worker"], env))
        citizen_id = ""
        for store in ORDER:
            server, base = _serve({**env, "TELLONCE_RATE_LIMIT_STORE": store}, 1, None)
            try:
                citizen_id = citizen_id or _register(base, registrar)
                bearer = {"Authorization": f"Bearer {_token(base, consumer)}"}
                secured = _secured_url(base, citizen_id)
                _check(secured, bearer, f"the secured read ({store})")
                loaded = _wrk(secured, bearer, server_pid=server.pid)
                single = _wrk(secured, bearer, connections=1)
            finally:
                _stop([server])
            figures[store]["rps"].append(loaded["rps"])
            figures[store]["cpu_ms"].append(loaded["cpu_ms"])
            figures[store]["p50_c1"].append(single["p50"])
            print(
                f"  {store:9} {loaded['rps']:7.0f} req/s at -c{CONNECTIONS} "
                f"({loaded['cpu_ms']:.2f} ms server CPU each), p50 {single['p50']:.2f} ms at -c1"
            )
        costs = asyncio.run(claim_costs(url))
        print("  in this process, per request:")
        for label, micros in costs.items():
            print(f"    {label:13} {micros:7.1f} µs")
        return figures
    finally:
        _stop(processes)
        asyncio.run(drop_postgres(url))
        shutil.rmtree(folder, ignore_errors=True)


CLAIMS = 3000


async def claim_costs(url: str) -> dict[str, float]:
    """Microseconds per request: a bare SELECT 1, a claim each, and claims shared by 32."""
    reads = await open_driver_reads(url)
    limiter = SharedRateLimiter(1e9, 10**9)
    try:

        async def timed(work: Callable[[], Awaitable[object]], rounds: int) -> float:
            started = time.perf_counter()
            for _ in range(rounds):
                await work()
            return time.perf_counter() - started

        async def thirty_two() -> object:
            return await asyncio.gather(*(limiter.take(reads, "tc_bench") for _ in range(32)))

        await timed(lambda: limiter.take(reads, "tc_bench"), 100)  # warm-up: pool and plans
        return {
            "select 1": await timed(lambda: reads.rows("SELECT 1"), CLAIMS) / CLAIMS * 1e6,
            "claim each": await timed(lambda: limiter.take(reads, "tc_bench"), CLAIMS) / CLAIMS * 1e6,
            "claims by 32": await timed(thirty_two, CLAIMS // 32) / (CLAIMS // 32 * 32) * 1e6,
        }
    finally:
        await reads.close()


def main() -> None:
    if shutil.which("wrk") is None:
        print("bench/ratelimit needs wrk: apt-get install wrk")
        return
    print(f"PostgreSQL, wrk -t2 -d{DURATION}s; stores in the order {', '.join(ORDER)}")
    print(f"at the start: {goals.load_average()}")
    figures = run()
    mean = {store: {k: sum(v) / len(v) for k, v in figures[store].items()} for store in STORES}
    for store in STORES:
        print(
            f"  {store:9} mean {mean[store]['rps']:7.0f} req/s, {mean[store]['cpu_ms']:.2f} ms CPU, "
            f"p50 {mean[store]['p50_c1']:.2f} ms at -c1"
        )
    print(
        f"  p50 at -c1, shared minus memory: {mean['database']['p50_c1'] - mean['memory']['p50_c1']:+.2f} ms"
    )
    goals.check(
        f"issue 17.3 secured read, shared rate limit over in-memory (PostgreSQL, -c{CONNECTIONS})",
        mean["database"]["rps"] / mean["memory"]["rps"],
        SHARED_OVER_MEMORY,
    )
    print(f"at the end: {goals.load_average()}")


if __name__ == "__main__":
    main()
