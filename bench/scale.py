"""bench/scale: reads on a small register and on a national one, in the same run.

For each database a register of each size is loaded through ``tellonce import
--department register`` (the CSV of ``service.sim.register_file``: national id and five
register fields per citizen), then every store is served by its own ``tellonce serve``
(one worker, ``--no-worker``: no sequencer hashing the imported log while reads are
timed) and wrk drives, with a real OAuth2 token, in turns across the stores:

- the secured read: ``GET /v1/citizens/{id}`` of five fields for a purpose;
- lookup by national id: ``POST /v1/citizens/lookup``;
- batch-get: ``POST /v1/citizens/batch-get`` of ``BENCH_SCALE_BATCH`` citizens.

Each request names a citizen drawn at random from one sample of ``BENCH_SCALE_SAMPLE``
citizens spread over the whole register, by id or (lookup) by national id: the same
number on every size, and the same citizens for every operation, so the data-key cache
behaves alike and only the database differs. Latency is wrk's p50 and p99 at
``BENCH_SCALE_CONNECTIONS`` connections, taken as the median over ``BENCH_SCALE_ROUNDS``
rounds (3 by default: the median of two is their mean, and the first round on a large
register is also its warm-up, as each sampled citizen's pages and data key are read for the
first time); the goal (issue 17) is each at the largest size within 1.3x of the smallest. It
also prints the import rate and the database's size per million citizens (SQLite: the
file and its WAL; PostgreSQL: ``pg_database_size``), which includes each citizen's data
key, blind index and import audit entry.

Sizes: ``BENCH_SCALE_SQLITE`` (default ``10000,1000000``) and ``BENCH_SCALE_POSTGRES``
(default ``10000,1000000``), comma-separated, the first the baseline; empty skips that
database. ``python -m bench.scale --sqlite 10000,100000 --postgres 10000,5000000`` sets
them too. PostgreSQL stops at a million by default for time, not disk: five million took
47 minutes end to end on this shared two-core machine (the import at about 1,950
citizens/s under load), while the disk (about 4 GiB per million citizens, 78 GB free)
would hold over fifteen million.
Files go under ``BENCH_SCALE_DIR`` (default: the system temporary folder) and are removed
at the end. Needs ``wrk``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from pydantic import SecretStr
from sqlalchemy.engine import make_url

from bench import goals
from bench._load import DURATION, ROOT, _cli, _free_port, _latency_ms, _token, _wait_healthy, server_env
from bench._postgres import drop as drop_postgres
from bench._postgres import scratch_url as scratch_postgres
from service.config import Settings
from service.crypto.keyring import Keyring
from service.schema import upgrade
from service.sim.register_file import DEPARTMENT, national_id, write_register_file
from tests.test_query_plans import HOT_PATHS, capture_hot_paths, explain_all

SIZES = {
    "sqlite": os.environ.get("BENCH_SCALE_SQLITE", "10000,1000000"),
    "postgres": os.environ.get("BENCH_SCALE_POSTGRES", "10000,1000000"),
}
SAMPLE = int(os.environ.get("BENCH_SCALE_SAMPLE", "10000"))
BATCH = int(os.environ.get("BENCH_SCALE_BATCH", "50"))
CONNECTIONS = int(os.environ.get("BENCH_SCALE_CONNECTIONS", "4"))
ROUNDS = int(os.environ.get("BENCH_SCALE_ROUNDS", "3"))
WITHIN = 1.3
FIELDS = ("given_name", "family_name", "date_of_birth", "address", "postcode")
PURPOSE = "benefit-eligibility"
OPERATIONS = ("secured read", "lookup", "batch-get")

# One request per call of ``request``: a citizen (or BATCH of them) drawn from the sample
# file, which every wrk thread reads once.
_WRK_SCRIPT = """
local sample = {}
for line in io.lines(os.getenv("BENCH_SCALE_SAMPLE_FILE")) do sample[#sample + 1] = line end
local operation = os.getenv("BENCH_SCALE_OPERATION")
local fields = os.getenv("BENCH_SCALE_FIELDS")
local purpose = os.getenv("BENCH_SCALE_PURPOSE")
local batch = tonumber(os.getenv("BENCH_SCALE_BATCH"))
math.randomseed(tonumber(os.getenv("BENCH_SCALE_SEED")))
wrk.headers["Content-Type"] = "application/json"

local function pick() return sample[math.random(#sample)] end

request = function()
  if operation == "secured read" then
    return wrk.format("GET", "/v1/citizens/" .. pick() .. "?fields=" .. fields .. "&purpose=" .. purpose)
  elseif operation == "lookup" then
    return wrk.format("POST", "/v1/citizens/lookup", nil,
      '{"national_id":"' .. pick() .. '","purpose":"' .. purpose .. '"}')
  end
  local ids = {}
  for i = 1, batch do ids[i] = '"' .. pick() .. '"' end
  return wrk.format("POST", "/v1/citizens/batch-get", nil,
    '{"ids":[' .. table.concat(ids, ",") .. '],"fields":["' .. fields:gsub(",", '","') ..
    '"],"purpose":"' .. purpose .. '"}')
end
"""


@dataclass
class Store:
    """One register of ``citizens`` on one database, and what loading it cost."""

    kind: str
    citizens: int
    folder: Path
    url: str
    env: dict[str, str]
    import_seconds: float = 0.0
    vacuum_seconds: float = 0.0
    size_bytes: int = 0
    # The sampled citizens (drawn at random from the whole register): ids and national ids.
    ids_file: Path | None = None
    national_ids_file: Path | None = None
    server: subprocess.Popen[bytes] | None = None
    bearer: dict[str, str] = field(default_factory=dict)
    base: str = ""
    figures: dict[str, list[dict[str, float]]] = field(default_factory=dict)


def _sizes(raw: str) -> list[int]:
    return [int(part) for part in raw.replace("_", "").split(",") if part.strip()]


async def _scratch(kind: str, folder: Path) -> str:
    if kind == "sqlite":
        return f"sqlite+aiosqlite:///{folder / 'register.db'}"
    url = await scratch_postgres()
    if url is None:
        raise RuntimeError("bench/scale needs PostgreSQL on 127.0.0.1:5432")
    return url


def _asyncpg_dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def _sqlite_path(url: str) -> Path:
    return Path(make_url(url).database or "")


async def _postgres(url: str, sql: str, *args: object) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(_asyncpg_dsn(url))
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


def _database_size(store: Store) -> int:
    if store.kind == "sqlite":
        path = _sqlite_path(store.url)
        return sum(p.stat().st_size for p in (path, Path(f"{path}-wal")) if p.exists())
    rows = asyncio.run(_postgres(store.url, "SELECT pg_database_size(current_database())"))
    return int(rows[0][0])


def _count(store: Store) -> int:
    if store.kind == "sqlite":
        with sqlite3.connect(_sqlite_path(store.url)) as conn:
            return int(conn.execute("SELECT count(*) FROM citizens").fetchone()[0])
    return int(asyncio.run(_postgres(store.url, "SELECT count(*) FROM citizens"))[0][0])


def _sample(store: Store, rng: random.Random) -> tuple[list[str], list[str]]:
    """A random sample of the register's rows, as national ids (from the file's rows) and
    the citizen ids the import gave them (found by the national id's blind index, computed
    with the store's own keys: a read of the loaded register, never a write). Every
    operation draws from these same citizens, so at every size the requests touch the same
    number of citizens and data keys; a lookup of someone else would also push a sampled
    citizen's data key out of the server's cache, at the large size only."""
    rows = rng.sample(range(store.citizens), min(SAMPLE, store.citizens))
    national_ids = [national_id(row) for row in rows]
    settings = Settings(
        database_url=store.url,
        data_dir=Path(store.env["TELLONCE_DATA_DIR"]),
        root_key=SecretStr(store.env["TELLONCE_ROOT_KEY"]),
    )
    keyring = Keyring.from_settings(settings)
    indexes = [keyring.blind_index("national_id", value) for value in national_ids]
    query = "SELECT blind_index, citizen_id FROM field_values WHERE field = 'national_id' AND is_current"
    if store.kind == "sqlite":
        found_rows: list[Any] = []
        with sqlite3.connect(_sqlite_path(store.url)) as conn:
            for start in range(0, len(indexes), 500):  # under SQLite's bound-parameter limit
                chunk = indexes[start : start + 500]
                found_rows += conn.execute(
                    f"{query} AND blind_index IN ({','.join('?' * len(chunk))})", chunk
                )
    else:
        found_rows = list(
            asyncio.run(_postgres(store.url, f"{query} AND blind_index = ANY($1::bytea[])", indexes))
        )
    found = {bytes(index): str(citizen) for index, citizen in found_rows}
    missing = sum(1 for index in indexes if index not in found)
    if missing:
        raise RuntimeError(
            f"{store.kind} {store.citizens:,}: {missing} sampled national ids are not registered"
        )
    return national_ids, [found[index] for index in indexes]


def _build(kind: str, citizens: int, root: Path, files: dict[int, Path]) -> Store:
    """A migrated store with the demo policies and ``citizens`` imported through the CLI."""
    folder = root / f"{kind}-{citizens}"
    folder.mkdir()
    url = asyncio.run(_scratch(kind, folder))
    env = server_env(url, folder)
    store = Store(kind, citizens, folder, url, env)
    upgrade(url)
    _cli(env, "policies", "apply", str(ROOT / "policies"))
    if citizens not in files:
        files[citizens] = write_register_file(root / f"register-{citizens}.csv", citizens)
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "service.cli", "import", "--department", DEPARTMENT, str(files[citizens])],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    store.import_seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"tellonce import failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    if kind == "postgres":
        # What an operator does after a bulk load: fresh statistics and a visibility map,
        # rather than autovacuum arriving in the middle of the timed reads.
        started = time.perf_counter()
        asyncio.run(_postgres(url, "VACUUM (ANALYZE)"))
        store.vacuum_seconds = time.perf_counter() - started
    store.size_bytes = _database_size(store)
    count = _count(store)
    if count != citizens:
        raise RuntimeError(f"{kind}: imported {citizens:,} citizens, the register holds {count:,}")
    # A reproducible sample, not a secret.
    national_ids, ids = _sample(store, random.Random(citizens))
    store.ids_file = folder / "ids.txt"
    store.ids_file.write_text("\n".join(ids) + "\n")
    store.national_ids_file = folder / "national-ids.txt"
    store.national_ids_file.write_text("\n".join(national_ids) + "\n")
    print(
        f"  {kind} {citizens:>10,} citizens: import {store.import_seconds:7.1f} s "
        f"({citizens / store.import_seconds:8,.0f}/s)"
        + (f", VACUUM ANALYZE {store.vacuum_seconds:.1f} s" if kind == "postgres" else "")
        + f", database {store.size_bytes / 2**20:9,.1f} MiB"
    )
    return store


async def _explain_at_scale(store: Store) -> None:
    """The hot paths of ``tests/test_query_plans.py`` run on the loaded register and their
    statements explained there, PostgreSQL planning from the real statistics (sequential
    scans allowed, so it scans tables of a few rows, as it should): each scan is printed
    with its table's size, and the large tables must show index searches only."""
    data_dir = Path(store.env["TELLONCE_DATA_DIR"])
    statements = await capture_hot_paths(store.url, data_dir, store.env["TELLONCE_ROOT_KEY"])
    explained = await explain_all(store.url, statements, seqscan=True)
    rows: dict[str, int] = {}
    if store.kind == "postgres":
        estimates = await _postgres(
            store.url, "SELECT relname, reltuples::bigint FROM pg_class WHERE relkind = 'r'"
        )
        rows = {str(name): int(count) for name, count in estimates}
    for path in HOT_PATHS:
        scans = sorted({scan for e in explained if e.statement.path == path for scan in e.scans})
        described = []
        for scan in scans:
            table = re.search(r" on (\w+)", scan)
            size = rows.get(table.group(1)) if table else None
            described.append(scan if size is None else f"{scan} (~{max(size, 0):,} rows)")
        print(f"    {path:40} {'; '.join(described) if described else 'index searches only'}")


def _serve(store: Store, consumer: dict[str, str]) -> None:
    port = _free_port()
    command = [sys.executable, "-m", "service.cli", "serve", "--port", str(port), "--no-worker"]
    store.server = subprocess.Popen(
        command, env=store.env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    store.base = f"http://127.0.0.1:{port}"
    _wait_healthy(f"{store.base}/healthz", store.server)
    store.bearer = {"Authorization": f"Bearer {_token(store.base, consumer)}"}
    assert store.ids_file is not None
    assert store.national_ids_file is not None
    citizen = store.ids_file.read_text().split()[0]
    read = httpx.get(
        f"{store.base}/v1/citizens/{citizen}",
        params={"fields": ",".join(FIELDS), "purpose": PURPOSE},
        headers=store.bearer,
        timeout=30,
    )
    found = httpx.post(
        f"{store.base}/v1/citizens/lookup",
        json={"national_id": store.national_ids_file.read_text().split()[0], "purpose": PURPOSE},
        headers=store.bearer,
        timeout=30,
    )
    if read.status_code != 200 or set(read.json()["fields"]) != set(FIELDS) or found.status_code != 200:
        raise RuntimeError(
            f"{store.kind} {store.citizens:,}: {read.status_code} {found.status_code} {read.text}"
        )


def _wrk(store: Store, operation: str, script: Path, seed: int) -> dict[str, float]:
    sample = store.national_ids_file if operation == "lookup" else store.ids_file
    env = {
        **os.environ,
        "BENCH_SCALE_SAMPLE_FILE": str(sample),
        "BENCH_SCALE_OPERATION": operation,
        "BENCH_SCALE_FIELDS": ",".join(FIELDS),
        "BENCH_SCALE_PURPOSE": PURPOSE,
        "BENCH_SCALE_BATCH": str(BATCH),
        "BENCH_SCALE_SEED": str(seed),
    }
    args = ["wrk", f"-t{min(2, CONNECTIONS)}", f"-c{CONNECTIONS}", "--latency", "-s", str(script)]
    args += ["-H", f"Authorization: {store.bearer['Authorization']}"]
    subprocess.run([*args, "-d2s", store.base], env=env, capture_output=True, check=True)
    out = subprocess.run(
        [*args, f"-d{DURATION}s", store.base], env=env, capture_output=True, text=True, check=True
    ).stdout
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    figures = {
        "rps": float(rps.group(1)) if rps else 0.0,
        "p50": _latency_ms(out, "50%"),
        "p99": _latency_ms(out, "99%"),
        "non2xx": float(errors.group(1)) if errors else 0.0,
    }
    if figures["non2xx"]:
        raise RuntimeError(
            f"{store.kind} {store.citizens:,} {operation}: {figures['non2xx']:.0f} non-2xx\n{out}"
        )
    return figures


def _median(store: Store, operation: str, key: str) -> float:
    return statistics.median(figures[key] for figures in store.figures[operation])


def run_kind(kind: str, sizes: list[int], root: Path, files: dict[int, Path]) -> list[Store]:
    stores: list[Store] = []
    try:
        for citizens in sizes:
            stores.append(_build(kind, citizens, root, files))
        print(f"  plans of the hot queries at {stores[-1].citizens:,} citizens:")
        asyncio.run(_explain_at_scale(stores[-1]))
        for store in stores:
            consumer = json.loads(
                _cli(store.env, "clients", "create", "--department", "dwp", "--roles", "consumer", "--json")
            )
            _serve(store, consumer)
        script = root / "scale.lua"
        script.write_text(_WRK_SCRIPT)
        # In turns, so drift in the machine's load falls on every size alike.
        for round_number in range(ROUNDS):
            for operation in OPERATIONS:
                for store in stores:
                    figures = _wrk(store, operation, script, seed=round_number + 1)
                    store.figures.setdefault(operation, []).append(figures)
        return stores
    finally:
        for store in stores:
            if store.server is not None:
                store.server.terminate()
                try:
                    store.server.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    store.server.kill()
            if kind == "postgres":
                asyncio.run(drop_postgres(store.url))
            shutil.rmtree(store.folder, ignore_errors=True)


def report(kind: str, stores: list[Store]) -> None:
    print(
        f"\n{kind} (wrk -c{CONNECTIONS}, {DURATION} s each, median of {ROUNDS} rounds; batch-get of {BATCH}):"
    )
    print(f"  {'citizens':>10} {'operation':13} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8}")
    for store in stores:
        for operation in OPERATIONS:
            print(
                f"  {store.citizens:>10,} {operation:13} {_median(store, operation, 'rps'):8.0f} "
                f"{_median(store, operation, 'p50'):8.2f} {_median(store, operation, 'p99'):8.2f}"
            )
    for store in stores:
        per_million = store.size_bytes / store.citizens * 1_000_000 / 2**30
        rate = store.citizens / store.import_seconds
        print(
            f"  database at {store.citizens:,} citizens: {store.size_bytes / 2**20:,.1f} MiB, "
            f"{per_million:.2f} GiB per million citizens; import {rate:,.0f}/s"
        )
    if len(stores) < 2:
        return
    base, largest = stores[0], stores[-1]
    # What each further million citizens costs, without the fixed part (schema, catalog,
    # policies, clients) that dominates a small store.
    added = (largest.size_bytes - base.size_bytes) / (largest.citizens - base.citizens) * 1_000_000
    print(f"  each further million citizens: {added / 2**30:.2f} GiB ({kind})")
    for operation in OPERATIONS:
        for key in ("p50", "p99"):
            goals.check(
                f"issue 17.2 {operation} {key} at {largest.citizens:,} over {base.citizens:,} ({kind})",
                _median(largest, operation, key) / _median(base, operation, key),
                WITHIN,
                at_most=True,
            )


def main() -> None:
    if shutil.which("wrk") is None:
        print("bench/scale needs wrk: apt-get install wrk")
        return
    print(f"at the start: {goals.load_average()}")
    root = Path(tempfile.mkdtemp(prefix="tellonce-bench-scale-", dir=os.environ.get("BENCH_SCALE_DIR")))
    files: dict[int, Path] = {}
    try:
        for kind, raw in SIZES.items():
            sizes = _sizes(raw)
            if sizes:
                report(kind, run_kind(kind, sizes, root, files))
                print(f"  {goals.load_average()}")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"\nat the end: {goals.load_average()}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--sqlite", help="sizes on SQLite, comma-separated (empty: skip)")
    parser.add_argument("--postgres", help="sizes on PostgreSQL, comma-separated (empty: skip)")
    options = parser.parse_args()
    if options.sqlite is not None:
        SIZES["sqlite"] = options.sqlite
    if options.postgres is not None:
        SIZES["postgres"] = options.postgres
    main()
