"""Citizens and their field values: the one access path to citizen data."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from service.records.reader import open_reader


@asynccontextmanager
async def records_lifecycle(app: FastAPI) -> AsyncIterator[None]:
    """The read path's long-lived raw-driver connections, open as long as the app."""
    reader = await open_reader(app.state.settings.database_url)
    app.state.records_reader = reader
    try:
        yield
    finally:
        await reader.close()
