"""Citizens and their field values: the one access path to citizen data."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from service.records.store import open_store


@asynccontextmanager
async def records_lifecycle(app: FastAPI) -> AsyncIterator[None]:
    """The read path's long-lived raw-driver store, open as long as the app."""
    store = await open_store(app.state.settings.database_url)
    app.state.records_store = store
    try:
        yield
    finally:
        await store.close()
