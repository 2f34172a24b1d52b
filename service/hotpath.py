"""The hottest routes served as plain ASGI, beside their FastAPI declarations.

FastAPI's per-request machinery (matching the route through every included router,
resolving each dependency level, validating the parameters, re-validating the returned
model) was about half of the event loop's time on the secured read
(``bench/README.md``, "Where a secured read's time went"). ``HotRoutes`` serves a few
routes (``GET /v1/citizens/{citizen_id}``, ``GET /v1/catalog``) with a handler that calls
the very functions the declared route's dependencies and endpoint call, in the same
order: the records service, ``get_principal``, the request facts, the records read. So
there is one access path and one rule in one place; only the plumbing differs.

The FastAPI route stays declared, and it is what the OpenAPI document describes. A hot
handler checks the route's parameters against the same constraints and returns None
when any fails, before anything else runs; the request then goes to the declared route,
which answers with FastAPI's own 422 (or the 401 or 503 its dependencies raise first).
Errors a hot handler raises go to the app's exception handlers, as a route's would; what
none handles goes on to the 500 handler.

The middleware sits inside the request-id, metrics and body-limit middleware, so hot
requests are counted, logged and traced under their route template like any other.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.routing import APIRoute, APIRouter
from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

HotHandler = Callable[[Request], Awaitable[Response | None]]


@dataclass(frozen=True)
class HotRoute:
    """A GET route served by ``handler``; ``route`` is its FastAPI declaration, which names
    it in metrics and traces and answers what the handler declines."""

    route: APIRoute
    handler: HotHandler
    pattern: re.Pattern[str]

    @classmethod
    def of(cls, router: APIRouter, endpoint: Callable[..., Any], handler: HotHandler) -> HotRoute:
        """The hot route for the declared GET route of ``endpoint`` in ``router``."""
        for route in router.routes:
            if isinstance(route, APIRoute) and route.endpoint is endpoint and "GET" in (route.methods or ()):
                # Starlette's own pattern for the template, so both match the same paths.
                pattern, _format, _convertors = compile_path(route.path)
                return cls(route, handler, pattern)
        raise LookupError(f"no GET route for {endpoint.__name__}")


async def stand_in(request: Request, dependency: Callable[..., Any]) -> Any:
    """``dependency(request)``, or the stand-in ``app.dependency_overrides`` holds for it,
    as the declared route would resolve it (tests act as a client this way). A stand-in
    takes the request or nothing, and may be sync or async."""
    overrides: dict[Callable[..., Any], Callable[..., Any]] = request.app.dependency_overrides
    override = overrides.get(dependency) if overrides else None
    if override is None:
        return await dependency(request)
    result = override(request) if inspect.signature(override).parameters else override()
    return await result if inspect.isawaitable(result) else result


class HotRoutes:
    """Serve ``routes`` directly; everything else, and what a hot handler declines, goes on
    to the app."""

    def __init__(self, app: ASGIApp, routes: Sequence[HotRoute]) -> None:
        self.app = app
        self.routes = tuple(routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "GET" or scope.get("root_path"):
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        for hot in self.routes:
            match = hot.pattern.match(path)
            if match is not None:
                break
        else:
            await self.app(scope, receive, send)
            return
        scope["path_params"] = match.groupdict()
        scope["route"] = hot.route
        scope["endpoint"] = hot.route.endpoint
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = True
            await send(message)

        request = Request(scope, receive, tracking_send)
        try:
            response = await hot.handler(request)
            if response is None:
                await self.app(scope, receive, send)
                return
            await response(scope, receive, tracking_send)
        except Exception as exc:
            handler = _exception_handler(request.app, exc)
            if handler is None or started:
                raise
            await (await handler(request, exc))(scope, receive, send)


def _exception_handler(app: FastAPI, exc: Exception) -> Callable[..., Any] | None:
    """The app's handler for ``exc``, as Starlette's exception middleware finds it; not the
    one for ``Exception``, which the outermost (server error) middleware runs."""
    for kind in type(exc).__mro__:
        if kind is Exception:
            return None
        handler = app.exception_handlers.get(kind)
        if handler is not None:
            return handler
    return None
