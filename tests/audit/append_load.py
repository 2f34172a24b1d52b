"""A separate process that appends audit entries through its own AuditWriter.

Used by the two-process test: ``python -m tests.audit.append_load URL COUNT TAG``.
Prints the number of entries durably appended.
"""

from __future__ import annotations

import asyncio
import sys

from service.audit.writer import AuditWriter
from service.db import create_engine
from tests.fixtures.audit import make_entry


async def append(url: str, count: int, tag: str) -> int:
    engine = create_engine(url)
    writer = AuditWriter(engine)
    await writer.start()
    try:
        # Many concurrent tasks, in waves, so batches interleave with the other process.
        done = 0
        while done < count:
            wave = min(50, count - done)
            await asyncio.gather(
                *(
                    writer.append(make_entry(request_id=f"{tag}-{done + i}", client_id=tag))
                    for i in range(wave)
                )
            )
            done += wave
        return done
    finally:
        await writer.stop()
        await engine.dispose()


if __name__ == "__main__":
    sys.stdout.write(f"{asyncio.run(append(sys.argv[1], int(sys.argv[2]), sys.argv[3]))}\n")
