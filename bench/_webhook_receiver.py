"""A webhook receiver for ``bench/events``, run in its own process so it does not share the
dispatcher's interpreter: it notes the wall-clock time each POST arrived, keyed by the
event id in the body (or the ``x-bench-id`` header for the baseline), and serves them at
``GET``; ``DELETE`` forgets them. A bare ASGI app under uvicorn, so the receiver is not
what the benchmark measures.

    python -m bench._webhook_receiver PORT
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import uvicorn

RECEIVED: dict[str, float] = {}


async def _body(receive: Any) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    method = scope["method"]
    body = await _body(receive)
    status, payload = 204, b""
    if method == "POST":
        arrived = time.time()
        headers = dict(scope["headers"])
        key = headers.get(b"x-bench-id")
        event_id = key.decode() if key else json.loads(body)["data"]["event_id"]
        RECEIVED.setdefault(event_id, arrived)
    elif method == "GET":
        status, payload = 200, json.dumps(RECEIVED).encode()
    elif method == "DELETE":
        RECEIVED.clear()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


def main() -> None:
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
