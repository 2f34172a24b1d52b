"""The request metrics keep a series per method only for the standard methods: h11 passes
any token a client sends as the method, and each new label value would otherwise be new
series kept for the process's life (memory, and a /metrics answer, without bound)."""

from __future__ import annotations

import httpx
from fastapi import FastAPI

from service.observability import COUNTED_METHODS


def _methods(app: FastAPI) -> set[str]:
    found: set[str] = set()
    for metric in (app.state.metrics.requests, app.state.metrics.latency):
        for family in metric.collect():
            found |= {sample.labels["method"] for sample in family.samples if "method" in sample.labels}
    return found


async def test_methods_a_client_makes_up_add_no_series(client: httpx.AsyncClient, app: FastAPI) -> None:
    for number in range(40):
        answer = await client.request(f"MADEUP{number}", "/healthz")
        assert answer.status_code in (400, 405), answer.text
        await client.request(f"OTHER{number}", f"/no-such-path-{number}")
    assert (await client.get("/healthz")).status_code == 200
    methods = _methods(app)
    assert "GET" in methods
    assert methods <= COUNTED_METHODS | {"other"}, sorted(methods)
