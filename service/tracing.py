"""OpenTelemetry traces: off unless ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``..._TRACES_ENDPOINT``) is set.

When on, the FastAPI app, its SQLAlchemy engines and the webhook dispatcher's httpx
client are instrumented, the per-request raw-driver reads are ``db.read`` spans
(``service.db``), and the access path adds its own spans (``auth``,
``policy.decide``, ``records.load``, ``crypto.decrypt``, ``audit.append``); the audit
writer's group commits are ``audit.batch`` spans linked to every request they carry.
Each server span carries ``tellonce.request_id``, and each log line written inside a span
carries its ``trace_id`` and ``span_id``, so a slow request in the logs leads to its trace
and back. A server span names its route by template, as the access log does: the path and
query it was sent are not kept (``name_request_route``). Spans are exported over OTLP/HTTP
with the SDK's standard ``OTEL_*`` variables.

When off, ``span`` returns a shared do-nothing context manager: the hot path pays one
global read per span.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, Span, Tracer

if TYPE_CHECKING:
    import httpx
    from fastapi import FastAPI
    from opentelemetry.sdk.trace import TracerProvider
    from sqlalchemy.ext.asyncio import AsyncEngine

TRACER_NAME = "tellonce"
REQUEST_ID_ATTRIBUTE = "tellonce.request_id"
# Probes and scrapes would drown the traces that matter.
EXCLUDED_URLS = "healthz,readyz,metrics"

_tracer: Tracer | None = None
_provider: TracerProvider | None = None
_OFF = contextlib.nullcontext()


def endpoint_configured() -> bool:
    return bool(
        os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )


def _otlp_provider() -> TracerProvider:
    """The process's provider, exporting in batches over OTLP/HTTP (made once)."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    global _provider
    if _provider is None:
        resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", "tellonce")})
        _provider = TracerProvider(resource=resource)
        _provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return _provider


def enabled() -> bool:
    return _tracer is not None


def install_tracing(app: FastAPI, provider: TracerProvider | None = None) -> bool:
    """Instrument ``app`` if tracing is on (or ``provider`` is given, as tests do)."""
    global _tracer, _provider
    if provider is None:
        if not endpoint_configured():
            return False
        provider = _otlp_provider()
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    _provider = provider
    _tracer = provider.get_tracer(TRACER_NAME)
    FastAPIInstrumentor.instrument_app(app, tracer_provider=provider, excluded_urls=EXCLUDED_URLS)
    instrument_engine(app.state.database.engine)
    return True


def uninstall_tracing() -> None:
    """Stop making spans in this process (tests switch tracing off again)."""
    global _tracer, _provider
    _tracer = None
    _provider = None


def instrument_engine(engine: AsyncEngine) -> None:
    """A span per SQL statement on ``engine``, when tracing is on."""
    if _provider is None:
        return
    from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor

    # skip_dep_check: the instrumentation declares "sqlalchemy < 2.1" while its engine-event
    # hooks work unchanged on 2.1 (tests/test_tracing.py sees the statement spans).
    SQLAlchemyInstrumentor().instrument(
        engine=engine.sync_engine, tracer_provider=_provider, skip_dep_check=True
    )


def instrument_httpx(client: httpx.AsyncClient) -> None:
    """A client span per outgoing request (webhook deliveries), when tracing is on."""
    if _provider is None:
        return
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

    HTTPXClientInstrumentor.instrument_client(client, tracer_provider=_provider)


def span(name: str, **attributes: Any) -> contextlib.AbstractContextManager[Any]:
    """A child span of the current one, or nothing when tracing is off."""
    if _tracer is None:
        return _OFF
    return _tracer.start_as_current_span(name, attributes=attributes)


@contextlib.contextmanager
def linked_span(name: str, links: list[Link], **attributes: Any) -> Iterator[Span | None]:
    """A new root span linked to ``links`` (a batch serving many requests)."""
    if _tracer is None:
        yield None
        return
    # An empty context: the batch is a root of its own, not a child of any one request.
    with _tracer.start_as_current_span(name, context=Context(), links=links, attributes=attributes) as made:
        yield made


def current_link() -> Link | None:
    """A link to the current span, to be joined by later work done on its behalf."""
    if _tracer is None:
        return None
    context = trace.get_current_span().get_span_context()
    return Link(context) if context.is_valid else None


def annotate_request(request_id: str) -> None:
    """Put the request id on the current (server) span."""
    if _tracer is None:
        return
    current = trace.get_current_span()
    if current.is_recording():
        current.set_attribute(REQUEST_ID_ATTRIBUTE, request_id)


# Where the ASGI instrumentation records the request's path and query as sent, under the
# old and the new HTTP semantic conventions.
_SENT_PATH_ATTRIBUTES = ("http.target", "url.path")
_SENT_URL_ATTRIBUTES = ("http.url", "url.full")
_SENT_QUERY_ATTRIBUTE = "url.query"


def name_request_route(route: str) -> None:
    """Put ``route``, the route template, where the current (server) span has the path.

    The ASGI instrumentation records the path and query string as they were sent: a caller
    who puts a national id where a citizen id belongs, or in a query parameter, would have
    it exported in plaintext. The span keeps what the access log keeps, the template (or
    "unmatched"); the query is dropped. Called when the request ends, before the span does."""
    if _tracer is None:
        return
    current = trace.get_current_span()
    if not current.is_recording():
        return
    recorded = getattr(current, "attributes", None) or {}
    for key in _SENT_PATH_ATTRIBUTES + _SENT_URL_ATTRIBUTES:
        if key in recorded:
            current.set_attribute(key, route)
    if _SENT_QUERY_ATTRIBUTE in recorded:
        current.set_attribute(_SENT_QUERY_ATTRIBUTE, "")


def log_fields() -> dict[str, str]:
    """``trace_id`` and ``span_id`` of the current span, for a log line; empty when off."""
    if _tracer is None:
        return {}
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return {}
    return {"trace_id": format(context.trace_id, "032x"), "span_id": format(context.span_id, "016x")}
