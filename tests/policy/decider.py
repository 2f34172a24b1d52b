"""A long-lived process that decides through ``current_policy``, for the cross-process test.

It keeps one compiled-policy holder for its whole life (as a server process does), reads
one JSON command per line on stdin and answers one JSON line on stdout:
``{"decide": {...}}`` or ``{"revoke": "agreement-id"}``.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from service.config import Settings
from service.db import Database, utcnow
from service.policy import repository
from service.policy import service as policy_service
from service.policy.engine import RequestContext


async def handle(
    database: Database, holder: policy_service.PolicyHolder, command: dict[str, Any]
) -> dict[str, Any]:
    if "revoke" in command:
        async with database.sessions.begin() as session:
            row = await repository.current_version(session, command["revoke"])
            assert row is not None
            revoked = await policy_service.revoke(session, row, author="decider", reason="test")
            return {"revoked": revoked.version}
    ask = command["decide"]
    async with database.engine.connect() as conn:
        policy = await holder.current(conn)
    context = RequestContext(ask["purpose"], ask.get("case_ref"), utcnow(), ask.get("citizen_status"))
    decisions = policy.decide(ask["consumer"], ask["action"], ask["fields"], context)
    return {"epoch": policy.epoch, "decisions": {k: v.to_record() for k, v in decisions.items()}}


async def main(database_url: str) -> None:
    database = Database(Settings(env="test", database_url=database_url))
    holder = policy_service.PolicyHolder()
    loop = asyncio.get_running_loop()
    try:
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line:
                break
            answer = await handle(database, holder, json.loads(line))
            sys.stdout.write(json.dumps(answer) + "\n")
            sys.stdout.flush()
    finally:
        await database.dispose()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
