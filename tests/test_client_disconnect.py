"""A client that closes its connection while its body is read ends a refusal, not an
unhandled error: no traceback logged for something any caller can do at will (and the
read deadline of ``service.read_deadline`` does to every client too slow)."""

from __future__ import annotations

import logging

import pytest
from fastapi import FastAPI
from starlette.types import Message

# The forms the app reads itself (``request.form()``): the token endpoint's, the console's.
FORM = [(b"content-type", b"application/x-www-form-urlencoded"), (b"content-length", b"100")]


async def gone_mid_body(app: FastAPI, path: str) -> list[Message]:
    """POST ``path`` a first part of its body, then the client is gone."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"testserver"), *FORM],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }
    incoming: list[Message] = [
        {"type": "http.request", "body": b"grant_type=client_credentials&client_id=", "more_body": True},
        {"type": "http.disconnect"},
    ]
    sent: list[Message] = []

    async def receive() -> Message:
        return incoming.pop(0) if len(incoming) > 1 else incoming[0]

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent


@pytest.mark.parametrize("path", ["/oauth/token"])
async def test_a_client_gone_mid_body_is_a_refusal_not_an_unhandled_error(
    app: FastAPI, path: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        sent = await gone_mid_body(app, path)
    start = next(m for m in sent if m["type"] == "http.response.start")
    assert start["status"] < 500
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
