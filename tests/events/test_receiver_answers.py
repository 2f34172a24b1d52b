"""What the dispatcher does with a receiver's answer, as the Standard Webhooks spec advises:
410 Gone disables the subscription, a Retry-After on 429 or 503 is the least the next
attempt waits, and the default retry schedule spans more than a day."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import random
import socket
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine
from standardwebhooks import Webhook

from service.config import Settings
from service.db import utcnow
from service.events.dispatcher import Dispatcher, backoff_seconds, retry_after_seconds
from service.events.models import Delivery
from service.events.service import EventsRuntime
from tests.events.conftest import ListAuditSink, add_citizen, emit, running
from tests.fixtures.auth import act_as
from tests.fixtures.webhooks import WebhookReceiver

PROBLEM = "application/problem+json"


class ScriptedReceiver:
    """A real receiver on a loopback port that gives every request the same answer: a
    status and headers (``tests.fixtures.webhooks.WebhookReceiver`` sends no headers). With
    ``keep_alive`` it speaks HTTP/1.1 and keeps each connection open for more requests;
    ``connections`` counts the connections it was given."""

    def __init__(
        self, status: int, headers: dict[str, str] | None = None, *, keep_alive: bool = False
    ) -> None:
        self.status, self.headers = status, dict(headers or {})
        self.received: list[dict[str, str]] = []
        self.bodies: list[bytes] = []
        self.connections = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1" if keep_alive else "HTTP/1.0"

            def setup(self) -> None:
                receiver.connections += 1
                super().setup()

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                receiver.received.append({k.lower(): v for k, v in self.headers.items()})
                receiver.bodies.append(body)
                self.send_response(receiver.status)
                for name, value in receiver.headers.items():
                    self.send_header(name, value)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/hooks/tellonce"

    def __enter__(self) -> ScriptedReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


@pytest.fixture
def gone_receiver() -> Iterator[ScriptedReceiver]:
    with ScriptedReceiver(410) as running:
        yield running


def _assert_problem(response: httpx.Response, status: int, slug: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert str(body["type"]).endswith("/" + slug)
    return body


async def _subscribe(api: httpx.AsyncClient, url: str) -> dict[str, Any]:
    response = await api.post(
        "/v1/subscriptions",
        json={"fields": ["date_of_death"], "purpose": "licence-administration", "webhook_url": url},
    )
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


async def _deliveries(api: httpx.AsyncClient, subscription_id: str) -> list[dict[str, Any]]:
    response = await api.get(f"/v1/subscriptions/{subscription_id}/deliveries")
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


class _Lowest(random.Random):
    """Jitter that always draws the low end of its range."""

    def uniform(self, a: float, b: float) -> float:
        return a


class _Highest(random.Random):
    """Jitter that always draws the high end of its range."""

    def uniform(self, a: float, b: float) -> float:
        return b


class TestDefaultSchedule:
    def _span(self, rng: random.Random) -> float:
        defaults = Settings.model_fields
        base = defaults["webhook_retry_base_seconds"].default
        cap = defaults["webhook_retry_cap_seconds"].default
        attempts = defaults["webhook_max_attempts"].default
        # A delay follows every failed attempt but the last, which makes the delivery dead.
        return sum(backoff_seconds(n, base=base, cap=cap, rng=rng) for n in range(1, attempts))

    def test_retries_span_more_than_a_day_even_with_the_least_jitter(self) -> None:
        assert self._span(_Lowest()) > timedelta(days=1).total_seconds()
        # ... and not for ever: a receiver gone for good is dead within a few days.
        assert self._span(_Highest()) < timedelta(days=3).total_seconds()

    def test_the_first_retries_come_quickly(self) -> None:
        defaults = Settings.model_fields
        base = defaults["webhook_retry_base_seconds"].default
        cap = defaults["webhook_retry_cap_seconds"].default
        # A blip is retried within seconds, as in the spec's schedule (5 s).
        assert backoff_seconds(1, base=base, cap=cap, rng=_Highest()) <= 5

    def test_the_timeout_is_in_the_range_the_spec_recommends(self) -> None:
        assert 15 <= Settings.model_fields["webhook_timeout_seconds"].default <= 30


class TestRetryAfterHeader:
    NOW = datetime(2026, 12, 3, 12, 0, 0, tzinfo=UTC)

    @pytest.mark.parametrize(
        ("header", "seconds"),
        [
            ("120", 120.0),
            (" 0 ", 0.0),
            ("Thu, 03 Dec 2026 12:05:00 GMT", 300.0),
            ("Thu, 03 Dec 2026 12:05:00 -0000", 300.0),
            # A date already past asks for no wait.
            ("Thu, 03 Dec 2026 11:00:00 GMT", 0.0),
        ],
    )
    def test_reads_seconds_and_http_dates(self, header: str, seconds: float) -> None:
        assert retry_after_seconds(header, self.NOW) == seconds

    @pytest.mark.parametrize(
        "header",
        [
            None,
            "",
            "-5",
            "1.5",
            "soon",
            "Thu, 99 Foo 2026",
            # Digits to str.isdigit(), but not the ASCII DIGITs of delay-seconds (RFC 9110):
            # a superscript two (byte 0xB2, as a latin-1 header) and Arabic-Indic 120.
            "\xb2",
            "\u0661\u0662\u0660",
        ],
    )
    def test_anything_else_is_ignored(self, header: str | None) -> None:
        assert retry_after_seconds(header, self.NOW) is None


class TestRedirects:
    @pytest.mark.parametrize("status", [302, 307])
    async def test_a_redirect_is_a_failed_attempt_and_never_followed(
        self,
        events_app: FastAPI,
        api: httpx.AsyncClient,
        dispatcher: Dispatcher,
        runtime: EventsRuntime,
        events_engine: AsyncEngine,
        receiver: WebhookReceiver,
        status: int,
    ) -> None:
        # A receiver must not bounce the service to an address it never checked.
        with ScriptedReceiver(status, {"Location": receiver.url}) as redirecting:
            act_as(events_app, "dvla", "consumer")
            hook = await _subscribe(api, redirecting.url)
            await emit(runtime, await add_citizen(events_engine), ["date_of_death"], "register")
            await dispatcher.run_once()
            assert len(redirecting.received) == 1
        assert receiver.received == []
        [delivery] = await _deliveries(api, hook["id"])
        assert (delivery["status"], delivery["last_status_code"]) == ("pending", status)
        assert delivery["last_error"] == f"the receiver answered {status}"


class TestRetryAfter:
    @pytest.mark.parametrize(
        ("status", "retry_after", "least", "most"),
        [
            (503, "120", 120, 125),
            (429, "30", 30, 35),
            # Never beyond the cap (600 s here; measured from the attempt, not the answer).
            (503, "86400", 600, 605),
            # Only 429 and 503 are asked for a wait; another failure keeps its backoff.
            (500, "120", 0, 1),
        ],
    )
    async def test_the_next_attempt_waits_at_least_as_asked_up_to_the_cap(
        self,
        events_app: FastAPI,
        api: httpx.AsyncClient,
        dispatcher: Dispatcher,
        runtime: EventsRuntime,
        events_engine: AsyncEngine,
        status: int,
        retry_after: str,
        least: float,
        most: float,
    ) -> None:
        runtime.settings = runtime.settings.model_copy(update={"webhook_retry_cap_seconds": 600.0})
        with ScriptedReceiver(status, {"Retry-After": retry_after}) as receiver:
            act_as(events_app, "dvla", "consumer")
            hook = await _subscribe(api, receiver.url)
            await emit(runtime, await add_citizen(events_engine), ["date_of_death"], "register")
            await dispatcher.run_once()
            assert len(receiver.received) == 1
        [delivery] = await _deliveries(api, hook["id"])
        assert delivery["status"] == "pending"
        assert delivery["last_status_code"] == status
        waited = (
            datetime.fromisoformat(delivery["next_attempt_at"])
            - datetime.fromisoformat(delivery["last_attempt_at"])
        ).total_seconds()
        assert least <= waited <= most
        if status == 500:
            assert delivery["last_error"] == "the receiver answered 500"
        else:
            assert (
                delivery["last_error"] == f"the receiver answered {status} and asked to wait {retry_after} s"
            )

    async def test_an_http_date_is_honoured_too(
        self,
        events_app: FastAPI,
        api: httpx.AsyncClient,
        dispatcher: Dispatcher,
        runtime: EventsRuntime,
        events_engine: AsyncEngine,
    ) -> None:
        runtime.settings = runtime.settings.model_copy(update={"webhook_retry_cap_seconds": 600.0})
        asked = utcnow() + timedelta(seconds=300)
        when = format_datetime(asked, usegmt=True)
        with ScriptedReceiver(503, {"Retry-After": when}) as receiver:
            act_as(events_app, "dvla", "consumer")
            hook = await _subscribe(api, receiver.url)
            await emit(runtime, await add_citizen(events_engine), ["date_of_death"], "register")
            await dispatcher.run_once()
        [delivery] = await _deliveries(api, hook["id"])
        # The next attempt is at the date the receiver named (which has whole seconds: up to
        # one less than asked), however long the test took to get there on a loaded machine.
        late = (datetime.fromisoformat(delivery["next_attempt_at"]) - asked).total_seconds()
        assert -1 <= late <= 5

    async def test_an_unreadable_one_keeps_the_backoff_and_spoils_no_other_delivery(
        self,
        events_app: FastAPI,
        api: httpx.AsyncClient,
        dispatcher: Dispatcher,
        runtime: EventsRuntime,
        events_engine: AsyncEngine,
        receiver: WebhookReceiver,
    ) -> None:
        # http.server sends the header as latin-1: the byte 0xB2, a superscript two.
        with ScriptedReceiver(503, {"Retry-After": "\xb2"}) as odd:
            act_as(events_app, "dvla", "consumer")
            hook = await _subscribe(api, odd.url)
            healthy = await _subscribe(api, receiver.url)
            await emit(runtime, await add_citizen(events_engine), ["date_of_death"], "register")
            await dispatcher.run_once()
            assert len(odd.received) == 1
        # The healthy receiver's delivery, in the same batch, is delivered and not sent again.
        [delivered] = await _deliveries(api, healthy["id"])
        assert (delivered["status"], delivered["attempts"]) == ("delivered", 1)
        [failed] = await _deliveries(api, hook["id"])
        assert (failed["status"], failed["last_status_code"]) == ("pending", 503)
        assert failed["last_error"] == "the receiver answered 503"
        await dispatcher.run_once()
        assert len(receiver.received) == 1


class TestGone:
    async def test_a_410_disables_the_subscription_and_nothing_more_is_sent(
        self,
        events_app: FastAPI,
        api: httpx.AsyncClient,
        dispatcher: Dispatcher,
        runtime: EventsRuntime,
        events_engine: AsyncEngine,
        gone_receiver: ScriptedReceiver,
        receiver: WebhookReceiver,
        audit_sink: ListAuditSink,
    ) -> None:
        act_as(events_app, "dvla", "consumer")
        gone = await _subscribe(api, gone_receiver.url)
        # Another subscription of the department, whose receiver is fine.
        healthy = await _subscribe(api, receiver.url)
        citizen = await add_citizen(events_engine)
        await emit(runtime, citizen, ["date_of_death"], "register")
        await dispatcher.run_once()

        # One attempt, signed as ever; never retried.
        [headers] = gone_receiver.received
        Webhook(gone["secret"]).verify(gone_receiver.bodies[0], headers)
        [cancelled] = await _deliveries(api, gone["id"])
        assert cancelled["status"] == "cancelled"
        assert cancelled["attempts"] == 1
        assert cancelled["last_status_code"] == 410
        assert cancelled["last_error"] == "the receiver answered 410 Gone; the subscription is disabled"
        assert cancelled["next_attempt_at"] is None

        shown = await api.get(f"/v1/subscriptions/{gone['id']}")
        assert shown.status_code == 200
        assert shown.json()["status"] == "disabled"
        # The service changed the subscription, on its receiver's word: audited as such.
        [disabled] = audit_sink.of("subscription-change")
        assert (disabled["client_id"], disabled["department"], disabled["status"]) == (
            "tellonce-service",
            "dvla",
            410,
        )
        assert disabled["source"] == gone_receiver.url.removesuffix("/hooks/tellonce")
        assert disabled["fields_requested"] == ["date_of_death"]
        assert disabled["purpose"] == "licence-administration"
        assert disabled["reasons"][0]["effect"] == "disabled"
        assert disabled["reasons"][0]["reason"] == (
            f"subscription {gone['id']} disabled: its receiver answered 410 Gone"
        )
        listed = (await api.get("/v1/subscriptions")).json()["items"]
        assert {item["id"]: item["status"] for item in listed} == {
            gone["id"]: "disabled",
            healthy["id"]: "active",
        }

        # Later events go to the healthy subscription only.
        await emit(runtime, citizen, ["date_of_death"], "register")
        await dispatcher.run_once()
        assert len(gone_receiver.received) == 1
        assert len(await _deliveries(api, gone["id"])) == 1
        assert [d["status"] for d in await _deliveries(api, healthy["id"])] == ["delivered", "delivered"]
        assert len(receiver.accepted()) == 2

    async def test_what_it_had_queued_is_cancelled(
        self,
        events_app: FastAPI,
        api: httpx.AsyncClient,
        dispatcher: Dispatcher,
        runtime: EventsRuntime,
        events_engine: AsyncEngine,
        gone_receiver: ScriptedReceiver,
    ) -> None:
        act_as(events_app, "dvla", "consumer")
        gone = await _subscribe(api, gone_receiver.url)
        citizen = await add_citizen(events_engine)
        first = await emit(runtime, citizen, ["date_of_death"], "register")
        await emit(runtime, citizen, ["date_of_death"], "register")
        assert await dispatcher.fan_out() == 2
        # The second waits for a retry an hour away when the first is answered 410.
        async with events_engine.begin() as conn:
            later = (
                await conn.execute(select(Delivery.id).order_by(Delivery.event_position.desc()).limit(1))
            ).scalar_one()
            await conn.execute(
                update(Delivery)
                .where(Delivery.id == later)
                .values(attempts=1, next_attempt_at=utcnow() + timedelta(hours=1))
            )
        await dispatcher.run_once()
        assert len(gone_receiver.received) == 1
        answered, queued = await _deliveries(api, gone["id"])
        assert (answered["event_id"], answered["status"], answered["last_status_code"]) == (
            first,
            "cancelled",
            410,
        )
        assert (queued["status"], queued["next_attempt_at"]) == ("cancelled", None)
        # Nothing is left for a dispatcher to claim.
        assert await dispatcher.claim() == []

    async def test_a_disabled_subscription_can_be_read_and_deleted_but_not_redelivered(
        self,
        events_app: FastAPI,
        api: httpx.AsyncClient,
        dispatcher: Dispatcher,
        runtime: EventsRuntime,
        events_engine: AsyncEngine,
        gone_receiver: ScriptedReceiver,
    ) -> None:
        act_as(events_app, "dvla", "consumer")
        gone = await _subscribe(api, gone_receiver.url)
        await emit(runtime, await add_citizen(events_engine), ["date_of_death"], "register")
        await dispatcher.run_once()
        refused = _assert_problem(
            await api.post(f"/v1/subscriptions/{gone['id']}/redeliver"), 409, "conflict"
        )
        assert "410 Gone" in refused["detail"]
        # Another department still learns nothing of it.
        act_as(events_app, "welfare", "consumer")
        _assert_problem(await api.get(f"/v1/subscriptions/{gone['id']}"), 404, "subscription-not-found")
        _assert_problem(
            await api.post(f"/v1/subscriptions/{gone['id']}/redeliver"), 404, "subscription-not-found"
        )
        act_as(events_app, "dvla", "consumer")
        assert (await api.delete(f"/v1/subscriptions/{gone['id']}")).status_code == 204
        _assert_problem(await api.get(f"/v1/subscriptions/{gone['id']}"), 404, "subscription-not-found")
        assert (await api.get("/v1/subscriptions")).json() == {"items": [], "next_cursor": None}


class _LoopbackListener:
    """A listening socket on a loopback port, served by a thread of the subclass's
    (``_serve``) until the ``with`` block ends; ``url`` is its webhook address."""

    def __init__(self, backlog: int | None = None) -> None:
        self.stop = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=backlog)
        self._listener.settimeout(0.05)
        self._thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._listener.getsockname()[:2]
        return f"http://{host}:{port}/hooks/tellonce"

    def _serve(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self._thread.join(timeout=10)
        self._listener.close()


class RawReceiver(_LoopbackListener):
    """A receiver on a loopback port that reads each request whole, then writes its answer
    with ``answer(connection)``: slowly, or without end, as no well-behaved server would."""

    def __init__(self, answer: Callable[[socket.socket, threading.Event], None]) -> None:
        super().__init__()
        self._answer = answer
        self.requests: list[tuple[dict[str, str], bytes]] = []

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                connection, _peer = self._listener.accept()
            except TimeoutError:
                continue
            with connection:
                stream = connection.makefile("rb")
                lines = iter(stream.readline, b"\r\n")
                next(lines)
                headers = {}
                for line in lines:
                    name, _, value = line.decode("latin-1").partition(":")
                    headers[name.strip().lower()] = value.strip()
                body = stream.read(int(headers.get("content-length") or 0))
                self.requests.append((headers, body))
                with contextlib.suppress(OSError):
                    self._answer(connection, self.stop)


def _dripping_headers(connection: socket.socket, stop: threading.Event) -> None:
    """A 200 whose status line and headers come one byte every 0.2 s: each read gets a byte
    well within any timeout, but the answer takes about 12 s to arrive."""
    for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX-Padding: 0123456789012\r\n\r\n":
        if stop.wait(0.2):
            return
        connection.sendall(bytes([byte]))


def _endless_body(connection: socket.socket, stop: threading.Event) -> None:
    """A 200 at once, then a chunked body that never ends (about 6 MB a second)."""
    connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n")
    chunk = b"%x\r\n%s\r\n" % (65536, b"x" * 65536)
    while not stop.wait(0.01):
        connection.sendall(chunk)


class TestSlowAndEndlessAnswers:
    async def test_one_attempt_takes_no_longer_than_the_timeout_however_the_answer_trickles(
        self,
        events_app: FastAPI,
        api: httpx.AsyncClient,
        dispatcher: Dispatcher,
        runtime: EventsRuntime,
        events_engine: AsyncEngine,
    ) -> None:
        # TELLONCE_WEBHOOK_TIMEOUT_SECONDS is how long one POST may take, all of it: the
        # claim's lease is reckoned from it, so an attempt that outlived it would be made
        # again by another dispatcher while this one still waits.
        runtime.settings = runtime.settings.model_copy(update={"webhook_timeout_seconds": 1.0})
        with RawReceiver(_dripping_headers) as receiver:
            act_as(events_app, "dvla", "consumer")
            hook = await _subscribe(api, receiver.url)
            await emit(runtime, await add_citizen(events_engine), ["date_of_death"], "register")
            # Without the bound the answer arrives whole after about 12 s, a 200.
            await asyncio.wait_for(dispatcher.run_once(), 30)
        assert len(receiver.requests) == 1
        [delivery] = await _deliveries(api, hook["id"])
        assert (delivery["status"], delivery["last_status_code"]) == ("pending", None)
        assert delivery["last_error"] == "the receiver did not answer in time"

    async def test_a_2xx_is_delivered_without_reading_the_answers_body(
        self,
        events_app: FastAPI,
        api: httpx.AsyncClient,
        dispatcher: Dispatcher,
        runtime: EventsRuntime,
        events_engine: AsyncEngine,
    ) -> None:
        # Success is the status code (the spec: "responded to with a 2xx status code"); a
        # body with no end (or gigabytes of one) is never read into the service's memory.
        runtime.settings = runtime.settings.model_copy(update={"webhook_timeout_seconds": 3.0})
        with RawReceiver(_endless_body) as receiver:
            act_as(events_app, "dvla", "consumer")
            hook = await _subscribe(api, receiver.url)
            await emit(runtime, await add_citizen(events_engine), ["date_of_death"], "register")
            # Reading the body would run into the 3 s bound: "did not answer in time".
            await asyncio.wait_for(dispatcher.run_once(), 10)
        [(headers, body)] = receiver.requests
        Webhook(hook["secret"]).verify(body, headers)
        [delivery] = await _deliveries(api, hook["id"])
        assert (delivery["status"], delivery["last_status_code"]) == ("delivered", 200)
        assert delivery["attempts"] == 1


class TestNoConnectionIsReused:
    async def test_each_attempt_opens_its_own_connection(
        self,
        events_app: FastAPI,
        api: httpx.AsyncClient,
        dispatcher: Dispatcher,
        runtime: EventsRuntime,
        events_engine: AsyncEngine,
    ) -> None:
        # Targets are pinned to the address their host resolved to, so a kept connection
        # is pooled by address: an https one made (and its certificate checked) for one
        # host name would carry the next delivery to another name on the same address,
        # whose certificate would then never be checked. No connection is kept.
        with ScriptedReceiver(204, keep_alive=True) as receiver:
            act_as(events_app, "dvla", "consumer")
            await _subscribe(api, receiver.url)
            for _ in range(2):
                await emit(runtime, await add_citizen(events_engine), ["date_of_death"], "register")
                await asyncio.wait_for(dispatcher.run_once(), 30)
            assert len(receiver.received) == 2
            assert receiver.connections == 2


@contextlib.asynccontextmanager
async def _dispatching(runtime: EventsRuntime, *, concurrency: int) -> AsyncIterator[Dispatcher]:
    """A dispatcher making ``concurrency`` attempts at a time, closed when the block ends."""
    dispatcher = Dispatcher(runtime, concurrency=concurrency)
    try:
        yield dispatcher
    finally:
        await dispatcher.aclose()


class SilentReceiver(_LoopbackListener):
    """A receiver on a loopback port that takes every connection and never answers;
    ``connections`` counts them."""

    def __init__(self) -> None:
        super().__init__(backlog=64)
        self.connections: list[socket.socket] = []

    def _serve(self) -> None:
        while not self.stop.is_set():
            with contextlib.suppress(TimeoutError):
                self.connections.append(self._listener.accept()[0])

    def __exit__(self, *exc: object) -> None:
        super().__exit__(*exc)
        for connection in self.connections:
            connection.close()


@contextlib.asynccontextmanager
async def _stuck(
    events_app: FastAPI,
    api: httpx.AsyncClient,
    runtime: EventsRuntime,
    events_engine: AsyncEngine,
    *,
    concurrency: int,
    events: int,
) -> AsyncIterator[tuple[Dispatcher, SilentReceiver, dict[str, Any]]]:
    """A dispatcher making ``concurrency`` attempts at a time, and DVLA's subscription to a
    receiver that never answers, with deliveries of ``events`` new events for it."""
    async with _dispatching(runtime, concurrency=concurrency) as dispatcher:
        with SilentReceiver() as silent:
            act_as(events_app, "dvla", "consumer")
            stuck = await _subscribe(api, silent.url)
            for _ in range(events):
                await emit(runtime, await add_citizen(events_engine), ["date_of_death"], "register")
            await dispatcher.fan_out()
            yield dispatcher, silent, stuck


class TestOneReceiverNotAnswering:
    async def test_holds_no_other_receivers_delivery_and_the_batch_for_one_timeout_only(
        self,
        events_app: FastAPI,
        api: httpx.AsyncClient,
        runtime: EventsRuntime,
        events_engine: AsyncEngine,
        receiver: WebhookReceiver,
    ) -> None:
        # Two attempts at a time: before, the silent receiver's four earlier deliveries took
        # both, a timeout each wave, and the answering receiver's came third, 2 s later.
        runtime.settings = runtime.settings.model_copy(update={"webhook_timeout_seconds": 1.0})
        async with _stuck(events_app, api, runtime, events_engine, concurrency=2, events=4) as held:
            dispatcher, silent, stuck = held
            answering = await _subscribe(api, receiver.url)
            await emit(runtime, await add_citizen(events_engine), ["date_of_death"], "register")
            started = asyncio.get_running_loop().time()
            cycle = asyncio.create_task(dispatcher.run_once())
            while not receiver.received and not cycle.done():
                await asyncio.sleep(0.02)
            told_after = asyncio.get_running_loop().time() - started
            await asyncio.wait_for(cycle, 30)
            took = asyncio.get_running_loop().time() - started
            # The first attempt and the one that took the answering receiver's slot
            # after it; the other three wait for the next round, unsent.
            assert len(silent.connections) == 2
        assert told_after < 0.8
        assert took < 1.9
        [delivered] = await _deliveries(api, answering["id"])
        assert delivered["status"] == "delivered"
        errors = sorted(delivery["last_error"] for delivery in await _deliveries(api, stuck["id"]))
        unsent = "not sent: another attempt to the receiver failed just before (it did not answer in time)"
        assert errors == [unsent] * 3 + ["the receiver did not answer in time"] * 2
        assert {delivery["status"] for delivery in await _deliveries(api, stuck["id"])} == {"pending"}

    async def test_its_deliveries_claimed_by_the_next_batches_are_not_sent_either(
        self,
        events_app: FastAPI,
        api: httpx.AsyncClient,
        runtime: EventsRuntime,
        events_engine: AsyncEngine,
    ) -> None:
        # Before, each batch claimed while the loop went on learned it afresh: every new
        # delivery for a receiver that did not answer was sent, took a slot for a timeout
        # and counted an attempt, one batch after another.
        runtime.settings = runtime.settings.model_copy(
            update={
                "webhook_timeout_seconds": 3.0,
                "webhook_retry_base_seconds": 60.0,
                "webhook_retry_cap_seconds": 600.0,
            }
        )
        async with _stuck(events_app, api, runtime, events_engine, concurrency=2, events=1) as held:
            dispatcher, silent, stuck = held
            async with running(dispatcher), asyncio.timeout(30):
                while len(silent.connections) < 1:
                    await asyncio.sleep(0.02)
                # Claimed while the first attempt is out, and sent: nothing is known yet.
                await emit(runtime, await add_citizen(events_engine), ["date_of_death"], "register")
                while len(silent.connections) < 2:
                    await asyncio.sleep(0.02)
                while not (await _deliveries(api, stuck["id"]))[0]["last_error"]:
                    await asyncio.sleep(0.02)
                # The first attempt got no answer; the second is still out.
                await emit(runtime, await add_citizen(events_engine), ["date_of_death"], "register")
                while not [d for d in (await _deliveries(api, stuck["id"]))[2:] if d["last_error"]]:
                    await asyncio.sleep(0.02)
                assert len(silent.connections) == 2
        first, second, third = await _deliveries(api, stuck["id"])
        assert (third["status"], third["attempts"], third["last_attempt_at"]) == ("pending", 0, None)
        assert third["last_error"] == (
            "not sent: another attempt to the receiver failed just before (it did not answer in time)"
        )
        # Due again with an attempt that failed (the second's, if it had failed by then), as a
        # batch-mate left behind one is.
        assert third["next_attempt_at"] in {first["next_attempt_at"], second["next_attempt_at"]}


class SlowReceiver(_LoopbackListener):
    """A receiver on a loopback port that answers every request 204, each ``delay`` seconds
    after it arrived (one thread per connection); ``answered`` counts the answers sent.
    ``journal``, if given, is told "NAME arrived" and "NAME answered" as they happen."""

    def __init__(self, delay: float, *, journal: list[str] | None = None, name: str = "") -> None:
        super().__init__(backlog=64)
        self.delay = delay
        self.answered = 0
        self.journal, self.name = journal, name
        self._lock = threading.Lock()

    def _note(self, what: str) -> None:
        if self.journal is not None:
            self.journal.append(f"{self.name} {what}")

    def _serve(self) -> None:
        while not self.stop.is_set():
            with contextlib.suppress(TimeoutError):
                connection, _peer = self._listener.accept()
                threading.Thread(target=self._answer, args=(connection,), daemon=True).start()

    def _answer(self, connection: socket.socket) -> None:
        with connection, contextlib.suppress(OSError):
            connection.settimeout(None)
            stream = connection.makefile("rb")
            headers = {}
            for line in iter(stream.readline, b"\r\n"):
                name, _, value = line.decode("latin-1").partition(":")
                headers[name.strip().lower()] = value.strip()
            stream.read(int(headers.get("content-length") or 0))
            self._note("arrived")
            if self.stop.wait(self.delay):
                return
            # Counted before it is sent, so a client that has its answer finds it counted
            # (counted after, a test could look between the two).
            with self._lock:
                self.answered += 1
                self._note("answered")
            connection.sendall(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")


class TestOneReceiverAnsweringSlowly:
    async def test_holds_no_other_receivers_delivery_nor_its_result(
        self,
        events_app: FastAPI,
        api: httpx.AsyncClient,
        runtime: EventsRuntime,
        events_engine: AsyncEngine,
        receiver: WebhookReceiver,
    ) -> None:
        # Every attempt to the slow receiver is answered 204, after 0.8 of the timeout. Two
        # attempts at a time: before, the slow receiver's second delivery took the slot the
        # fast one's first freed, so the fast one's second waited for an answer from the
        # slow one; and every result was written only once the whole batch had its answers.
        timeout = 4.0
        runtime.settings = runtime.settings.model_copy(update={"webhook_timeout_seconds": timeout})
        async with _dispatching(runtime, concurrency=2) as dispatcher:
            with SlowReceiver(0.8 * timeout) as slow:
                act_as(events_app, "dvla", "consumer")
                late = await _subscribe(api, slow.url)
                fast = await _subscribe(api, receiver.url)
                for _ in range(2):
                    await emit(runtime, await add_citizen(events_engine), ["date_of_death"], "register")
                cycle = asyncio.create_task(dispatcher.run_once())
                told: list[dict[str, Any]] = []
                while not cycle.done():
                    told = [d for d in await _deliveries(api, fast["id"]) if d["status"] == "delivered"]
                    if len(told) == 2:
                        break
                    await asyncio.sleep(0.02)
                # Both recorded as delivered while the slow receiver had still answered nothing.
                slow_answers_by_then = slow.answered
                await asyncio.wait_for(cycle, 30)
        assert len(told) == 2
        assert slow_answers_by_then == 0
        assert len(receiver.received) == 2
        for request in receiver.received:
            Webhook(fast["secret"]).verify(request.body, request.headers)
        # The slow receiver's answers came within the timeout: delivered, at the first attempt.
        for hook in (late, fast):
            deliveries = await _deliveries(api, hook["id"])
            assert [(d["status"], d["attempts"]) for d in deliveries] == [("delivered", 1)] * 2


class TestClaimingGoesOn:
    @pytest.mark.parametrize("audited", [True, False], ids=["audited", "audit-refused"])
    async def test_a_new_event_for_a_fast_receiver_does_not_wait_for_a_slow_attempt(
        self,
        events_app: FastAPI,
        api: httpx.AsyncClient,
        runtime: EventsRuntime,
        events_engine: AsyncEngine,
        audit_sink: ListAuditSink,
        audited: bool,
    ) -> None:
        # The slow receiver answers just inside the timeout. Before, the loop claimed the
        # next batch only once the slow receiver had answered the current one.
        timeout = 4.0
        runtime.settings = runtime.settings.model_copy(
            update={"webhook_timeout_seconds": timeout, "webhook_retry_base_seconds": 60.0}
        )
        journal: list[str] = []
        with (
            SlowReceiver(0.8 * timeout, journal=journal, name="slow") as slow,
            SlowReceiver(0.0, journal=journal, name="fast") as fast,
        ):
            act_as(events_app, "dvla", "consumer")
            late = await _subscribe(api, slow.url)
            await emit(runtime, await add_citizen(events_engine), ["date_of_death"], "register")
            async with _dispatching(runtime, concurrency=4) as dispatcher, running(dispatcher):
                while "slow arrived" not in journal:
                    await asyncio.sleep(0.01)
                # Subscribed now, so the first event is the slow receiver's alone; the next
                # is for both.
                quick = await _subscribe(api, fast.url)
                audit_sink.failing = not audited
                await emit(runtime, await add_citizen(events_engine), ["date_of_death"], "register")
                async with asyncio.timeout(30):
                    while slow.answered < 1 + audited or fast.answered < audited:
                        await asyncio.sleep(0.02)
                    if not audited:
                        # The next batch, claimed while the slow attempt was out, has its
                        # results: nothing of it was sent.
                        while not [d for d in await _deliveries(api, quick["id"]) if d["last_error"]]:
                            await asyncio.sleep(0.02)
        if not audited:
            assert journal == ["slow arrived", "slow answered"]
            for hook in (late, quick):
                last = (await _deliveries(api, hook["id"]))[-1]
                assert last["last_error"] == "the audit log is unavailable; nothing was sent"
            return
        # The fast receiver had its event, and answered, while the slow receiver's first
        # request was still open.
        assert journal[0] == "slow arrived"
        assert journal.index("fast answered") < journal.index("slow answered")
        assert journal.count("slow answered") == 2
        for hook, count in ((late, 2), (quick, 1)):
            deliveries = await _deliveries(api, hook["id"])
            assert [(d["status"], d["attempts"]) for d in deliveries] == [("delivered", 1)] * count
        # Each delivery was audited, before it was sent, as ever.
        assert len(audit_sink.of("deliver")) == 3


class TestAnAttemptThatBreaks:
    async def test_outside_its_request_fails_alone_and_its_batch_mates_keep_their_answers(
        self,
        events_app: FastAPI,
        api: httpx.AsyncClient,
        runtime: EventsRuntime,
        events_engine: AsyncEngine,
        receiver: WebhookReceiver,
        monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        # A secret that opens but does not sign: the attempt breaks before its request. Before,
        # that left the batch's gather while the slow receiver's request was out: its delivery
        # was recorded as an internal error (to be sent again), though the receiver took it,
        # and the request went on outside the batch, holding a slot the loop counted as free.
        with SlowReceiver(0.5) as slow:
            act_as(events_app, "dvla", "consumer")
            fine = await _subscribe(api, slow.url)
            broken = await _subscribe(api, receiver.url)
            await emit(runtime, await add_citizen(events_engine), ["date_of_death"], "register")
            async with _dispatching(runtime, concurrency=4) as dispatcher:
                opened = dispatcher._secrets

                def unsigning(hook: Any) -> list[str] | None:
                    return ["whsec_"] if hook.id == broken["id"] else opened(hook)

                monkeypatch.setattr(dispatcher, "_secrets", unsigning)
                await asyncio.wait_for(dispatcher.run_once(), 30)
                assert dispatcher._turns._free == 4
            assert slow.answered == 1
        assert receiver.received == []
        [delivered] = await _deliveries(api, fine["id"])
        assert (delivered["status"], delivered["attempts"], delivered["last_error"]) == ("delivered", 1, None)
        [failed] = await _deliveries(api, broken["id"])
        assert failed["status"] == "pending"
        assert failed["last_error"].startswith("internal error: ")
        [line] = [r for r in caplog.records if r.name == "tellonce.events" and r.levelno >= logging.ERROR]
        assert line.exc_info is not None

    async def test_that_breaks_its_batch_is_logged_and_the_loop_goes_on(
        self,
        events_app: FastAPI,
        api: httpx.AsyncClient,
        runtime: EventsRuntime,
        events_engine: AsyncEngine,
        receiver: WebhookReceiver,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        # What is told of a dead letter (the metrics) breaking: the batch's task ends with its
        # exception. Before, the loop dropped the task unread ("Task exception was never
        # retrieved", from asyncio, with no word of the dispatcher's).
        caplog.set_level(logging.INFO)
        runtime.settings = runtime.settings.model_copy(update={"webhook_max_attempts": 1})
        receiver.fail_always(500)
        act_as(events_app, "dvla", "consumer")
        await _subscribe(api, receiver.url)
        await emit(runtime, await add_citizen(events_engine), ["date_of_death"], "register")
        dispatcher = Dispatcher(runtime, concurrency=4, on_dead=_broken_counter)
        try:
            async with running(dispatcher):
                await receiver.until(1, accepted=False)
                async with asyncio.timeout(30):
                    while dispatcher._in_hand:
                        await asyncio.sleep(0.02)
                # The loop goes on: the next event is claimed and delivered.
                receiver.recover()
                await emit(runtime, await add_citizen(events_engine), ["date_of_death"], "register")
                await receiver.until(1)
        finally:
            await dispatcher.aclose()
        gc.collect()
        assert not [r for r in caplog.records if "never retrieved" in r.getMessage()]
        told = [r for r in caplog.records if r.name == "tellonce.events" and r.exc_info is not None]
        assert told
        assert {type(r.exc_info[1]) for r in told if r.exc_info} == {RuntimeError}
        assert dispatcher._in_hand == 0

    async def test_that_breaks_its_batch_leaves_none_of_the_batch_s_requests_going_on(
        self,
        events_app: FastAPI,
        api: httpx.AsyncClient,
        runtime: EventsRuntime,
        events_engine: AsyncEngine,
        receiver: WebhookReceiver,
    ) -> None:
        # Before, the slow receiver's request went on after its batch had ended, in a slot
        # the loop counted as free, and its outcome came after the batch had given it up.
        runtime.settings = runtime.settings.model_copy(update={"webhook_max_attempts": 1})
        receiver.fail_always(500)
        with SlowReceiver(5.0) as slow:
            act_as(events_app, "dvla", "consumer")
            await _subscribe(api, receiver.url)
            await _subscribe(api, slow.url)
            await emit(runtime, await add_citizen(events_engine), ["date_of_death"], "register")
            dispatcher = Dispatcher(runtime, concurrency=4, on_dead=_broken_counter)
            try:
                with pytest.raises(RuntimeError, match="counter"):
                    await asyncio.wait_for(dispatcher.run_once(), 30)
                assert dispatcher._turns._free == 4
                assert slow.answered == 0
            finally:
                await dispatcher.aclose()


def _broken_counter() -> None:
    """What is told of a dead letter (the metrics), broken."""
    raise RuntimeError("the dead-letter counter is broken")


class TestADeliveryNotSent:
    async def test_is_no_attempt_and_is_dead_only_with_the_receiver(
        self,
        events_app: FastAPI,
        api: httpx.AsyncClient,
        runtime: EventsRuntime,
        events_engine: AsyncEngine,
        audit_sink: ListAuditSink,
    ) -> None:
        # Two attempts each: the one that is sent and gets no answer has used one, the two
        # left unsent behind it none (before, all three had used one after one timeout).
        # Retries a minute or more away, so that "not at once" is plain to see.
        runtime.settings = runtime.settings.model_copy(
            update={
                "webhook_timeout_seconds": 1.0,
                "webhook_max_attempts": 2,
                "webhook_retry_base_seconds": 60.0,
                "webhook_retry_cap_seconds": 600.0,
            }
        )
        async with _stuck(events_app, api, runtime, events_engine, concurrency=1, events=3) as held:
            dispatcher, silent, stuck = held
            await asyncio.wait_for(dispatcher.run_once(), 30)
            assert len(silent.connections) == 1
            first, *unsent = await _deliveries(api, stuck["id"])
            assert (first["status"], first["attempts"]) == ("pending", 1)
            assert first["last_error"] == "the receiver did not answer in time"
            for delivery in unsent:
                assert (delivery["status"], delivery["attempts"]) == ("pending", 0)
                assert delivery["last_error"] == (
                    "not sent: another attempt to the receiver failed just before (it did not answer in time)"
                )
                # Released (its ``deliver`` entry audited before anything was sent), so
                # the list names its event, as the audit trail does.
                assert delivery["event_id"] is not None
            assert len(audit_sink.of("deliver")) == 3
            async with events_engine.begin() as conn:
                due = list((await conn.execute(select(Delivery.next_attempt_at))).scalars())
                # Retried later, with the backoff of the attempt that failed, not at once.
                assert len(set(due)) == 1
                assert due[0] > utcnow() + timedelta(seconds=20)
                # The retry span passes.
                passed = utcnow() - timedelta(seconds=1)
                await conn.execute(update(Delivery).values(next_attempt_at=passed))
            await asyncio.wait_for(dispatcher.run_once(), 30)
            assert len(silent.connections) == 2
        # The receiver did not answer through the whole span: the delivery tried is dead,
        # and those left behind it are dead with it, not starting the span again each.
        deliveries = await _deliveries(api, stuck["id"])
        assert sorted((d["status"], d["attempts"]) for d in deliveries) == [
            ("dead", 0),
            ("dead", 0),
            ("dead", 2),
        ]
        for delivery in deliveries:
            if delivery["attempts"] == 0:
                assert delivery["last_error"] == (
                    "not sent: the receiver did not answer any attempt of another delivery in its "
                    "retry span (it did not answer in time)"
                )

    async def test_keeps_the_time_of_its_last_attempt(
        self,
        events_app: FastAPI,
        api: httpx.AsyncClient,
        runtime: EventsRuntime,
        events_engine: AsyncEngine,
    ) -> None:
        # Before, the claim's time stayed in ``last_attempt_at`` of a delivery left unsent,
        # as if it had been attempted then.
        runtime.settings = runtime.settings.model_copy(update={"webhook_timeout_seconds": 1.0})
        async with _stuck(events_app, api, runtime, events_engine, concurrency=1, events=3) as held:
            dispatcher, silent, stuck = held
            earlier = utcnow() - timedelta(hours=1)
            async with events_engine.begin() as conn:
                _first, tried, never = (
                    await conn.execute(select(Delivery.id).order_by(Delivery.event_position))
                ).scalars()
                # One of those to be left unsent was attempted an hour ago.
                await conn.execute(
                    update(Delivery).where(Delivery.id == tried).values(attempts=1, last_attempt_at=earlier)
                )
                before = dict((await conn.execute(select(Delivery.id, Delivery.last_attempt_at))).all())
            await asyncio.wait_for(dispatcher.run_once(), 30)
            assert len(silent.connections) == 1
        async with events_engine.connect() as conn:
            after = {
                row.id: (row.last_attempt_at, row.attempts, row.last_error)
                for row in await conn.execute(select(Delivery))
            }
        assert after[tried][:2] == (before[tried], 1)
        assert after[never][:2] == (None, 0)
        for unsent in (tried, never):
            assert str(after[unsent][2]).startswith("not sent: ")
        # The one sent was attempted: its time is the claim's.
        [sent] = set(after) - {tried, never}
        assert after[sent][1] == 1
        assert after[sent][0] is not None
        assert [d["last_attempt_at"] is None for d in await _deliveries(api, stuck["id"])].count(True) == 1


class TestAHostThatDoesNotResolve:
    async def test_holds_only_its_own_deliveries_for_no_longer_than_the_timeout(
        self,
        events_app: FastAPI,
        api: httpx.AsyncClient,
        dispatcher: Dispatcher,
        runtime: EventsRuntime,
        events_engine: AsyncEngine,
        receiver: WebhookReceiver,
    ) -> None:
        # A subscriber's own name servers may never answer; before, each attempt waited
        # for the resolver, one host after another, and the batch with it.
        runtime.settings = runtime.settings.model_copy(update={"webhook_timeout_seconds": 1.0})
        port = int(receiver.url.rsplit(":", 1)[1].split("/", 1)[0])
        silent = asyncio.Event()

        async def resolver(host: str, _port: int) -> list[str]:
            if host == "silent.dns.test" and silent.is_set():
                await asyncio.sleep(60)
            return ["127.0.0.1"]

        runtime.resolver = resolver
        act_as(events_app, "dvla", "consumer")
        stuck = await _subscribe(api, f"http://silent.dns.test:{port}/hooks/tellonce")
        answering = await _subscribe(api, f"http://answers.dns.test:{port}/hooks/tellonce")
        silent.set()
        await emit(runtime, await add_citizen(events_engine), ["date_of_death"], "register")
        started = asyncio.get_running_loop().time()
        await asyncio.wait_for(dispatcher.run_once(), 10)
        assert asyncio.get_running_loop().time() - started < 2.5
        [request] = receiver.received
        assert request.headers["host"] == f"answers.dns.test:{port}"
        [delivered] = await _deliveries(api, answering["id"])
        assert delivered["status"] == "delivered"
        [refused] = await _deliveries(api, stuck["id"])
        assert (refused["status"], refused["last_error"]) == (
            "pending",
            "target refused: the host silent.dns.test could not be resolved in time",
        )


class _OddTransport(httpx.AsyncHTTPTransport):
    """Raises an error that is none of httpx's for a request whose query is ``odd``."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.query == b"odd":
            raise ValueError("not an httpx error")
        return await super().handle_async_request(request)


class TestAnErrorOutsideHttpx:
    async def test_fails_its_own_attempt_not_the_batch(
        self,
        events_app: FastAPI,
        api: httpx.AsyncClient,
        runtime: EventsRuntime,
        events_engine: AsyncEngine,
        receiver: WebhookReceiver,
    ) -> None:
        # Before, it left the batch's gather: every delivery of the batch was recorded as
        # failed ("internal error"), the one its receiver had taken too, and sent again.
        client = httpx.AsyncClient(
            transport=_OddTransport(), follow_redirects=False, trust_env=False, timeout=5
        )
        dispatcher = Dispatcher(runtime, client=client)
        try:
            act_as(events_app, "dvla", "consumer")
            odd = await _subscribe(api, receiver.url + "?odd")
            fine = await _subscribe(api, receiver.url)
            await emit(runtime, await add_citizen(events_engine), ["date_of_death"], "register")
            await asyncio.wait_for(dispatcher.run_once(), 30)
        finally:
            await client.aclose()
        assert len(receiver.received) == 1
        [delivered] = await _deliveries(api, fine["id"])
        assert (delivered["status"], delivered["last_error"]) == ("delivered", None)
        [failed] = await _deliveries(api, odd["id"])
        assert (failed["status"], failed["last_error"]) == (
            "pending",
            "could not reach the receiver: ValueError",
        )


class TestAnOddPortIsRefusedAtCreation:
    @pytest.mark.parametrize(
        "url",
        [
            "http://hooks.example:abc/hook",
            "http://hooks.example:65536/hook",
            "http://hooks.example:99999/hook",
            "http://hooks.example:-1/hook",
            "http://hooks.example:0/hook",
            "http://[::1/hook",
        ],
    )
    async def test_with_a_422_before_anything_is_resolved(
        self, events_app: FastAPI, api: httpx.AsyncClient, runtime: EventsRuntime, url: str
    ) -> None:
        # The dispatcher would otherwise meet it at every attempt, outside httpx's errors.
        async def resolver(host: str, _port: int) -> list[str]:
            raise AssertionError(f"{host} was resolved")

        runtime.resolver = resolver
        act_as(events_app, "dvla", "consumer")
        response = await api.post(
            "/v1/subscriptions",
            json={"fields": ["date_of_death"], "purpose": "licence-administration", "webhook_url": url},
        )
        body = _assert_problem(response, 422, "webhook-url-refused")
        assert body["errors"][0]["loc"] == ["body", "webhook_url"]


def _answering(raw: bytes) -> Callable[[socket.socket, threading.Event], None]:
    def answer(connection: socket.socket, stop: threading.Event) -> None:
        connection.sendall(raw)

    return answer


class TestOddAnswers:
    @pytest.mark.parametrize(
        ("raw", "code", "error"),
        [
            # Informational only (the receiver keeps the connection open): no final answer.
            (b"HTTP/1.1 103 Early Hints\r\n\r\n", None, "the receiver did not answer in time"),
            (
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\nSECRET",
                None,
                "could not reach the receiver: RemoteProtocolError",
            ),
            # A redirect without a Location, and statuses past 599: failures by their code.
            (b"HTTP/1.1 302 Found\r\nContent-Length: 6\r\n\r\nSECRET", 302, "the receiver answered 302"),
            (b"HTTP/1.1 999 Odd\r\nContent-Length: 6\r\n\r\nSECRET", 999, "the receiver answered 999"),
            (b"SECRET not http at all\r\n\r\n", None, "could not reach the receiver: RemoteProtocolError"),
        ],
    )
    async def test_each_is_a_failed_attempt_that_echoes_nothing_of_the_answer(
        self,
        events_app: FastAPI,
        api: httpx.AsyncClient,
        dispatcher: Dispatcher,
        runtime: EventsRuntime,
        events_engine: AsyncEngine,
        raw: bytes,
        code: int | None,
        error: str,
    ) -> None:
        runtime.settings = runtime.settings.model_copy(update={"webhook_timeout_seconds": 1.0})
        with RawReceiver(_answering(raw)) as odd:
            act_as(events_app, "dvla", "consumer")
            hook = await _subscribe(api, odd.url)
            await emit(runtime, await add_citizen(events_engine), ["date_of_death"], "register")
            await asyncio.wait_for(dispatcher.run_once(), 30)
        [delivery] = await _deliveries(api, hook["id"])
        assert (delivery["status"], delivery["last_status_code"], delivery["last_error"]) == (
            "pending",
            code,
            error,
        )
        assert "SECRET" not in str(delivery)


class TestAResolverThatBreaks:
    async def test_fails_that_targets_deliveries_not_the_batch(
        self,
        events_app: FastAPI,
        api: httpx.AsyncClient,
        dispatcher: Dispatcher,
        runtime: EventsRuntime,
        events_engine: AsyncEngine,
        receiver: WebhookReceiver,
    ) -> None:
        port = int(receiver.url.rsplit(":", 1)[1].split("/", 1)[0])
        breaking = False

        async def resolver(host: str, _port: int) -> list[str]:
            if breaking and host == "broken.dns.test":
                raise RuntimeError("the resolver broke")
            return ["127.0.0.1"]

        runtime.resolver = resolver
        act_as(events_app, "dvla", "consumer")
        broken = await _subscribe(api, f"http://broken.dns.test:{port}/hooks/tellonce")
        fine = await _subscribe(api, f"http://fine.dns.test:{port}/hooks/tellonce")
        breaking = True
        await emit(runtime, await add_citizen(events_engine), ["date_of_death"], "register")
        await asyncio.wait_for(dispatcher.run_once(), 30)
        [delivered] = await _deliveries(api, fine["id"])
        assert delivered["status"] == "delivered"
        [refused] = await _deliveries(api, broken["id"])
        assert (refused["status"], refused["last_error"]) == (
            "pending",
            "target refused: the host broken.dns.test could not be resolved",
        )
