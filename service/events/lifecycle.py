"""The events domain inside ``serve``: the runtime on ``app.state`` and, unless
``TELLONCE_RUN_WORKERS`` is false, the webhook dispatcher as a background task."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from service.config import Settings
from service.events.access import AppAuditSink, LivePolicy
from service.events.dispatcher import Dispatcher
from service.events.notifier import feed_notifier, postgres_wakeups
from service.events.service import EventsRuntime


@asynccontextmanager
async def events_lifecycle(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    runtime = EventsRuntime(
        settings=settings,
        engine=app.state.database.engine,
        policy=LivePolicy(),
        audit=AppAuditSink(app.state),
        notifier=feed_notifier,
        # Looked up at each use: a test moves the app's clock forward.
        clock=lambda: app.state.clock(),
    )
    app.state.events = runtime
    # What ``events_service.notify(app.state)`` wakes after a commit (the consent and cases
    # endpoints and the console pass the app's state; the records write path calls it
    # with no argument and wakes the process-wide notifier, which this runtime uses too).
    app.state.events_notifier = runtime.notifier
    stop = asyncio.Event()
    dispatcher: Dispatcher | None = None
    task: asyncio.Task[None] | None = None
    if settings.run_workers:
        dispatcher = Dispatcher(runtime, on_dead=app.state.metrics.webhook_dead_letters.inc)
        app.state.dispatcher = dispatcher
        task = asyncio.create_task(
            app.state.schema_gate.run_when_ready(stop, dispatcher.run), name="events-dispatcher"
        )
    try:
        async with postgres_wakeups(
            settings.database_url, runtime.notifier, settings.db_pool_recycle_seconds
        ):
            yield
    finally:
        stop.set()
        if task is not None:
            await task
        if dispatcher is not None:
            await dispatcher.aclose()
