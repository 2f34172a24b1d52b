"""A deadline for reading each request, so a client that drips bytes holds no connection.

uvicorn times a connection out only while it waits, idle, for the next request of a
keep-alive connection (``timeout_keep_alive``, from the end of a response to the next
byte). A new connection that sends nothing, a request head sent a byte every few
seconds, or a body sent slower than any real client, is held for as long as the client
likes: each costs a socket, a file descriptor and a few kilobytes, and a few thousand of
them from one machine exhaust the process's file descriptors (slowloris).

Here a request must arrive whole, head and body, within ``read_timeout`` seconds of its
first byte (of the connection's opening, for the connection's first request). Past it
the server answers 408 problem+json itself, as it answers bytes it cannot parse
(``service.malformed_http``), and closes the connection; if the app has already begun
its answer, the connection is only closed. The app sees a client that went away.

The same holds for answers: a client that stops reading one (the transport's buffer past
its high-water mark) has ``read_timeout`` seconds to read enough for writing to resume
(as nginx's ``send_timeout``); else the connection is aborted and what was left of the
answer dropped. Without it, an answer nobody reads (a batch-get's megabyte) is kept in
memory for as long as the connection lasts.

The deadline is kept by the protocol classes (a mixin each for uvicorn's httptools and
h11 protocols), over ``service.malformed_http``'s: ``HTTP_PROTOCOL`` here is the class to
give ``uvicorn.run(http=...)``. ``tellonce serve`` reads the deadline from
``TELLONCE_REQUEST_READ_TIMEOUT_SECONDS`` (``SERVE_HTTP_PROTOCOL``); the witness, which
has no such settings, keeps ``DEFAULT_READ_TIMEOUT_SECONDS``.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, ClassVar

import h11

from service import malformed_http
from service.errors import PROBLEM_JSON, RequestTimeout

DEFAULT_READ_TIMEOUT_SECONDS = 60.0

_BODY = json.dumps(
    RequestTimeout(
        "The request did not arrive whole (its header fields and body) in the time the server "
        "allows for reading one; it was not read, and nothing was done."
    ).problem()
).encode()
_HEADERS = [
    (b"content-type", PROBLEM_JSON.encode()),
    (b"content-length", str(len(_BODY)).encode()),
    (b"connection", b"close"),
]


class _ReadDeadline:
    """The deadline's timer, common to both protocols. The protocol calls ``_reading`` when
    a request (or the connection) begins and ``_read`` when a request is read whole."""

    read_timeout: ClassVar[float] = DEFAULT_READ_TIMEOUT_SECONDS
    # uvicorn's protocol attributes, for the type checker.
    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport
    cycle: Any
    server_state: Any
    _deadline: asyncio.TimerHandle | None = None
    _write_deadline: asyncio.TimerHandle | None = None

    def _read_timeout(self) -> float:
        return self.read_timeout

    def _reading(self) -> None:
        """A request is being read: start its deadline, unless one is running."""
        if self._deadline is None:
            self._deadline = self.loop.call_later(self._read_timeout(), self._too_slow)

    def _read(self) -> None:
        """No request is being read (one was read whole, or the connection is gone)."""
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _gone(self) -> None:
        """The connection is lost: neither deadline is kept."""
        self._read()
        if self._write_deadline is not None:
            self._write_deadline.cancel()
            self._write_deadline = None

    def pause_writing(self) -> None:
        """The client stopped reading (the transport's buffer is past its high-water mark):
        it has ``read_timeout`` seconds to read enough to resume writing."""
        super().pause_writing()  # type: ignore[misc]
        if self._write_deadline is None:
            self._write_deadline = self.loop.call_later(self._read_timeout(), self._not_reading)

    def resume_writing(self) -> None:
        if self._write_deadline is not None:
            self._write_deadline.cancel()
            self._write_deadline = None
        super().resume_writing()  # type: ignore[misc]

    def _not_reading(self) -> None:
        """The answer is dropped unsent: nobody was reading it."""
        self._write_deadline = None
        if not self.transport.is_closing():
            self.transport.abort()

    def _too_slow(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        cycle = self.cycle
        if cycle is None or cycle.response_complete or not cycle.response_started:
            lines = [b"HTTP/1.1 408 Request Timeout\r\n"]
            for name, value in [*self.server_state.default_headers, *_HEADERS]:
                lines += [name, b": ", value, b"\r\n"]
            lines += [b"\r\n", _BODY]
            self.transport.write(b"".join(lines))
        self.transport.close()


class _H11ReadDeadline(_ReadDeadline):
    """For uvicorn's h11 protocol: whether a request is being read is h11's state of the
    client after each receipt, and after each response (which may begin a pipelined one)."""

    conn: h11.Connection

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        self._track()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)  # type: ignore[misc]
        self._track()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # type: ignore[misc]
        self._track()

    def connection_lost(self, exc: Exception | None) -> None:
        self._gone()
        super().connection_lost(exc)  # type: ignore[misc]

    def _track(self) -> None:
        if self.transport.is_closing():
            self._read()
            return
        state = self.conn.their_state
        # Idle with bytes of a head buffered, or with none yet on a new connection (an idle
        # keep-alive connection is uvicorn's timeout_keep_alive's); or part of a body read.
        begun = bool(self.conn.trailing_data[0]) or self.cycle is None
        if state is h11.SEND_BODY or (state is h11.IDLE and begun):
            self._reading()
        else:
            self._read()


class _HttpToolsReadDeadline(_ReadDeadline):
    """For uvicorn's httptools protocol: the parser's callbacks say where a request begins
    and where it has been read whole."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        self._reading()

    def on_message_begin(self) -> None:
        super().on_message_begin()  # type: ignore[misc]
        self._reading()

    def on_message_complete(self) -> None:
        super().on_message_complete()  # type: ignore[misc]
        self._read()

    def connection_lost(self, exc: Exception | None) -> None:
        self._gone()
        super().connection_lost(exc)  # type: ignore[misc]


class _FromSettings:
    """The deadline of ``tellonce serve``: ``TELLONCE_REQUEST_READ_TIMEOUT_SECONDS``."""

    def _read_timeout(self) -> float:
        from service.config import get_settings

        return get_settings().request_read_timeout_seconds


class DeadlineH11Protocol(_H11ReadDeadline, malformed_http.ProblemH11Protocol):
    """uvicorn's h11 protocol, with malformed_http's answers and a read deadline."""


class ServeH11Protocol(_FromSettings, DeadlineH11Protocol):
    """``DeadlineH11Protocol`` with ``tellonce serve``'s configured deadline."""


HTTP_PROTOCOL: type[asyncio.Protocol] = DeadlineH11Protocol
SERVE_HTTP_PROTOCOL: type[asyncio.Protocol] = ServeH11Protocol

if hasattr(malformed_http, "ProblemHttpToolsProtocol"):  # httptools is installed

    class DeadlineHttpToolsProtocol(_HttpToolsReadDeadline, malformed_http.ProblemHttpToolsProtocol):
        """uvicorn's httptools protocol, with malformed_http's answers and a read deadline."""

    class ServeHttpToolsProtocol(_FromSettings, DeadlineHttpToolsProtocol):
        """``DeadlineHttpToolsProtocol`` with ``tellonce serve``'s configured deadline."""

    HTTP_PROTOCOL = DeadlineHttpToolsProtocol
    SERVE_HTTP_PROTOCOL = ServeHttpToolsProtocol
