"""Bytes the HTTP parser refuses, answered as an RFC 9457 problem like every other refusal.

uvicorn answers a request it cannot parse (a control byte in a header value, a request
line or a header line it cannot read) itself, before any app sees it, with a plain-text
400. The protocol classes here answer that 400 with the service's problem+json instead,
for ``tellonce serve`` and ``tellonce witness serve`` alike, which serve them through
``service.read_deadline``'s subclasses (adding a deadline for reading each request).
``HTTP_PROTOCOL`` is the one uvicorn's ``auto`` would pick: httptools when it is
installed, h11 otherwise.

The answer is the same for every such request: its detail never repeats the refused
bytes, which are the caller's and may be personal data. The connection is closed after
it, as uvicorn closes it: the parser cannot tell where the next request would begin.

A request whose head (its request line and header fields) is still unfinished once more
than ``HEAD_LIMIT`` bytes of it have arrived is refused the same way, as 431
``request-header-too-large``, so that no one can make the server hold an unbounded header
in memory. h11 enforces the limit itself (uvicorn's ``h11_max_incomplete_event_size``,
whose default this is) on what it holds unparsed; httptools buffers a header of any
length, so its protocol here counts what it is fed. Either way a somewhat longer head that
arrives whole in one read may still be answered: the limit bounds memory, not headers.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, cast

import h11
from h11._connection import DEFAULT_MAX_INCOMPLETE_EVENT_SIZE
from uvicorn.protocols.http.h11_impl import H11Protocol

from service.errors import PROBLEM_JSON, MalformedRequest, RequestHeadTooLarge, ServiceError

# The most bytes of a request's head the server reads before refusing it with 431: h11's
# own default (16 KiB), which uvicorn's h11 protocol applies.
HEAD_LIMIT = DEFAULT_MAX_INCOMPLETE_EVENT_SIZE


def _answer(error: ServiceError) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """The problem+json body of ``error`` and the headers sent with it."""
    body = json.dumps(error.problem()).encode()
    return body, [
        (b"content-type", PROBLEM_JSON.encode()),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]


_MALFORMED = _answer(
    MalformedRequest(
        "The request is not valid HTTP/1.1 (a request line or header the server cannot parse, "
        "such as a control character in a header value); it was not read, and nothing was done."
    )
)
# The detail of the 431, which /openapi.json gives as the example of every operation's.
HEAD_TOO_LARGE_DETAIL = (
    f"The request line and header fields may hold at most {HEAD_LIMIT} bytes together; "
    "the request was not read, and nothing was done."
)
_TOO_LARGE = _answer(RequestHeadTooLarge(HEAD_TOO_LARGE_DETAIL))
_REASONS = {400: b"Bad Request", 431: b"Request Header Fields Too Large"}


class _Connection(h11.Connection):
    """h11's server connection, remembering whether it refused a head as too long (its
    ``RemoteProtocolError`` hints 431) for the answer uvicorn's protocol then sends."""

    head_too_large = False

    def next_event(self) -> Any:
        try:
            return super().next_event()
        except h11.RemoteProtocolError as exc:
            self.head_too_large = exc.error_status_hint == 431
            raise


class ProblemH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, with a malformed request's 400 (or a head's 431) as
    problem+json."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        limit = self.config.h11_max_incomplete_event_size
        self.conn = _Connection(h11.SERVER, HEAD_LIMIT if limit is None else limit)

    def send_400_response(self, msg: str) -> None:  # noqa: ARG002 (uvicorn's text, not sent)
        status = 431 if isinstance(self.conn, _Connection) and self.conn.head_too_large else 400
        body, answer_headers = _TOO_LARGE if status == 431 else _MALFORMED
        headers = [*self.server_state.default_headers, *answer_headers]
        for event in (
            h11.Response(status_code=status, headers=headers, reason=_REASONS[status]),
            h11.Data(data=body),
            h11.EndOfMessage(),
        ):
            self.transport.write(self.conn.send(event) or b"")
        self.transport.close()


HTTP_PROTOCOL: type[asyncio.Protocol] = ProblemH11Protocol

try:
    from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
except ImportError:  # httptools is not installed: uvicorn's ``auto`` picks h11
    pass
else:

    class ProblemHttpToolsProtocol(HttpToolsProtocol):
        """uvicorn's httptools protocol, with a malformed request's 400 as problem+json, and
        a head still unfinished past ``HEAD_LIMIT`` refused as 431.

        httptools hands a header over only once it is complete, so the head is measured in
        what is fed to the parser: data longer than the limit is fed in pieces of at most
        the limit, and a head still unfinished after more than the limit of bytes fed is
        refused. A head of at most the limit is always read, and no more than twice the
        limit of one is held. (Of data that ends one pipelined request and begins the next
        head, the head's share is unknown and not counted: such a head may be held for one
        piece more.)"""

        _in_message = False
        _head_open = False
        _heads_begun = 0
        _head_bytes = 0

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._in_message = self._head_open = True
            self._heads_begun += 1
            self._head_bytes = 0

        def on_headers_complete(self) -> None:
            self._head_open = False
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            self._in_message = False
            super().on_message_complete()

        def data_received(self, data: bytes) -> None:
            if len(data) <= HEAD_LIMIT:
                self._feed(data)
                return
            view = memoryview(data)
            for start in range(0, len(data), HEAD_LIMIT):
                protocol = self.transport.get_protocol()
                if protocol is not self:  # upgraded during an earlier piece: the rest is its
                    cast(asyncio.Protocol, protocol).data_received(bytes(view[start:]))
                    return
                if self.transport.is_closing():
                    return
                self._feed(bytes(view[start : start + HEAD_LIMIT]))

        def _feed(self, data: bytes) -> None:
            idle, begun = not self._in_message, self._heads_begun
            super().data_received(data)
            if not self._head_open or self.transport.is_closing():
                return
            if self._heads_begun == begun:  # the head was open before: all of data is its
                self._head_bytes += len(data)
            elif idle and self._heads_begun == begun + 1:  # the head began data
                self._head_bytes = len(data)
            if self._head_bytes > HEAD_LIMIT:
                self._send_problem(431)

        def send_400_response(self, msg: str) -> None:  # noqa: ARG002 (uvicorn's text, not sent)
            self._send_problem(400)

        def _send_problem(self, status: int) -> None:
            body, answer_headers = _TOO_LARGE if status == 431 else _MALFORMED
            lines = [STATUS_LINE[status]]
            for name, value in [*self.server_state.default_headers, *answer_headers]:
                lines += [name, b": ", value, b"\r\n"]
            lines += [b"\r\n", body]
            self.transport.write(b"".join(lines))
            self.transport.close()

    HTTP_PROTOCOL = ProblemHttpToolsProtocol
