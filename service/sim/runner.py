"""The demo's run against a live server: department systems, the timed life events, the
notifications that follow, and the report's figures (usage report, audit verification).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

import httpx

from service.audit.value import value_by_owner
from service.sim import notifications, scenarios
from service.sim.client import DepartmentClient
from service.sim.population import Person
from service.sim.report import DemoReport
from service.sim.scenarios import DemoCitizen, Government
from service.sim.setup import DemoClients
from service.sim.tally import Tally
from service.sim.webhooks import WebhookReceivers

# Concurrent department systems living through events, and handlers acting on notifications.
LIFE_WORKERS = 10
NOTIFICATION_HANDLERS = 6
MAX_IN_FLIGHT = 16
# After the traffic stops: wait for notifications until none came for QUIET seconds.
SETTLE_QUIET_SECONDS = 1.5
SETTLE_LIMIT_SECONDS = 20.0


async def run_scenarios(
    base_url: str,
    clients: DemoClients,
    people: Sequence[Person],
    citizen_ids: Sequence[str],
    *,
    duration: float,
    seed: int,
) -> DemoReport:
    """Live through ``duration`` seconds of life events and return the report's figures
    (without the audit verification, which the caller runs once traffic has stopped)."""
    tally = Tally()
    # A bound on requests in flight, so the demo measures the service rather than queueing.
    limits = httpx.Limits(max_connections=MAX_IN_FLIGHT, max_keepalive_connections=MAX_IN_FLIGHT)
    async with (
        httpx.AsyncClient(base_url=base_url, timeout=30.0, limits=limits) as http,
        WebhookReceivers().running() as receivers,
    ):
        gov = Government(
            systems={d: DepartmentClient(http, c, tally) for d, c in clients.systems.items()},
            owners={d: DepartmentClient(http, c, tally) for d, c in clients.owners.items()},
            auditor=DepartmentClient(http, clients.auditor, tally),
            citizens=[DemoCitizen(p, i) for p, i in zip(people, citizen_ids, strict=True)],
            tally=tally,
            receivers=receivers,
            seed=seed,
        )
        events_available = await notifications.subscribe_all(gov)
        feeds = notifications.FEED_SUBSCRIBERS if events_available else ()
        background = [asyncio.create_task(notifications.poll_feed(gov, d)) for d in feeds] + [
            asyncio.create_task(notifications.handle_deliveries(gov)) for _ in range(NOTIFICATION_HANDLERS)
        ]
        try:
            loop = asyncio.get_running_loop()
            started = loop.time()
            await scenarios.live(gov, duration, LIFE_WORKERS)
            seconds = loop.time() - started
            if events_available:
                await scenarios.settle(gov, quiet=SETTLE_QUIET_SECONDS, limit=SETTLE_LIMIT_SECONDS)
        finally:
            for task in background:
                task.cancel()
            for task in background:
                with contextlib.suppress(asyncio.CancelledError, httpx.HTTPError):
                    await task
        usage = await gov.auditor.usage()
    return DemoReport(
        citizens=len(citizen_ids),
        seconds=seconds,
        tally=tally,
        value_by_owner=value_by_owner(usage),
        events_available=events_available,
    )
