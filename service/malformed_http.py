"""Bytes the HTTP parser refuses, answered as an RFC 9457 problem like every other refusal.

uvicorn answers a request it cannot parse (a control byte in a header value, a request
line or a header line it cannot read) itself, before any app sees it, with a plain-text
400. The protocol classes here answer that 400 with the service's problem+json instead,
for ``tellonce serve`` and ``tellonce witness serve`` alike (``uvicorn.run(http=...)``).
``HTTP_PROTOCOL`` is the one uvicorn's ``auto`` would pick: httptools when it is
installed, h11 otherwise.

The answer is the same for every such request: its detail never repeats the refused
bytes, which are the caller's and may be personal data. The connection is closed after
it, as uvicorn closes it: the parser cannot tell where the next request would begin.
"""

from __future__ import annotations

import asyncio
import json

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from service.errors import PROBLEM_JSON, MalformedRequest

_BODY = json.dumps(
    MalformedRequest(
        "The request is not valid HTTP/1.1 (a request line or header the server cannot parse, "
        "such as a control character in a header value); it was not read, and nothing was done."
    ).problem()
).encode()
_HEADERS = [
    (b"content-type", PROBLEM_JSON.encode()),
    (b"content-length", str(len(_BODY)).encode()),
    (b"connection", b"close"),
]


class ProblemH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, with a malformed request's 400 as problem+json."""

    def send_400_response(self, msg: str) -> None:  # noqa: ARG002 (uvicorn's text, not sent)
        headers = [*self.server_state.default_headers, *_HEADERS]
        for event in (
            h11.Response(status_code=400, headers=headers, reason=b"Bad Request"),
            h11.Data(data=_BODY),
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
        """uvicorn's httptools protocol, with a malformed request's 400 as problem+json."""

        def send_400_response(self, msg: str) -> None:  # noqa: ARG002 (uvicorn's text, not sent)
            lines = [STATUS_LINE[400]]
            for name, value in [*self.server_state.default_headers, *_HEADERS]:
                lines += [name, b": ", value, b"\r\n"]
            lines += [b"\r\n", _BODY]
            self.transport.write(b"".join(lines))
            self.transport.close()

    HTTP_PROTOCOL = ProblemHttpToolsProtocol
