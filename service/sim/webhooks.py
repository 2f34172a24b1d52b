"""Small webhook receivers on a loopback port, one path per department.

Each receiver checks the Standard Webhooks signature (``tellonce_client.WebhookVerifier``)
with the secret its subscription
returned, refuses anything unsigned or forged with 401, and hands the event's ``data`` to
the department's queue. The department acts on it from there (reads the new value for a
purpose, or writes its own field), as its real system would.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from tellonce_client import WebhookVerificationError, WebhookVerifier

logger = logging.getLogger("tellonce.sim")
STARTUP_SECONDS = 10.0


@dataclass
class Delivery:
    """One verified notification: who got it, how, and the event's data object."""

    department: str
    channel: str
    data: dict[str, Any]


@dataclass
class WebhookReceivers:
    """The receiving end of every department's webhook subscription."""

    host: str = "127.0.0.1"
    port: int = 0
    deliveries: asyncio.Queue[Delivery] = field(default_factory=asyncio.Queue)
    # A department may hold several subscriptions, each with its own signing secret.
    verifiers: dict[str, list[WebhookVerifier]] = field(default_factory=dict)
    refused: int = 0

    def url_for(self, department: str) -> str:
        return f"http://{self.host}:{self.port}/hooks/{department}"

    def trust(self, department: str, secret: str) -> None:
        """Accept deliveries to ``department`` signed with ``secret`` (a ``whsec_...`` string)."""
        self.verifiers.setdefault(department, []).append(WebhookVerifier(secret))

    async def _receive(self, request: Request) -> Response:
        department = request.path_params["department"]
        verifiers = self.verifiers.get(department)
        body = await request.body()
        if not verifiers:
            self.refused += 1
            return Response(status_code=404)
        if not any(_verifies(verifier, body, dict(request.headers)) for verifier in verifiers):
            self.refused += 1
            return Response(status_code=401)
        try:
            message = json.loads(body)
            data = message["data"]
        except (ValueError, KeyError, TypeError):
            return Response(status_code=400)
        if isinstance(data, dict):
            await self.deliveries.put(Delivery(department, "webhook", data))
        return Response(status_code=204)

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/hooks/{department}", self._receive, methods=["POST"])])

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[WebhookReceivers]:
        """Serve until the block ends. The port is bound first, so ``url_for`` is final."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(self.app(), log_level="warning", access_log=False, lifespan="off")
        server = uvicorn.Server(config)
        task = asyncio.create_task(server.serve(sockets=[sock]))
        try:
            deadline = asyncio.get_running_loop().time() + STARTUP_SECONDS
            while not server.started:
                if task.done():
                    task.result()
                if asyncio.get_running_loop().time() > deadline:
                    raise RuntimeError("the webhook receivers did not start")
                await asyncio.sleep(0.01)
            yield self
        finally:
            server.should_exit = True
            with contextlib.suppress(asyncio.CancelledError):
                await task
            sock.close()


def _verifies(verifier: WebhookVerifier, body: bytes, headers: dict[str, str]) -> bool:
    try:
        verifier.verify(headers, body)
    except WebhookVerificationError:
        return False
    return True
