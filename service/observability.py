"""Request ids, structured JSON logs and Prometheus metrics.

One pure ASGI middleware gives every request an id (kept in a context variable so that
every log line carries it), times it, and counts it by route template and status. It
logs the method, the route template and the status; never a request body, path or query
(a caller may put a national id in either). The server span, when tracing is on, gets
the same template in place of the path and query it was sent.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
from collections.abc import Iterable
from contextvars import ContextVar, Token
from datetime import UTC, datetime
from typing import Any

from fastapi.routing import RouteContext
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import tracing

_request_id: ContextVar[str] = ContextVar("tellonce_request_id", default="-")
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{8,64}$")

access_logger = logging.getLogger("tellonce.access")


def current_request_id() -> str:
    return _request_id.get()


# The attributes every log record has; any other one was passed by the call in ``extra``
# (but for uvicorn's ``color_message``, its message again with terminal colour codes).
_RECORD_ATTRIBUTES = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "color_message"}


def _extra(record: logging.LogRecord) -> dict[str, Any]:
    """What the call passed in ``extra`` (the subject a throttle refuses, an agreement's id
    and version...): the line's facts, which both formats write."""
    return {key: value for key, value in record.__dict__.items() if key not in _RECORD_ATTRIBUTES}


class JsonFormatter(logging.Formatter):
    """One JSON object per line, always with the request id."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None) or current_request_id(),
        }
        for key, value in _extra(record).items():
            entry.setdefault(key, value)
        entry.update(tracing.log_fields())
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """Plain lines, for ``TELLONCE_LOG_JSON=false``: the message, then ``request_id=`` (as
    every JSON line has it) and ``key=value`` for each fact passed in ``extra``."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        facts = {"request_id": getattr(record, "request_id", None) or current_request_id()}
        for key, value in _extra(record).items():
            facts.setdefault(key, value)
        return super().formatMessage(record) + "".join(f" {key}={value}" for key, value in facts.items())


def configure_logging(level: str = "INFO", json_lines: bool = True) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if json_lines:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter())
    root = logging.getLogger("tellonce")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


def uvicorn_log_config(json_lines: bool = True) -> dict[str, Any]:
    """uvicorn's ``log_config`` for ``tellonce serve``: its own lines (start-up, shut-down,
    its errors) in the format of tellonce's, so that standard error holds one kind of line.
    uvicorn sets their level from its ``log_level``."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"tellonce": {"()": JsonFormatter if json_lines else TextFormatter}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "tellonce",
                "stream": "ext://sys.stderr",
            }
        },
        "loggers": {"uvicorn": {"handlers": ["stderr"], "level": "INFO", "propagate": False}},
    }


class Metrics:
    """The process's Prometheus registry; one per app so tests stay independent.

    Every tellonce metric is defined here, once (the witness gate adds its checkpoint age
    gauge where witnesses are configured); the names are those ``deploy/``'s alert rules
    and dashboard, the README and ``docs/operations.md`` use.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "tellonce_http_requests",
            "HTTP requests by route template, method and status.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "tellonce_http_request_duration_seconds",
            "HTTP request latency by route template and method.",
            ["route", "method"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
        )
        self.auth_failures = Counter(
            "tellonce_auth_failures",
            "Failed client authentications, by endpoint (token or console).",
            ["endpoint"],
            registry=self.registry,
        )
        self.auth_throttled = Counter(
            "tellonce_auth_throttled",
            "Authentication attempts refused with 429 after repeated failures, by endpoint.",
            ["endpoint"],
            registry=self.registry,
        )
        self.verify_probing = Counter(
            "tellonce_verify_probing",
            "verify requests repeating open claims on one citizen's field in a day, by consumer and "
            "field; limited is true when the daily limit refused them (429).",
            ["consumer", "field", "limited"],
            registry=self.registry,
        )

        # Beyond HTTP: the audit writer's batches and the dispatcher's dead letters, counted
        # as they happen in this process, and gauges set at each scrape by
        # ``service.health`` (sequencer lag, outbox backlog, deliveries, pool use).
        self.audit_batch_entries = Histogram(
            "tellonce_audit_writer_batch_entries",
            "Entries per committed audit-writer batch (group commit); its _count is the batches committed.",
            registry=self.registry,
            buckets=(1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2000, 5000),
        )
        self.audit_batch_failures = Counter(
            "tellonce_audit_batches_failed",
            "Audit-writer batches that failed to commit (their requests got 503, no data released).",
            registry=self.registry,
        )
        self.webhook_dead_letters = Counter(
            "tellonce_webhook_dead_letters",
            "Webhook deliveries this process moved to the dead-letter state (retries exhausted).",
            registry=self.registry,
        )
        self.sequencer_lag = Gauge(
            "tellonce_audit_sequencer_lag_entries",
            "Audit entries written but not yet in the Merkle tree.",
            registry=self.registry,
        )
        self.outbox_backlog = Gauge(
            "tellonce_events_outbox_backlog",
            "Outbox events not yet turned into deliveries, summed over active webhook subscriptions.",
            registry=self.registry,
        )
        self.deliveries = Gauge(
            "tellonce_webhook_deliveries",
            "Webhook deliveries in the database by status, as of the scrape (dead: retries "
            "exhausted; pending: not yet delivered).",
            ["status"],
            registry=self.registry,
        )
        self.pool_in_use = Gauge(
            "tellonce_db_pool_connections_in_use",
            "Database connections in use in this process: checked out of the request pool, "
            "and held by the audit writer (out of its pool, or its one SQLite connection "
            "while a batch is written).",
            ["pool"],
            registry=self.registry,
        )

        self.agreements_refused = Counter(
            "tellonce_policy_agreements_refused",
            "Stored agreement versions the policy compiler refused (a missing or bad owner "
            "signature, or content that no longer parses), counted at every compile.",
            registry=self.registry,
        )

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


# The attribute ``name_route_templates`` sets on a route served under a prefix.
_SERVED_TEMPLATE = "tellonce_served_template"


def name_route_templates(routes: Iterable[RouteContext]) -> None:
    """Give each route that a router includes under a prefix the template it is served at;
    ``routes``: FastAPI's walk of an app's routes (``service.app.declared_routes``).

    FastAPI (0.165) puts the route as declared in the request's scope, so a console page
    declared as ``/agreements`` in a router the console includes under ``/console`` was
    counted and logged as ``/agreements``. The attribute is set on the route as declared,
    which every app made in the process shares; the prefixes are fixed, so an app made
    again sets the same values."""
    for context in routes:
        route, served = context.original_route, context.path_format
        if served and getattr(route, "path_format", None) != served:
            setattr(route, _SERVED_TEMPLATE, served)


# The methods counted by name; any other (h11 passes any token a client sends as the
# method, and each new label value would be a new series kept for the process's life) is
# counted as "other".
COUNTED_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"})


def _counted_method(scope: Scope) -> str:
    method = scope.get("method", "-")
    return method if method in COUNTED_METHODS else "other"


def _route_template(scope: Scope) -> str:
    # The template without converters ("/v1/audit/tile/{tile}", not "{tile:path}"), as the
    # OpenAPI document names it, with the prefixes it is served under.
    route = scope.get("route")
    path = (
        getattr(route, _SERVED_TEMPLATE, None)
        or getattr(route, "path_format", None)
        or getattr(route, "path", None)
    )
    return str(path) if path else "unmatched"


class _RequestIds:
    """New request ids: 128 random bits from the operating system as 32 hex digits, as
    ``uuid4().hex`` gave, drawn 256 ids at a time: one ``getrandom`` call per request was
    nearly 2% of the secured read's time on the event loop (bench/README.md). A forked child
    draws its own."""

    BLOCK = 256

    def __init__(self) -> None:
        self._drawn = ""
        self._next = 0
        os.register_at_fork(after_in_child=self._forget)

    def _forget(self) -> None:
        self._drawn, self._next = "", 0

    def __call__(self) -> str:
        start = self._next
        if start >= len(self._drawn):
            self._drawn, start = os.urandom(16 * self.BLOCK).hex(), 0
        self._next = start + 32
        return self._drawn[start : start + 32]


_new_request_id = _RequestIds()


class RequestContext:
    """What every request gets: an id (from a valid ``X-Request-ID``, else a new one) in a
    context variable and the scope's state, then, when it ends, its count, its latency and
    one access log line. ``RequestContextMiddleware`` wraps the app with it; the hot routes
    in front of the app (``service.hotpath``) call it themselves."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        # prometheus_client looks a labelled child up under a lock on every ``labels()``
        # call; the few (route, method, status) combinations are kept here instead.
        self._counted: dict[tuple[str, str, str], Any] = {}
        self._timed: dict[tuple[str, str], Any] = {}

    def begin(self, scope: Scope) -> tuple[str, Token[str]]:
        """The request's id, set for its log lines; ``end`` with the token returned."""
        request_id = _new_request_id()
        for name, value in scope.get("headers", ()):
            if name == b"x-request-id":
                candidate = value.decode("latin-1")
                if _VALID_REQUEST_ID.match(candidate):
                    request_id = candidate
                break
        token = _request_id.set(request_id)
        scope.setdefault("state", {})["request_id"] = request_id
        tracing.annotate_request(request_id)
        return request_id, token

    def end(self, scope: Scope, token: Token[str], status: int, started: float) -> None:
        elapsed = time.perf_counter() - started
        route = _route_template(scope)
        # A 500's answer is sent by Starlette's error middleware, outside this one: its
        # span is still open here.
        tracing.name_request_route(route)
        method = _counted_method(scope)
        key = (route, method, str(status))
        counter = self._counted.get(key)
        if counter is None:
            counter = self._counted[key] = self.metrics.requests.labels(*key)
        counter.inc()
        timer = self._timed.get(key[:2])
        if timer is None:
            timer = self._timed[key[:2]] = self.metrics.latency.labels(route, method)
        timer.observe(elapsed)
        if access_logger.isEnabledFor(logging.INFO):  # its fields are not built for nothing
            access_logger.info(
                "request",
                extra={
                    "method": method,
                    "route": route,
                    "status": status,
                    "duration_ms": round(elapsed * 1000, 3),
                },
            )
        _request_id.reset(token)

    def abandon(self, token: Token[str]) -> None:
        """Forget a request begun here that another layer will count and log instead."""
        _request_id.reset(token)


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.context = RequestContext(metrics)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id, token = self.context.begin(scope)
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                # Before the body: the server span ends with it.
                if tracing.enabled():
                    tracing.name_request_route(_route_template(scope))
                headers = list(message.get("headers", ()))
                headers.append((b"x-request-id", request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            self.context.end(scope, token, status, started)
