"""Citizens and their field values: the one access path to citizen data."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from service.records.store import store_on


@asynccontextmanager
async def records_lifecycle(app: FastAPI) -> AsyncIterator[None]:
    """The read path's raw-driver store, on the app's ``DriverReads`` (which
    ``service.db.driver_reads_lifecycle`` opens and closes)."""
    app.state.records_store = store_on(app.state.driver_reads)
    yield
