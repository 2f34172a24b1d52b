"""Gzip content coding for the one kind of response that asks for it: C2SP tlog-tiles
entry bundles, which the spec says SHOULD be compressed at the HTTP layer.

The service compresses nothing else (it runs no compression middleware). An entry bundle
is immutable and the same bytes for every reader allowed it: it carries no token or other
per-reader secret for a compression side channel (BREACH) to recover.
"""

from __future__ import annotations

import asyncio
import gzip
import re

# RFC 9110, section 12.4.2: a qvalue is 0 to 1 with at most three decimals.
_QVALUE = re.compile(r"0(?:\.[0-9]{0,3})?|1(?:\.0{0,3})?")
GZIP_LEVEL = 6


def _weights(accept_encoding: str) -> dict[str, float]:
    """Each coding the header names, lower-cased, with its weight. An element whose weight
    is malformed names nothing (RFC 9110, section 12.5.3: a recipient may ignore it)."""
    weights: dict[str, float] = {}
    for element in accept_encoding.split(","):
        coding, *parameters = (part.strip() for part in element.split(";"))
        if not coding:
            continue
        weight = 1.0
        for parameter in parameters:
            name, _equals, value = parameter.partition("=")
            if name.strip().lower() == "q":
                value = value.strip()
                weight = float(value) if _QVALUE.fullmatch(value) else -1.0
        if weight >= 0:
            weights[coding.lower()] = weight
    return weights


def accepts_gzip(accept_encoding: str | None) -> bool:
    """Whether a request's ``Accept-Encoding`` accepts gzip: it names ``gzip`` (or the old
    ``x-gzip``), or ``*`` without naming gzip, with a weight above 0. Without the header
    the answer is no: a client that sends none gets the bytes as stored."""
    if not accept_encoding:
        return False
    weights = _weights(accept_encoding)
    for coding in ("gzip", "x-gzip", "*"):
        if coding in weights:
            return weights[coding] > 0
    return False


async def gzipped(body: bytes) -> bytes:
    """``body`` gzip-compressed, off the event loop (a bundle may be megabytes). The
    header's time is 0, so the same body always compresses to the same bytes."""
    return await asyncio.to_thread(gzip.compress, body, GZIP_LEVEL, mtime=0)
