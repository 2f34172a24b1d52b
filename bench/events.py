"""Tell-us-once events: from a committed write to a signed webhook at a receiver.

Real path: ``record_change`` in a transaction + commit + ``notify``; the dispatcher (its
real loop, in this process) fans the event out, claims it, re-checks the policy, appends
the durable audit entry, signs it (Standard Webhooks) and POSTs it to a receiver in
another process, which notes the arrival time.

Baseline, in the same run against the same receiver: a bare httpx POST of a body of the
same size (no outbox, policy, audit or signature).

Reported: p50 and p99 latency from the start of the write to arrival, with events paced
one every few milliseconds; and events delivered per second for a burst written as fast
as the outbox takes them. On SQLite and, if reachable, PostgreSQL.
"""

from __future__ import annotations

import asyncio
import base64
import secrets
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from bench._postgres import drop as drop_postgres
from bench._postgres import scratch_url as scratch_postgres
from service.auth.dependencies import Principal
from service.auth.facts import RequestFacts
from service.catalog import service as catalog_service
from service.catalog.loader import load_catalog
from service.config import Settings
from service.db import create_engine, utcnow
from service.events import service as events_service
from service.events.access import LivePolicy, OwnAuditSink
from service.events.dispatcher import Dispatcher
from service.events.notifier import EventNotifier
from service.events.schemas import SubscriptionIn
from service.events.service import EventsRuntime
from service.records.models import Citizen
from service.schema import upgrade_async

REPO = Path(__file__).resolve().parent.parent
LATENCY_EVENTS = 150
PACE_SECONDS = 0.01
BURST_EVENTS = 500
BURST_TRANSACTION = 50
CITIZENS = 200
CONCURRENCY = 20


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Receiver:
    def __init__(self) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench._webhook_receiver", str(self.port)], cwd=REPO
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                httpx.get(self.url, timeout=1)
                return
            except httpx.TransportError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("the webhook receiver did not start")

    async def arrivals(self, http: httpx.AsyncClient) -> dict[str, float]:
        received: dict[str, float] = (await http.get(self.url)).json()
        return received

    async def until(self, http: httpx.AsyncClient, keys: set[str], timeout: float = 60) -> dict[str, float]:
        deadline = time.monotonic() + timeout
        while True:
            arrived = await self.arrivals(http)
            if keys <= arrived.keys():
                return arrived
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {len(keys & arrived.keys())} of {len(keys)} webhooks arrived")
            await asyncio.sleep(0.05)

    async def reset(self, http: httpx.AsyncClient) -> None:
        await http.delete(self.url)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


async def _prepare(
    url: str, data_dir: Path, receiver: Receiver
) -> tuple[EventsRuntime, OwnAuditSink, list[str]]:
    await upgrade_async(url)
    settings = Settings(
        env="test",
        database_url=url,
        data_dir=data_dir,
        root_key=base64.b64encode(secrets.token_bytes(32)).decode(),  # type: ignore[arg-type]
        webhook_allow_private=True,
        run_workers=False,
        log_level="WARNING",
    )
    engine = create_engine(url)
    async with AsyncSession(engine) as session:
        await catalog_service.store(
            session, load_catalog(REPO / "tests" / "fixtures" / "policies"), author="bench"
        )
        await session.commit()
    citizens = [str(uuid.uuid4()) for _ in range(CITIZENS)]
    now = utcnow()
    async with engine.begin() as conn:
        await conn.execute(
            insert(Citizen),
            [
                {
                    "id": c,
                    "status": "active",
                    "version": 1,
                    "registered_by": "bench",
                    "created_at": now,
                    "updated_at": now,
                }
                for c in citizens
            ],
        )
    audit = OwnAuditSink(engine)
    await audit.start()
    runtime = EventsRuntime(
        settings=settings, engine=engine, policy=LivePolicy(), audit=audit, notifier=EventNotifier()
    )
    # The register subscribing to its own field: the owner needs no agreement, so the real
    # policy engine permits it without a policy folder.
    caller = RequestFacts(principal=Principal.with_roles("bench", "register", "consumer"), request_id="bench")
    await events_service.create_subscription(
        runtime,
        caller,
        SubscriptionIn(fields=["address"], purpose="civil-registration", webhook_url=receiver.url),
    )
    return runtime, audit, citizens


async def _write(engine: AsyncEngine, citizen_id: str) -> str:
    async with engine.begin() as conn:
        return await events_service.record_change(
            conn, citizen_id=citizen_id, fields=["address"], owner="register"
        )


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


async def _events(
    runtime: EventsRuntime, citizens: list[str], receiver: Receiver, http: httpx.AsyncClient
) -> dict[str, Any]:
    dispatcher = Dispatcher(runtime, batch_size=200, concurrency=CONCURRENCY)
    stop = asyncio.Event()
    task = asyncio.create_task(dispatcher.run(stop))
    try:
        await receiver.reset(http)
        written: dict[str, float] = {}
        for n in range(LATENCY_EVENTS):
            started = time.time()
            event_id = await _write(runtime.engine, citizens[n % len(citizens)])
            events_service.notify(runtime.notifier)
            written[event_id] = started
            await asyncio.sleep(PACE_SECONDS)
        arrived = await receiver.until(http, set(written))
        latencies = [arrived[e] - written[e] for e in written]
        await receiver.reset(http)

        burst: list[str] = []
        started = time.time()
        for first in range(0, BURST_EVENTS, BURST_TRANSACTION):
            async with runtime.engine.begin() as conn:
                for n in range(first, min(BURST_EVENTS, first + BURST_TRANSACTION)):
                    burst.append(
                        await events_service.record_change(
                            conn, citizen_id=citizens[n % len(citizens)], fields=["address"], owner="register"
                        )
                    )
            events_service.notify(runtime.notifier)
        arrived = await receiver.until(http, set(burst), timeout=120)
        elapsed = max(arrived.values()) - started
    finally:
        stop.set()
        await task
        await dispatcher.aclose()
    return {
        "p50": _percentile(latencies, 0.5),
        "p99": _percentile(latencies, 0.99),
        "per_second": BURST_EVENTS / elapsed,
    }


async def _baseline(receiver: Receiver, http: httpx.AsyncClient) -> dict[str, Any]:
    body = (
        b'{"type":"citizen.fields_changed","timestamp":"2026-11-29T08:00:00.000000Z",'
        b'"data":{"event_id":"' + str(uuid.uuid4()).encode() + b'",'
        b'"citizen_id":"' + str(uuid.uuid4()).encode() + b'","fields":["address"],"owner":"register",'
        b'"occurred_at":"2026-11-29T08:00:00.000000Z"}}'
    )
    await receiver.reset(http)
    sent: dict[str, float] = {}
    for n in range(LATENCY_EVENTS):
        key = f"latency-{n}"
        sent[key] = time.time()
        await http.post(
            receiver.url, content=body, headers={"x-bench-id": key, "content-type": "application/json"}
        )
        await asyncio.sleep(PACE_SECONDS)
    arrived = await receiver.until(http, set(sent))
    latencies = [arrived[k] - sent[k] for k in sent]
    limit = asyncio.Semaphore(CONCURRENCY)

    async def post(n: int) -> None:
        async with limit:
            await http.post(receiver.url, content=body, headers={"x-bench-id": f"burst-{n}"})

    started = time.time()
    await asyncio.gather(*(post(n) for n in range(BURST_EVENTS)))
    arrived = await receiver.until(http, {f"burst-{n}" for n in range(BURST_EVENTS)})
    elapsed = max(arrived[f"burst-{n}"] for n in range(BURST_EVENTS)) - started
    return {
        "p50": _percentile(latencies, 0.5),
        "p99": _percentile(latencies, 0.99),
        "per_second": BURST_EVENTS / elapsed,
    }


async def _run(label: str, url: str, receiver: Receiver) -> None:
    data_dir = Path(tempfile.mkdtemp(prefix="tellonce-bench-events-"))
    runtime, audit, citizens = await _prepare(url, data_dir, receiver)
    async with httpx.AsyncClient(trust_env=False, timeout=10) as http:
        try:
            real = await _events(runtime, citizens, receiver, http)
        finally:
            await audit.stop()
            await runtime.engine.dispose()
        bare = await _baseline(receiver, http)
    ms = 1000
    print(
        f"{label:<10} write->webhook p50 {real['p50'] * ms:6.1f} ms  p99 {real['p99'] * ms:6.1f} ms | "
        f"bare POST p50 {bare['p50'] * ms:5.1f} ms  p99 {bare['p99'] * ms:5.1f} ms | "
        f"ratio p50 {real['p50'] / bare['p50']:.1f}x  p99 {real['p99'] / bare['p99']:.1f}x"
    )
    print(
        f"{label:<10} delivered {real['per_second']:7,.0f} events/s ({BURST_EVENTS} events) | "
        f"bare POSTs {bare['per_second']:7,.0f}/s | "
        f"ratio {bare['per_second'] / real['per_second']:.1f}x slower"
    )


async def _main() -> None:
    receiver = Receiver()
    try:
        folder = Path(tempfile.mkdtemp(prefix="tellonce-bench-"))
        await _run("SQLite", f"sqlite+aiosqlite:///{folder / 'bench.db'}", receiver)
        url = await scratch_postgres()
        if url is None:
            print("PostgreSQL  not reachable on 127.0.0.1:5432: skipped")
            return
        try:
            await _run("PostgreSQL", url, receiver)
        finally:
            await drop_postgres(url)
    finally:
        receiver.stop()


def main() -> None:
    asyncio.run(_main())
