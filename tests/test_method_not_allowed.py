"""Every method a named path does not serve is 405 with that path's ``Allow`` (RFC 9110,
15.5.6), never the answer of a route with a path parameter of the same shape.

``/v1/citizens/lookup`` has the shape of ``/v1/citizens/{citizen_id}`` and
``/v1/policies/simulate`` that of ``/v1/policies/{agreement_id}``: a ``GET`` of either
must not be read as a citizen or an agreement named ``lookup`` or ``simulate``. The paths
and methods come from the app's own routes, so a route added later is covered too.

405 comes before authentication, signed in or not, as for any other path (the router
refuses the method before a route's dependencies run).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import httpx
from fastapi import FastAPI
from fastapi.routing import RouteContext, iter_route_contexts
from starlette.routing import compile_path

from service.app import declared_routes
from service.errors import PROBLEM_JSON
from tests.fixtures.auth import act_as

METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
# Every role at once: a signed-in caller whose rights would take it into any route.
ALL_ROLES = ("consumer", "writer", "registrar", "data-owner", "auditor", "citizen-portal", "admin")
# A value each path parameter beside a named path really takes: such a path still reaches
# its route (a 401 without a token, from the route's own authentication).
REAL_VALUES = {"citizen_id": "c_01JDQ2V7X3M9K4T8R6W5Y0ZB1N", "agreement_id": "an-agreement"}


def served_methods(app: FastAPI) -> dict[str, set[str]]:
    """Each route path the app declares, with the methods its routes serve there."""
    served: dict[str, set[str]] = {}
    for context in iter_route_contexts(app.routes):
        if context.path and context.methods:
            served.setdefault(context.path, set()).update(context.methods)
    return served


def named_paths(app: FastAPI) -> dict[str, set[str]]:
    """The paths with no parameter, as ``Allow`` names their methods (HEAD wherever GET)."""
    return {
        path: methods | ({"HEAD"} if "GET" in methods else set())
        for path, methods in served_methods(app).items()
        if not compile_path(path)[2]
    }


def shadowing_routes(app: FastAPI) -> dict[str, set[str]]:
    """The paths with a parameter whose pattern also matches a named path."""
    named = named_paths(app)
    return {
        path: methods
        for path, methods in served_methods(app).items()
        if compile_path(path)[2] and any(compile_path(path)[0].match(name) for name in named)
    }


async def refusals(app: FastAPI, client: httpx.AsyncClient) -> list[str]:
    """Each request of a method a named path does not serve whose answer is not its 405."""
    wrong = []
    for path, allowed in sorted(named_paths(app).items()):
        for method in METHODS:
            if method in allowed:
                continue
            body_methods = {"POST", "PUT", "PATCH"}
            response = await client.request(method, path, json={} if method in body_methods else None)
            media = "text/html" if path.startswith("/console") else PROBLEM_JSON
            answer = (
                response.status_code,
                response.headers.get_list("allow"),
                response.headers.get("content-type", "").split(";")[0],
            )
            if answer != (405, [", ".join(sorted(allowed))], media):
                wrong.append(f"{method} {path}: {answer}")
                continue
            if media == PROBLEM_JSON and method != "HEAD":
                body: dict[str, Any] = response.json()
                if set(body) != {"type", "title", "status", "detail"} or body["status"] != 405:
                    wrong.append(f"{method} {path}: {body}")
                elif body["type"] != "https://tellonce.example/problems/method-not-allowed":
                    wrong.append(f"{method} {path}: {body}")
    return wrong


class TestMethodsANamedPathDoesNotServe:
    async def test_are_405_with_the_paths_allow_not_a_parameters_route(
        self, app: FastAPI, client: httpx.AsyncClient
    ) -> None:
        # The collisions this guards are there: the test would be idle without them.
        assert {"/v1/citizens/{citizen_id}", "/v1/policies/{agreement_id}"} <= set(shadowing_routes(app))
        assert await refusals(app, client) == []

    async def test_are_405_for_a_signed_in_caller_too(self, app: FastAPI, client: httpx.AsyncClient) -> None:
        act_as(app, "dvla", *ALL_ROLES)
        assert await refusals(app, client) == []

    async def test_the_allow_is_what_openapi_lists(self, app: FastAPI, client: httpx.AsyncClient) -> None:
        """The document's operations at a named path are the methods it allows, so
        /openapi.json stays true to the 405s."""
        document = (await client.get("/openapi.json")).json()
        for path, allowed in named_paths(app).items():
            if path in document["paths"]:
                listed = {method.upper() for method in document["paths"][path]}
                assert listed | ({"HEAD"} if "GET" in listed else set()) == allowed, path


class TestTheRoutesWalkedOnce:
    def test_are_the_routes_of_every_app_made(self, app: FastAPI) -> None:
        """``Allow`` and the route templates come from one walk per process
        (``declared_routes``); every app declares the same routes, in the same order."""

        def walked(contexts: Iterable[RouteContext]) -> list[tuple[str | None, frozenset[str], str]]:
            return [
                (context.path_format, frozenset(context.methods or ()), getattr(route, "name", ""))
                for context in contexts
                for route in [context.original_route]
            ]

        assert walked(declared_routes()) == walked(iter_route_contexts(app.routes))
        assert len(declared_routes()) > 50


class TestAParameterBesideANamedPath:
    async def test_still_takes_its_real_values(self, app: FastAPI, client: httpx.AsyncClient) -> None:
        # The console's catch-all (``/console/{rest:path}``) is its not-found page, beside
        # every console page (tests/console).
        shadowing = {
            path: methods for path, methods in shadowing_routes(app).items() if path.startswith("/v1/")
        }
        parameters = {name for path in shadowing for name in compile_path(path)[2]}
        assert parameters <= set(REAL_VALUES), "give REAL_VALUES a value for each parameter"
        for path, methods in shadowing.items():
            concrete = path.format(**REAL_VALUES)
            for method in sorted(methods):
                response = await client.request(method, concrete, json={} if method == "PUT" else None)
                assert response.status_code == 401, (method, concrete, response.text)
                assert response.headers["content-type"] == PROBLEM_JSON
