from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response

from service.auth.dependencies import Principal, get_principal
from service.catalog import service as catalog_service
from service.catalog.schemas import CatalogOut
from service.db import driver_reads
from service.errors import repeated_query_name
from service.hotpath import stand_in

router = APIRouter(tags=["catalog"])


@dataclass(frozen=True)
class ServedCatalog:
    """The response body of one catalog version (versions never change once stored)."""

    version: int
    body: bytes


@router.get("/v1/catalog", response_model=CatalogOut)
async def get_catalog(request: Request, _caller: Annotated[Principal, Depends(get_principal)]) -> Response:
    """The departments, purposes and fields of this government, each field with its owner.

    Use it to find the field names and purpose ids that every other call takes. Any
    authenticated client may read it, whatever its roles.
    """
    return await catalog_response(request)


async def get_catalog_hot(request: Request) -> Response | None:
    """``get_catalog`` as a hot route (``service.hotpath``): authenticate, then the same body.
    None (the declared route answers) for a query that names a parameter twice, which the
    API refuses (``errors.RepeatedQueryMiddleware``)."""
    query: bytes = request.scope["query_string"]
    if query and repeated_query_name(query) is not None:
        return None
    await stand_in(request, get_principal)
    return await catalog_response(request)


async def catalog_response(request: Request) -> Response:
    """The newest catalog's body for an authenticated request. Authentication has just read
    the epoch key, which carries the newest catalog version: the body is rebuilt only when
    that version moves."""
    key = getattr(request.state, "epoch_key", None)
    served: ServedCatalog | None = getattr(request.app.state, "served_catalog", None)
    if served is None or key is None or served.version != key[2]:
        version, catalog = await catalog_service.current_on_driver(driver_reads(request))
        out = CatalogOut(version=version, **catalog.model_dump())
        served = ServedCatalog(version, out.model_dump_json().encode())
        request.app.state.served_catalog = served
    return Response(served.body, media_type="application/json")
