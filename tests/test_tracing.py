"""OpenTelemetry tracing with the SDK's in-memory exporter: one read yields spans for
auth, policy, decryption and the audit commit, all in the request's trace, tied to its
request id in the span and in the log line; webhooks get httpx client spans.

"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import httpx
import pytest
from fastapi import FastAPI
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from service import tracing
from service.app import create_app
from service.auth import service as auth_service
from service.config import Settings
from service.db import Database
from service.observability import JsonFormatter
from service.policy import service as policy_service
from service.policy.loader import load_policy_folder
from service.records import reads
from tests.conftest import TEST_POLICIES
from tests.fixtures import statuses
from tests.fixtures.databases import create_scratch_database, drop_scratch_database
from tests.fixtures.webhooks import WebhookReceiver

PURPOSE = "benefit-eligibility"


class Lines(logging.Handler):
    """Keeps the JSON log lines the service writes."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(JsonFormatter())
        self.lines: list[dict[str, object]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(json.loads(self.format(record)))


@dataclass
class Traced:
    app: FastAPI
    client: httpx.AsyncClient
    exporter: InMemorySpanExporter
    tokens: dict[str, str]

    def headers(self, name: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[name]}"}


async def _clients(settings: Settings) -> dict[str, tuple[str, str]]:
    database = Database(settings)
    made: dict[str, tuple[str, str]] = {}
    try:
        async with database.sessions.begin() as session:
            await policy_service.apply_folder(
                session, load_policy_folder(TEST_POLICIES), author="tests", reason="tracing tests"
            )
            for name, department, roles in (
                ("registrar", "register", ["registrar", "writer"]),
                ("welfare", "welfare", ["consumer"]),
            ):
                created = await auth_service.create_client(session, department=department, roles=roles)
                assert created.client_secret is not None
                made[name] = (created.client_id, created.client_secret)
    finally:
        await database.dispose()
    return made


@pytest.fixture(scope="module")
async def traced(
    database_url: str, root_key: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Traced]:
    url = await create_scratch_database(database_url)
    settings = Settings(
        env="test",
        database_url=url,
        data_dir=tmp_path_factory.mktemp("tracing-data"),
        root_key=root_key,  # type: ignore[arg-type]
        log_level="INFO",
        policies_dir=TEST_POLICIES,
        webhook_allow_private=True,
        events_poll_interval_seconds=0.1,
    )
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    try:
        secrets = await _clients(settings)
        app = create_app(settings)
        assert tracing.install_tracing(app, provider)
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
                tokens = {}
                for name, (client_id, secret) in secrets.items():
                    answer = await client.post(
                        "/oauth/token", data={"grant_type": "client_credentials"}, auth=(client_id, secret)
                    )
                    assert answer.status_code == 200, answer.text
                    tokens[name] = answer.json()["access_token"]
                yield Traced(app, client, exporter, tokens)
    finally:
        tracing.uninstall_tracing()
        await drop_scratch_database(url)


@pytest.fixture
def log_lines() -> Iterator[Lines]:
    handler = Lines()
    logger = logging.getLogger("tellonce")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


async def _register(traced: Traced, national_id: str) -> str:
    response = await traced.client.post(
        "/v1/citizens",
        json={"national_id": national_id, "fields": {"given_name": "Ada", "address": "1 High St"}},
        headers=traced.headers("registrar"),
    )
    assert response.status_code == 201, response.text
    citizen_id: str = response.json()["id"]
    return citizen_id


async def _fails(*_args: object, **_kwargs: object) -> None:
    raise RuntimeError("a bug")


def _is_delivery(span: ReadableSpan, url: str) -> bool:
    attributes = span.attributes or {}
    return span.kind is SpanKind.CLIENT and url in str(
        attributes.get("url.full") or attributes.get("http.url")
    )


def _named(spans: list[ReadableSpan], name: str) -> ReadableSpan:
    matching = [span for span in spans if span.name == name]
    assert len(matching) == 1, f"{name}: {[span.name for span in spans]}"
    return matching[0]


class TestReadTrace:
    async def test_one_read_is_one_trace_with_the_access_path_spans(
        self, traced: Traced, log_lines: Lines
    ) -> None:
        citizen_id = await _register(traced, "NI400001")
        traced.exporter.clear()
        response = await traced.client.get(
            f"/v1/citizens/{citizen_id}",
            params={"fields": "given_name", "purpose": PURPOSE},
            headers=traced.headers("welfare"),
        )
        assert response.status_code == 200, response.text
        request_id = response.headers["x-request-id"]
        spans = list(traced.exporter.get_finished_spans())
        server = [span for span in spans if span.kind is SpanKind.SERVER]
        assert len(server) == 1
        root = server[0]
        assert root.attributes is not None
        assert root.attributes[tracing.REQUEST_ID_ATTRIBUTE] == request_id
        trace_id = root.context.trace_id
        in_request = [span for span in spans if span.context.trace_id == trace_id]
        for name in ("auth", "policy.decide", "records.load", "crypto.decrypt", "audit.append"):
            assert _named(in_request, name).context.trace_id == trace_id
        # The request's database reads (the revocation epoch, the citizen's rows: the raw
        # driver's ``db.read`` spans) are in its trace.
        assert any(span.attributes and "db.system" in span.attributes for span in in_request)
        # The audit writer's group commit is its own trace, linked to this request.
        append = _named(in_request, "audit.append")
        batches = [
            span
            for span in spans
            if span.name == "audit.batch"
            and any(link.context.span_id == append.context.span_id for link in span.links)
        ]
        assert len(batches) == 1
        assert batches[0].context.trace_id != trace_id
        assert batches[0].attributes is not None
        assert batches[0].attributes["entries"] == 1
        # The access log line names the trace, and the trace names the request id.
        access = [
            line
            for line in log_lines.lines
            if line.get("message") == "request" and line["request_id"] == request_id
        ]
        assert len(access) == 1
        assert access[0]["trace_id"] == format(trace_id, "032x")

    async def test_a_refused_read_still_traces_auth(self, traced: Traced) -> None:
        traced.exporter.clear()
        response = await traced.client.get(
            "/v1/citizens/nobody", params={"purpose": PURPOSE}, headers={"Authorization": "Bearer nonsense"}
        )
        assert response.status_code == 401
        names = {span.name for span in traced.exporter.get_finished_spans()}
        assert "auth" in names
        assert "crypto.decrypt" not in names


class TestNoPersonalDataInSpans:
    async def test_a_national_id_sent_in_a_path_or_query_is_not_in_any_span(
        self, traced: Traced, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        citizen_id = await _register(traced, "NI400003")
        traced.exporter.clear()
        welfare = traced.headers("welfare")
        # A national id where the citizen id belongs (a 422), in a query parameter the
        # endpoint does not take (ignored), and in a path no route serves (a 404).
        mistaken = await traced.client.get(
            "/v1/citizens/ZX9Q7731", params={"purpose": PURPOSE}, headers=welfare
        )
        assert mistaken.status_code == 422, mistaken.text
        stray = await traced.client.get(
            f"/v1/citizens/{citizen_id}",
            params={"purpose": PURPOSE, "national_id": "QZ123456"},
            headers=welfare,
        )
        assert stray.status_code == 200, stray.text
        unmatched = await traced.client.get(
            "/v1/people/QZ654321", params={"who": "QZ654321"}, headers=welfare
        )
        assert unmatched.status_code == 404, unmatched.text
        # A 500, whose answer Starlette's error middleware sends. Provoked by breaking the
        # app, it is no route's contract: left out of the run's answered statuses.
        statuses.forget(traced.app.state.metrics)
        monkeypatch.setattr(reads, "read", _fails)
        with pytest.raises(RuntimeError):
            await traced.client.get(
                f"/v1/citizens/{citizen_id}", params={"purpose": PURPOSE, "nid": "QZ765432"}, headers=welfare
            )
        spans = list(traced.exporter.get_finished_spans())
        server = [span for span in spans if span.kind is SpanKind.SERVER]
        assert len(server) == 4
        recorded = json.dumps(
            [
                [span.name, dict(span.attributes or {}), [dict(e.attributes or {}) for e in span.events]]
                for span in spans
            ]
        )
        for national_id in ("ZX9Q7731", "QZ123456", "QZ654321", "QZ765432"):
            assert national_id not in recorded
        # What the access log keeps: the route template, or "unmatched".
        targets = sorted(str((span.attributes or {}).get("http.target")) for span in server)
        assert targets == ["/v1/citizens/{citizen_id}"] * 3 + ["unmatched"]


class TestWebhookTrace:
    async def test_a_delivery_is_an_httpx_client_span(self, traced: Traced) -> None:
        with WebhookReceiver() as receiver:
            subscribed = await traced.client.post(
                "/v1/subscriptions",
                json={"fields": ["address"], "purpose": "address-update", "webhook_url": receiver.url},
                headers=traced.headers("welfare"),
            )
            assert subscribed.status_code == 201, subscribed.text
            citizen_id = await _register(traced, "NI400002")
            traced.exporter.clear()
            written = await traced.client.patch(
                f"/v1/citizens/{citizen_id}/fields",
                json={"fields": {"address": "2 Low Rd"}, "reason": "moved"},
                headers=traced.headers("registrar"),
            )
            assert written.status_code == 200, written.text
            await receiver.until(1)
        # The receiver answers before the client span ends: wait for it, with a deadline.
        deadline = time.monotonic() + 15
        while not any(_is_delivery(span, receiver.url) for span in traced.exporter.get_finished_spans()):
            assert time.monotonic() < deadline, [span.name for span in traced.exporter.get_finished_spans()]
            await asyncio.sleep(0.02)
