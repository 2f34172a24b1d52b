"""The witness's HTTP interface: ``POST /add-checkpoint`` and ``GET /checkpoint``.

Status codes follow C2SP tlog-witness: 404 unknown origin, 403 no trusted signature,
400 old size above the checkpoint's (or a body that does not parse), 409 with the
latest cosigned size as ``text/x.tlog.size`` when ``old`` is stale or a same-size
checkpoint has another root, 422 when the consistency proof fails, and 200 with the
cosignature line. Other refusals are RFC 9457 problem details like the service's.
"""

from __future__ import annotations

import asyncio

from fastapi import FastAPI, Query, Request, Response
from fastapi.responses import PlainTextResponse

from service.errors import (
    BadRequest,
    BodyLimitMiddleware,
    Forbidden,
    NotFound,
    ServiceError,
    install_error_handlers,
)
from service.witness.protocol import MalformedSubmission, parse_submission
from service.witness.state import Refusal, WitnessState

TLOG_SIZE = "text/x.tlog.size"
# At most 63 proof lines (under 3 KB) and a note, which C2SP signed-note says a verifier
# accepts with at least 16 signatures of up to "nearly 5kB" (post-quantum) each: about
# 6.7 KB a line in base64, so some 110 KB in all.
MAX_BODY_BYTES = 128 * 1024


class InconsistentProof(ServiceError):
    status, title, slug = 422, "Consistency proof does not verify", "witness-inconsistent"


_REFUSALS: dict[int, type[ServiceError]] = {
    400: BadRequest,
    403: Forbidden,
    404: NotFound,
    422: InconsistentProof,
}


def create_witness_app(state: WitnessState) -> FastAPI:
    app = FastAPI(
        title=f"witness {state.signer.name}",
        summary="A C2SP tlog-witness: cosigns checkpoints consistent with those it saw before.",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.witness = state
    install_error_handlers(app)
    app.add_middleware(BodyLimitMiddleware, limit=MAX_BODY_BYTES)

    @app.post("/add-checkpoint")
    async def add_checkpoint(request: Request) -> Response:
        """Cosign a checkpoint consistent with the latest one cosigned for its origin."""
        try:
            submission = parse_submission(await request.body())
        except MalformedSubmission as exc:
            raise BadRequest(str(exc)) from None
        try:
            cosigned = await asyncio.to_thread(state.add_checkpoint, submission)
        except Refusal as refusal:
            if refusal.status == 409:
                # Exactly as the spec says: the size and a newline, no charset parameter.
                return Response(
                    f"{refusal.latest_size}\n", status_code=409, headers={"Content-Type": TLOG_SIZE}
                )
            raise _REFUSALS[refusal.status](refusal.detail) from None
        return PlainTextResponse(cosigned.cosignature, media_type="text/plain; charset=utf-8")

    @app.get("/checkpoint")
    async def latest_checkpoint(origin: str = Query(..., min_length=1, max_length=255)) -> Response:
        """The latest checkpoint cosigned for ``origin``, with this witness's cosignature (for monitors)."""
        note = await asyncio.to_thread(state.latest, origin)
        if note is None:
            raise NotFound("This witness has cosigned no checkpoint for that origin.")
        return PlainTextResponse(
            note, media_type="text/plain; charset=utf-8", headers={"Cache-Control": "no-store"}
        )

    return app
