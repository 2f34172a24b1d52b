"""One HTTP exchange bounded in total time and in the size of its answer.

httpx's timeout bounds each connect, read and write, not the exchange: a server that drips
its answer a byte at a time, or streams one without end, would hold the caller for ever
and grow its memory. Every call of this package goes through ``exchange``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
from httpx._client import UseClientDefault

from tellonce_client.errors import ResponseTimeout, ResponseTooLarge, TransportError

# The whole of one exchange (connect, send, headers and body), in seconds.
DEFAULT_TIMEOUT_SECONDS = 30.0
# The largest answer body read into memory (after any Content-Encoding is undone).
DEFAULT_MAX_RESPONSE_BYTES = 32 * 1024 * 1024
# The longest line of a streamed answer (the audit export), in characters.
DEFAULT_MAX_LINE_CHARS = 1024 * 1024


def _where(request: httpx.Request) -> str:
    # The method and path only: a query may hold a national id or a citizen id.
    return f"{request.method} {request.url.path}"


def transport_error(request: httpx.Request, error: httpx.TransportError) -> TransportError:
    """The library's error for httpx's ``error`` in the exchange of ``request``: a
    ``ResponseTimeout`` for a timeout, else a ``TransportError`` (raise it ``from error``)."""
    kind = type(error).__name__
    if isinstance(error, httpx.TimeoutException):
        return ResponseTimeout(f"the answer to {_where(request)} timed out ({kind})", request=request)
    return TransportError(f"the exchange of {_where(request)} failed ({kind})")


def _too_large(response: httpx.Response, max_bytes: int) -> ResponseTooLarge:
    return ResponseTooLarge(f"the answer to {_where(response.request)} is larger than {max_bytes} bytes")


async def _read(response: httpx.Response, max_bytes: int) -> None:
    """Read the body into ``response`` (as ``aread`` would), refusing one over ``max_bytes``."""
    declared = response.headers.get("Content-Length", "")
    if declared.isascii() and declared.isdigit() and len(declared) < 20 and int(declared) > max_bytes:
        raise _too_large(response, max_bytes)
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > max_bytes:
            raise ResponseTooLarge(
                f"the answer to {_where(response.request)} is larger than {max_bytes} bytes"
            )
        chunks.append(chunk)
    # What httpx's own ``aread`` sets: ``content``, ``text`` and ``json()`` read it from here.
    response._content = b"".join(chunks)


async def exchange(
    http: httpx.AsyncClient,
    request: httpx.Request,
    *,
    timeout: float | None,
    max_bytes: int,
    stream: bool = False,
    auth: httpx.Auth | UseClientDefault = httpx.USE_CLIENT_DEFAULT,
) -> httpx.Response:
    """Send ``request`` and read its answer, all within ``timeout`` seconds (``None``: no
    bound but httpx's own per-read one) and ``max_bytes``; raise ``ResponseTimeout`` or
    ``ResponseTooLarge`` otherwise, and ``TransportError`` for any other of httpx's
    transport errors. With ``stream`` a 2xx or 3xx body is left unread (only
    the headers are awaited within ``timeout``), for the caller to read and close."""
    response: httpx.Response | None = None
    try:
        async with asyncio.timeout(timeout):
            response = await http.send(request, stream=True, auth=auth)
            if stream and response.status_code < 400:
                return response
            try:
                await _read(response, max_bytes)
            finally:
                await response.aclose()
            return response
    except httpx.TransportError as error:
        raise transport_error(request, error) from error
    except TimeoutError:
        if timeout is None:  # not this bound's
            raise
        if response is not None:
            await response.aclose()
        raise ResponseTimeout(
            f"the answer to {_where(request)} took more than {timeout:g} seconds", request=request
        ) from None


async def lines(response: httpx.Response, max_chars: int) -> AsyncIterator[str]:
    """The lines of a streamed answer, without their ends; a line longer than
    ``max_chars`` raises ``ResponseTooLarge`` rather than growing without bound."""
    parts: list[str] = []
    size = 0
    async for text in response.aiter_text():
        *complete, rest = text.split("\n")
        for piece in complete:
            yield ("".join(parts) + piece).removesuffix("\r")
            parts, size = [], 0
        if rest:
            parts.append(rest)
            size += len(rest)
            if size > max_chars:
                where = _where(response.request)
                raise ResponseTooLarge(
                    f"a line of the answer to {where} is longer than {max_chars} characters"
                )
    if parts:
        yield "".join(parts).removesuffix("\r")
