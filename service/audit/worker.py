"""``tellonce worker``'s audit part: the sequencer loop until SIGINT or SIGTERM."""

from __future__ import annotations

import asyncio
import signal

from service.audit.service import make_sequencer
from service.config import Settings
from service.db import create_engine


async def run_worker(settings: Settings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    engine = create_engine(settings.database_url)
    try:
        await make_sequencer(settings, engine).run(stop)
    finally:
        await engine.dispose()
