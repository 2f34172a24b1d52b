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
``HotFront`` serves the same routes before the app's middleware stack, doing what those
layers do for a request without a body, as long as the stack is exactly them (not with
tracing on, whose middleware wraps the stack).
"""

from __future__ import annotations

import inspect
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.routing import APIRoute, APIRouter
from starlette.routing import compile_path
from starlette.types import ASGIApp, Receive, Scope, Send

from service.observability import RequestContext

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


def app_state(request: Request) -> dict[str, Any]:
    """The attributes of ``request.app.state``, as the dict Starlette's ``State`` keeps them
    in (``_state``): for reading on the hot path only; set them on ``app.state`` as usual.

    ``app.state.name`` first fails Python's own attribute lookup, then calls
    ``State.__getattr__``: about 0.6 us on this machine, and a secured read made a dozen such
    reads; ``app_state(request).get(name)`` is one dict read. (``getattr(app.state, name,
    None)`` is ``.get(name)``; ``app.state.name`` is ``[name]``, a KeyError where Starlette
    raised AttributeError.)"""
    parts: dict[str, Any] = request.app.state._state
    return parts


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
    to the app. In the app's middleware stack, inside the request-id, metrics and body-limit
    middleware; ``HotFront`` serves the same routes in front of that stack when it may."""

    def __init__(self, app: ASGIApp, routes: Sequence[HotRoute]) -> None:
        self.app = app
        self.routes = tuple(routes)

    def match(self, scope: Scope) -> HotRoute | None:
        """The hot route for ``scope``'s path (its parameters put in the scope), or None."""
        if scope["method"] != "GET" or scope.get("root_path") or DECLINED in scope:
            return None
        path: str = scope["path"]
        for hot in self.routes:
            match = hot.pattern.match(path)
            if match is not None:
                scope["path_params"] = match.groupdict()
                scope["route"] = hot.route
                scope["endpoint"] = hot.route.endpoint
                return hot
        return None

    async def respond(self, hot: HotRoute, scope: Scope, receive: Receive) -> Response | None:
        """The response of ``hot``'s handler, or of the app's handler for what it raised;
        None when the handler declines (the scope is then marked, and goes on to the declared
        route). What no handler of the app answers but ``Exception``'s propagates."""
        request = Request(scope, receive)
        try:
            response = await hot.handler(request)
        except Exception as exc:
            handler = _exception_handler(request.app, exc)
            if handler is None:
                raise
            return await handler(request, exc)  # type: ignore[no-any-return]
        if response is None:
            scope[DECLINED] = True
            # Not routed yet: routing puts the route that takes it in the scope, and a
            # refusal before any does (a 405 of a path's name) is not counted as this one's.
            for key in ("route", "endpoint", "path_params"):
                scope.pop(key, None)
        return response

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        hot = self.match(scope) if scope["type"] == "http" else None
        response = None if hot is None else await self.respond(hot, scope, receive)
        if response is None:
            await self.app(scope, receive, send)
            return
        await response(scope, receive, send)


# Set in the scope of a request a hot handler declined, so that it is not tried twice.
DECLINED = "tellonce.hot_declined"


class HotFront:
    """The hot routes in front of the app's middleware stack, doing that stack's work for
    them in one layer.

    For a hot GET, the stack's layers around ``HotRoutes`` (Starlette's server-error
    handler, FastAPI's exception telemetry and body limit, the request context and the body
    limit) cost about a tenth of a secured read's time, each wrapping
    ``send`` once more (bench/README.md). Here a request with no body gets its request id,
    count, latency and access log (``RequestContext``), the hot handler's response with
    ``X-Request-ID``, and on an error the app's own handlers, as the stack would give it.

    The front serves only while the app's built stack is exactly ``layers`` (outermost
    first) around its ``HotRoutes`` and FastAPI's native telemetry is off: with tracing
    installed (its middleware wraps the stack), or any other layer added, every request
    goes through the stack, where ``HotRoutes`` still serves the hot routes.

    Both are decided when the stack is built and again at most ``recheck_seconds`` later,
    not per request: FastAPI's telemetry check reads three environment variables through
    OpenTelemetry on every call (2 to 5% of the secured read's time on the event loop,
    bench/README.md). A tracer, meter or logger provider configured while the app serves
    therefore sends its requests through the stack within that time, and from a rebuilt
    stack at once."""

    # How long a decision that the front may serve stands before it is taken again.
    recheck_seconds = 1.0

    def __init__(self, context: RequestContext, layers: Sequence[type]) -> None:
        self.context = context
        self.layers = tuple(layers)
        self._stack: object = None
        self._hot: HotRoutes | None = None
        self._decided_at = 0.0
        # What the decision is timed by; tests move it on.
        self.clock: Callable[[], float] = time.monotonic

    def _routes(self, app: FastAPI) -> HotRoutes | None:
        """The stack's ``HotRoutes`` if the stack is exactly ``layers`` around it and
        FastAPI's telemetry is off, as decided at most ``recheck_seconds`` ago."""
        stack = app.middleware_stack
        now = self.clock()
        if stack is not self._stack or now - self._decided_at >= self.recheck_seconds:
            self._stack, self._hot, self._decided_at = stack, None, now
            if app._native_telemetry.enabled():
                return None
            layer: Any = stack
            for kind in self.layers:
                if type(layer) is not kind:
                    return None
                layer = getattr(layer, "app", None)
            if isinstance(layer, HotRoutes):
                self._hot = layer
        return self._hot

    async def serve(self, app: FastAPI, scope: Scope, receive: Receive, send: Send) -> bool:
        """Serve ``scope`` if it is a hot route's; False to send it through the stack."""
        hot_routes = self._routes(app)
        if hot_routes is None or app.root_path:
            return False
        for name, _value in scope["headers"]:
            if name in _BODY_HEADERS:
                return False
        hot = hot_routes.match(scope)
        if hot is None:
            return False
        scope["app"] = app
        started = time.perf_counter()
        request_id, token = self.context.begin(scope)
        status = 500
        try:
            try:
                response = await hot_routes.respond(hot, scope, receive)
            except Exception as exc:
                # As Starlette's server-error middleware: the app's 500 answer, then raised on
                # for the server to log.
                response = await _server_error(app, scope, receive, exc)
                status = response.status_code
                await response(scope, receive, send)
                raise
            if response is None:
                self.context.abandon(token)
                return False
            status = response.status_code
            if not any(name == b"x-request-id" for name, _value in response.raw_headers):
                response.raw_headers.append((b"x-request-id", request_id.encode()))
            await response(scope, receive, send)
        except BaseException:
            self.context.end(scope, token, status, started)
            raise
        self.context.end(scope, token, status, started)
        return True


_BODY_HEADERS = frozenset({b"content-length", b"transfer-encoding"})


async def _server_error(app: FastAPI, scope: Scope, receive: Receive, exc: Exception) -> Response:
    handler = app.exception_handlers.get(500) or app.exception_handlers.get(Exception)
    if handler is None:
        raise exc
    response = handler(Request(scope, receive), exc)
    return await response if inspect.isawaitable(response) else response


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
