"""``create_app(settings)``: routers, middleware, error handlers and lifecycles."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager

from fastapi import FastAPI

# FastAPI's own layers, named so that the hot routes' front can check the stack is exactly
# what it stands in for (an upgrade that renames them fails here, loudly).
from fastapi._body_limit import AppBodyLimitMiddleware
from fastapi.routing import RouteContext, iter_route_contexts
from fastapi.telemetry._asgi import ExceptionTelemetryMiddleware
from starlette.middleware.errors import ServerErrorMiddleware
from starlette.types import Receive, Scope, Send

from service import __version__
from service.api_docs import install_docs
from service.audit import endpoints as audit_endpoints
from service.audit import service as audit_service
from service.auth import endpoints as auth_endpoints
from service.auth.runtime import TOKEN_PATH, auth_lifecycle
from service.bootstrap import production_overrides, production_refusals
from service.cases import endpoints as cases_endpoints
from service.catalog import endpoints as catalog_endpoints
from service.config import Settings, get_settings
from service.consent import endpoints as consent_endpoints
from service.console import router as console_router
from service.console import web as console_web
from service.crypto.keyring import Keyring
from service.db import Database, driver_reads_lifecycle, utcnow
from service.errors import (
    AllowedMethods,
    BodyLimitMiddleware,
    FailingWrites,
    HeadAsGetMiddleware,
    JsonBodyMiddleware,
    NamedPathMiddleware,
    RepeatedQueryMiddleware,
    install_error_handlers,
)
from service.events import endpoints as events_endpoints
from service.events.lifecycle import events_lifecycle
from service.health import router as health_router
from service.heap import freeze_startup_heap
from service.hotpath import HotFront, HotRoute, HotRoutes
from service.observability import (
    Metrics,
    RequestContext,
    RequestContextMiddleware,
    configure_logging,
    name_route_templates,
)
from service.openapi import install_openapi
from service.policy import endpoints as policy_endpoints
from service.records import endpoints as records_endpoints
from service.records import records_lifecycle
from service.schema import SchemaGate, head_revisions, known_revisions
from service.tracing import install_tracing

logger = logging.getLogger("tellonce.app")


class StartupRefused(RuntimeError):
    """Production settings this process will not run with (see ``service.bootstrap``)."""


@asynccontextmanager
async def schema_lifecycle(app: FastAPI) -> AsyncIterator[None]:
    """Checks the schema in the background (with backoff) so the loops below start only on a
    migrated database, while ``/readyz`` already answers."""
    gate = SchemaGate(app.state.database.engine)
    app.state.schema_gate = gate
    stop = asyncio.Event()
    task = asyncio.create_task(gate.wait(stop), name="schema-gate")
    try:
        yield
    finally:
        stop.set()
        await task


# Every router is included here and nowhere else.
ROUTERS = [
    health_router,
    catalog_endpoints.router,
    policy_endpoints.router,
    auth_endpoints.router,
    audit_endpoints.router,
    records_endpoints.router,
    cases_endpoints.router,
    consent_endpoints.router,
    events_endpoints.router,
    console_router.router,
]


def add_routes(app: FastAPI) -> None:
    """Every route the service serves, in the order they are matched."""
    for router in ROUTERS:
        app.include_router(router)
    install_openapi(app)
    install_docs(app)


@functools.cache
def declared_routes() -> tuple[RouteContext, ...]:
    """The routes ``add_routes`` declares, as FastAPI's walk of an app's routes sees them
    (the prefixes they are served under, their methods and parameters), for the ``Allow``
    header (``AllowedMethods``) and the route templates (``name_route_templates``).

    Walked once per process, on an app of its own: every app ``create_app`` makes declares
    the same routes, and the walk builds each route's dependency analysis (about 0.13 s),
    which an app's own routing otherwise builds only for the routers a request reaches."""
    app = FastAPI(docs_url=None, redoc_url=None, redirect_slashes=False)
    add_routes(app)
    return tuple(iter_route_contexts(app.routes))


def hot_routes() -> list[HotRoute]:
    """The routes served as plain ASGI beside their declarations (``service.hotpath``)."""
    records, catalog = records_endpoints, catalog_endpoints
    return [
        HotRoute.of(records.router, records.read_citizen, records.read_citizen_hot),
        HotRoute.of(catalog.router, catalog.get_catalog, catalog.get_catalog_hot),
    ]


# What lives as long as the app, entered in this order and closed in reverse: the schema
# gate (checks the schema in the background; the loops below wait for it), the raw-driver
# reads, the compiled-policy holder, the auth runtime (token issuer and verifier), the
# audit writer with, unless ``run_workers`` is false, the sequencer and (when witnesses
# are configured) the witness submitter, the records read store, and the events runtime
# with its PostgreSQL wake-ups and, unless ``run_workers`` is false, the webhook dispatcher.
Lifecycle = Callable[[FastAPI], AbstractAsyncContextManager[None]]
LIFECYCLES: list[Lifecycle] = []
LIFECYCLES.append(schema_lifecycle)
LIFECYCLES.append(driver_reads_lifecycle)
LIFECYCLES.append(policy_endpoints.policy_lifecycle)
LIFECYCLES.append(auth_lifecycle)
LIFECYCLES.append(audit_service.audit_lifecycle)
LIFECYCLES.append(records_lifecycle)
LIFECYCLES.append(events_lifecycle)


class App(FastAPI):
    """FastAPI, with the hot routes served in front of its middleware stack
    (``service.hotpath.HotFront``) while that stack is the one ``create_app`` builds, and
    every answer of the token endpoint marked never to be cached, whichever layer gives it
    (``auth.endpoints.never_cached``)."""

    front: HotFront | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == TOKEN_PATH:
            send = auth_endpoints.never_cached(send)
        front = self.front
        if front is not None and scope["type"] == "http" and await front.serve(self, scope, receive, send):
            return
        await super().__call__(scope, receive, send)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    configure_logging(settings.log_level, settings.log_json)
    refusals = production_refusals(settings)
    if refusals:
        raise StartupRefused("; ".join(refusals))
    for override in production_overrides(settings):
        logger.warning("production override in effect: %s", override)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            for lifecycle in LIFECYCLES:
                await stack.enter_async_context(lifecycle(app))
            if settings.freeze_startup_heap:
                freeze_startup_heap()
            yield
        await app.state.database.dispose()

    app = App(
        # /docs and /redoc are served by service/api_docs.py, from packaged assets.
        docs_url=None,
        redoc_url=None,
        # No redirect from "/path/" to "/path": Starlette's builds its Location from the
        # Host header, unauthenticated; a path with a stray slash is a 404 like any other.
        redirect_slashes=False,
        title="tellonce",
        version=__version__,
        summary="Tell us once: one register, owner-controlled sharing, every access audited.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.database = Database(settings)
    app.state.metrics = Metrics()
    app.state.schema_heads = head_revisions()
    app.state.schema_known = known_revisions()
    app.state.keyring = Keyring.from_settings(settings)
    # Looked up on every request with getattr(..., None): set from the start, since a
    # missing attribute costs Starlette an exception each time. The witnessing lifecycle
    # puts a gate here when witnesses are configured; the catalog endpoint its body.
    app.state.witness_gate = None
    app.state.served_catalog = None
    # Whether the process's writes are failing for storage reasons (/readyz reads it).
    app.state.failing_writes = FailingWrites()
    # What decisions, consents, delayed disclosure and access notices take as now; tests
    # move it forward.
    app.state.clock = utcnow

    install_error_handlers(app)
    add_routes(app)
    app.state.allowed_methods = AllowedMethods(declared_routes())
    app.state.unrouted_page = console_web.unrouted_page
    name_route_templates(declared_routes())
    # Innermost: a method the routes declared at a path's name do not serve is 405 (not
    # the request of a route whose parameter has that name's form; the hot routes decline
    # such names, so they reach this too), HEAD is answered as GET without the body (the
    # hot routes serve GET only, so a HEAD of theirs reaches the routes they stand beside),
    # a JSON body not in UTF-8 or naming a key twice is refused, and so is a query
    # parameter named twice (the hot routes decline such a request, so it reaches this too).
    app.add_middleware(NamedPathMiddleware, allowed_methods=app.state.allowed_methods)
    app.add_middleware(HeadAsGetMiddleware)
    app.add_middleware(JsonBodyMiddleware)
    app.add_middleware(RepeatedQueryMiddleware)
    # The hottest routes, inside the middleware below (``service.hotpath``).
    app.add_middleware(HotRoutes, routes=hot_routes())
    # add_middleware puts each new layer outside the ones before it, so the request context
    # (added last) is the outer one: the request id exists before the body limit can refuse.
    app.add_middleware(BodyLimitMiddleware, limit=settings.max_body_bytes, oauth_paths=[TOKEN_PATH])
    app.add_middleware(RequestContextMiddleware, metrics=app.state.metrics)
    # The layers the hot routes skip when served in front of them: Starlette's and FastAPI's
    # outermost three, then the two above. Tracing's middleware, when installed, wraps them
    # all, and the front then stands aside.
    app.front = HotFront(
        RequestContext(app.state.metrics),
        [
            ServerErrorMiddleware,
            ExceptionTelemetryMiddleware,
            AppBodyLimitMiddleware,
            RequestContextMiddleware,
            BodyLimitMiddleware,
        ],
    )
    # Off unless OTEL_EXPORTER_OTLP_ENDPOINT is set; its middleware wraps all of the above.
    install_tracing(app)
    return app
