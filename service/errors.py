"""RFC 9457 problem details for every error the service returns.

Domains raise a ``ServiceError`` subclass. One set of handlers turns it, FastAPI's
validation errors, unknown routes and unexpected exceptions into
``application/problem+json``. No route builds an error body by hand.
"""

from __future__ import annotations

import errno
import json
import logging
import re
import socket
import sqlite3
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from http import HTTPStatus
from typing import Any, ClassVar
from urllib.parse import parse_qsl

from fastapi import FastAPI, Request, Response, params
from fastapi._compat import ModelField
from fastapi.dependencies.models import Dependant
from fastapi.dependencies.utils import get_flat_params
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import RouteContext
from sqlalchemy import exc as sa_exc
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.observability import current_request_id

logger = logging.getLogger("tellonce.errors")

PROBLEM_JSON = "application/problem+json"
PROBLEM_BASE = "https://tellonce.example/problems/"


# Where a problem's input came from: its source (``body``, ``query``, ``path`` or
# ``header``) and then the input's name, as FastAPI's request validation locates it and
# ``ProblemError`` in the OpenAPI document promises (``("query", "purpose")``). Checks take
# the prefix from their call site as a constant, and build a list from it only to refuse.
Loc = tuple[str | int, ...]


# The shape of a name a problem may repeat back: the service's own names of parameters,
# body members and parts all have it. A key or parameter name from the request that has
# another shape may be a value sent where a name belongs (a national id used as a JSON key),
# so it is said generically instead, in the problem and so in the logs.
SAYABLE_NAME = re.compile(r"[a-z_]{1,64}")


def sayable_name(name: object) -> str | None:
    """``name`` if a problem may repeat it back (``SAYABLE_NAME``); None if it must be said
    generically ("an unknown field"), being perhaps personal data."""
    return name if isinstance(name, str) and SAYABLE_NAME.fullmatch(name) else None


class ProblemResponse(JSONResponse):
    media_type = PROBLEM_JSON


class ServiceError(Exception):
    """A refusal the caller can act on. Carries its HTTP status and a stable type slug."""

    status: ClassVar[int] = 400
    title: ClassVar[str] = "Bad request"
    slug: ClassVar[str] = "bad-request"

    def __init__(
        self,
        detail: str | None = None,
        *,
        errors: Sequence[Mapping[str, Any]] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.detail = detail or self.title
        self.errors = [dict(e) for e in errors] if errors else None
        self.headers = dict(headers or {})
        super().__init__(self.detail)

    def problem(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": PROBLEM_BASE + self.slug,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        if self.errors:
            body["errors"] = self.errors
        return body


class BadRequest(ServiceError):
    status, title, slug = 400, "Bad request", "bad-request"


class MalformedBody(ServiceError):
    status, title, slug = 400, "Malformed request body", "malformed-body"


class MalformedRequest(ServiceError):
    """Bytes that are no HTTP/1.1 request, refused by the server before any app sees them
    (``service.malformed_http``)."""

    status, title, slug = 400, "Malformed HTTP request", "malformed-request"


class RequestHeadTooLarge(ServiceError):
    """A request line and header fields longer than the server reads
    (``service.malformed_http.HEAD_LIMIT``), refused before any app sees them (RFC 6585
    section 5)."""

    status, title, slug = 431, "Request header fields too large", "request-header-too-large"


class Unauthenticated(ServiceError):
    """401 with the RFC 6750 challenge: ``error`` names what was wrong with a bearer token
    sent; ``None`` when none was (no ``Authorization``, or another scheme), where RFC 6750
    section 3.1 says the challenge carries no error code."""

    status, title, slug = 401, "Authentication required", "unauthenticated"

    def __init__(self, detail: str | None = None, *, error: str | None = "invalid_token") -> None:
        challenge = "Bearer" if error is None else f'Bearer error="{error}"'
        super().__init__(detail, headers={"WWW-Authenticate": challenge})


class MalformedAuthorization(ServiceError):
    """400 for a Bearer ``Authorization`` header with no token after the scheme: RFC 6750,
    section 3.1, answers ``invalid_request`` with 400, the challenge naming the error."""

    status, title, slug = 400, "Malformed authorization", "malformed-authorization"

    def __init__(self, detail: str) -> None:
        super().__init__(detail, headers={"WWW-Authenticate": 'Bearer error="invalid_request"'})


class Forbidden(ServiceError):
    status, title, slug = 403, "Forbidden", "forbidden"


class InsufficientScope(Forbidden):
    """403 for a token without a scope the call needs, with the RFC 6750 challenge that
    names the scopes (any one of ``scopes`` would do where ``detail`` says so)."""

    def __init__(self, detail: str, scopes: Iterable[str]) -> None:
        challenge = f'Bearer error="insufficient_scope", scope="{" ".join(sorted(scopes))}"'
        super().__init__(detail, headers={"WWW-Authenticate": challenge})


class NotFound(ServiceError):
    status, title, slug = 404, "Not found", "not-found"


class MethodNotAllowed(ServiceError):
    status, title, slug = 405, "Method not allowed", "method-not-allowed"


class Conflict(ServiceError):
    status, title, slug = 409, "Conflict", "conflict"


class Gone(ServiceError):
    status, title, slug = 410, "Gone", "gone"


class PreconditionFailed(ServiceError):
    status, title, slug = 412, "Precondition failed", "precondition-failed"


class PayloadTooLarge(ServiceError):
    status, title, slug = 413, "Request body too large", "payload-too-large"


class UnsupportedMediaType(ServiceError):
    status, title, slug = 415, "Unsupported media type", "unsupported-media-type"


class RangeNotSatisfiable(ServiceError):
    status, title, slug = 416, "Range not satisfiable", "range-not-satisfiable"


class ValidationFailed(ServiceError):
    status, title, slug = 422, "Validation failed", "validation-failed"


class InvalidCursor(ValidationFailed):
    """A list's ``cursor`` (or the event feed's ``after``) that this service never gave.
    422 on every list, as FastAPI answers the same parameter when it is too long."""

    title, slug = "Invalid cursor", "invalid-cursor"


def bad_cursor(loc: list[str | int] | None = None) -> InvalidCursor:
    """The one refusal of a cursor, naming the parameter (``["query", "cursor"]`` unless
    told) and never echoing the value."""
    where: list[str | int] = ["query", "cursor"] if loc is None else loc
    return InvalidCursor(
        "The cursor is not one this service gave.", errors=[{"loc": where, "msg": "invalid cursor"}]
    )


class PreconditionRequired(ServiceError):
    status, title, slug = 428, "Precondition required", "precondition-required"


class RequestTimeout(ServiceError):
    """A request whose head and body did not arrive in the time the server allows for
    reading one (``service.read_deadline``): answered by the server itself, and the
    connection closed."""

    status, title, slug = 408, "Request timeout", "request-timeout"


class IncompleteRequest(ServiceError):
    """A request whose client closed the connection before its body arrived whole: the
    answer is never delivered, but the request ends as a refusal, not an unhandled error."""

    status, title, slug = 400, "Incomplete request", "incomplete-request"


class TooManyRequests(ServiceError):
    status, title, slug = 429, "Too many requests", "rate-limited"

    def __init__(self, retry_after_seconds: int, detail: str | None = None) -> None:
        super().__init__(detail, headers={"Retry-After": str(max(1, retry_after_seconds))})


# How long a client should wait before trying again after a 503.
RETRY_AFTER_UNAVAILABLE_SECONDS = 5


class ServiceUnavailable(ServiceError):
    status, title, slug = 503, "Service unavailable", "unavailable"

    def __init__(
        self,
        detail: str | None = None,
        *,
        errors: Sequence[Mapping[str, Any]] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(
            detail,
            errors=errors,
            headers={"Retry-After": str(RETRY_AFTER_UNAVAILABLE_SECONDS), **(headers or {})},
        )


class DatabaseUnavailable(ServiceUnavailable):
    title, slug = "Database unavailable", "database-unavailable"


class UnkeepableCharacter(BadRequest):
    title, slug = "Character the store cannot keep", "unkeepable-character"


def _caused_by(exc: BaseException, matches: Callable[[BaseException], bool]) -> bool:
    """Whether ``exc``, anything in its chain of causes and contexts, or a member of an
    exception group among them ``matches``."""
    return _first_match(exc, matches) is not None


def _first_match(exc: BaseException, matches: Callable[[BaseException], bool]) -> BaseException | None:
    """The first of ``exc``, its chain of causes and contexts, and the members of exception
    groups among them that ``matches``; None if none does."""
    seen: set[int] = set()
    stack: list[BaseException] = [exc]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if matches(current):
            return current
        if isinstance(current, BaseExceptionGroup):
            stack.extend(current.exceptions)
        stack.extend(e for e in (current.__cause__, current.__context__) if e is not None)
    return None


def _unkeepable_character(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) is text the database cannot store: a NUL, which
    PostgreSQL's text refuses (SQLSTATE 22021, asyncpg's CharacterNotInRepertoireError), a
    character the database's encoding lacks (22P05, UntranslatableCharacterError), or a
    lone surrogate, which no driver can encode as UTF-8 (SQLite stores a NUL as it is)."""
    return _caused_by(exc, _is_unkeepable)


def _is_unkeepable(exc: BaseException) -> bool:
    if getattr(exc, "sqlstate", None) in _UNKEEPABLE_SQLSTATES:
        return True
    if type(exc).__module__.startswith("asyncpg") and type(exc).__name__ in _ASYNCPG_UNKEEPABLE:
        return True
    return _surrogate(exc)


def _surrogate(exc: BaseException) -> bool:
    return (
        isinstance(exc, UnicodeEncodeError)
        and exc.encoding.replace("-", "").lower() == "utf8"
        and exc.reason == "surrogates not allowed"
    )


_UNKEEPABLE_SQLSTATES = frozenset({"22021", "22P05"})
_ASYNCPG_UNKEEPABLE = frozenset({"CharacterNotInRepertoireError", "UntranslatableCharacterError"})
# The value is never echoed: it is the caller's own input, and may be personal data.
_UNKEEPABLE = "The request holds a character the store cannot keep (such as a NUL); nothing was changed."


def database_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) is the database being unreachable or gone away:
    a refused or dropped connection, a pool that cannot hand one out, a database that
    cannot be opened. Errors in a statement that did run (a constraint, bad SQL) are not."""
    return _caused_by(exc, _is_unavailable)


# While the database stays unusable, how often a failing loop (or the refused requests)
# log a line again; the first failure of a run of them is logged at once.
REPEAT_LOG_SECONDS = 60.0


def _driver_line(exc: BaseException) -> str:
    """The innermost cause's type and first line: a connection's fate or a SQLite condition
    ("database or disk is full", "attempt to write a readonly database"), never a bound
    value (those are hidden from SQLAlchemy's own text, which is not used). The failure is
    found inside an exception group too (a task group's), and named rather than the group."""
    cause = _first_match(exc, _is_unavailable) or exc
    while cause.__cause__ is not None:
        cause = cause.__cause__
    said = (str(cause).splitlines() or [""])[0][:200]
    return f"{type(cause).__name__}: {said}"


# How long a write that failed for storage reasons keeps ``/readyz`` at 503 when no write
# succeeds after it (``FailingWrites``).
WRITES_FAILING_SECONDS = 30.0


class FailingWrites:
    """Whether this process's writes are failing for storage reasons (``storage_refused``:
    the SQLite file full, read-only, failing its I/O, locked by another connection past the
    busy timeout; the PostgreSQL server's disk full, out of memory, or read-only): ``/readyz``
    answers 503 while they are, so a load balancer takes the node out. Told by what answers
    those writes 503 (the requests refused for an unusable database, the audit writer's
    batches: their ``FailureLog``), and by the audit writer's next committed batch that a
    write succeeds again.

    A database lost or refusing connections is not told: ``/readyz`` reads the database
    itself, and so answers 503 while it is down and 200 as soon as it is back, where one
    connection lost (a request's 503) would have kept a healthy node out. Nor is a pool or
    this process's write queue (``service.sqlite_turns``) that ran out of time: that is a
    busy process, and a balancer taking it out would pass its load on to the others.

    A failure counts for ``window_seconds`` at most: a node the balancer took out gets no
    requests, so no write of its would succeed to bring it back. After that it is ready
    again, and the balancer's next requests try the storage once more."""

    def __init__(
        self, *, window_seconds: float = WRITES_FAILING_SECONDS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.window_seconds = window_seconds
        self.clock = clock
        self._failed_at: float | None = None

    def failed(self, exc: BaseException) -> None:
        """A write failed with ``exc``: it counts if the storage refused it."""
        if storage_refused(exc):
            self._failed_at = self.clock()

    def succeeded(self) -> None:
        self._failed_at = None

    def failing(self) -> bool:
        return self._failed_at is not None and self.clock() - self._failed_at < self.window_seconds


class FailureLog:
    """The log lines of something that fails again and again while the database cannot be
    used: a background loop's rounds (the audit writer's batches, the sequencer's, the
    dispatcher's, the witness submitter's) or the requests answered 503.

    A failure because the database was unreachable, gone away, locked, full, read-only or
    failing its I/O (expected during a restart, a failover or a full disk; the next round
    tries again) is one warning line with the driver's error: the first of a run of them at
    once, then at most one line every ``repeat_seconds`` with the number left unlogged
    meanwhile. A disk that stays full would otherwise take a line a round, twenty a second
    from the sequencer, and the log is often on that disk. The first success after such
    failures says so (``succeeded``: an attribute test when nothing failed). Anything else
    is a bug, and logs its traceback every time.

    With ``writes``, each failure of the database and each success is told to it too: the
    log of something that writes, whose failures make the process not ready when the
    storage refused it (``FailingWrites``).

    ``expected`` widens what counts as such a failure, for a loop that meets the database's
    absence through a layer that names it otherwise (the dispatcher's audit appends get the
    audit writer's ``ServiceUnavailable``); its lines say "unavailable" and the error's type
    and first line, "database unavailable" only when the driver's error is in it."""

    def __init__(
        self,
        log: logging.Logger,
        name: str,
        *,
        repeat_seconds: float = REPEAT_LOG_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        writes: FailingWrites | None = None,
        expected: Callable[[BaseException], bool] = database_unavailable,
    ) -> None:
        self.log = log
        self.name = name
        self.writes = writes
        self.repeat_seconds = repeat_seconds
        self.clock = clock
        self.expected = expected
        self.failing = False
        self._logged_at = 0.0
        self._unlogged = 0
        self._failures = 0

    def failed(self, message: str, exc: BaseException, *args: object, **extra: object) -> None:
        """Log ``message % args`` for ``exc`` (``extra`` as the record's extra fields) unless
        a line for this run of failures was logged less than ``repeat_seconds`` ago."""
        database = database_unavailable(exc)
        if not (database or self.expected(exc)):
            self.log.error(message, *args, exc_info=exc, extra=extra)
            return
        if self.writes is not None:
            self.writes.failed(exc)
        now = self.clock()
        self._failures += 1
        if self.failing and now - self._logged_at < self.repeat_seconds:
            self._unlogged += 1
            return
        what = "database unavailable" if database else "unavailable"
        line = f"{message}: {what} ({_driver_line(exc).replace('%', '%%')})"
        if self._unlogged:
            line += f"; {self._unlogged} more since the last such line"
        self.log.warning(line, *args, extra=extra)
        self.failing, self._logged_at, self._unlogged = True, now, 0

    def succeeded(self) -> None:
        if self.writes is not None:
            self.writes.succeeded()
        if self.failing:
            self.log.warning("%s: the database is usable again, after %d failures", self.name, self._failures)
            self.failing, self._unlogged, self._failures = False, 0, 0


def _is_unavailable(exc: BaseException) -> bool:
    if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
        return True
    if isinstance(exc, sa_exc.OperationalError | sa_exc.InterfaceError | sa_exc.TimeoutError):
        return True
    if isinstance(exc, ConnectionError | TimeoutError | sqlite3.OperationalError):
        return True
    if isinstance(exc, socket.gaierror) or (
        isinstance(exc, OSError)
        and (exc.errno in _NETWORK_ERRNOS or str(exc).startswith("Multiple exceptions"))
    ):
        return True
    return type(exc).__module__.startswith("asyncpg") and type(exc).__name__ in _ASYNCPG_UNAVAILABLE


def storage_refused(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) is the database's storage refusing a write
    (``FailingWrites``): SQLite's file full, read-only, failing its I/O, no longer openable,
    or locked by another connection past the busy timeout, as its result code says; a
    PostgreSQL server's disk full, out of memory, or read-only, as its SQLSTATE says."""
    return _caused_by(exc, _is_storage_refusal)


def _is_storage_refusal(exc: BaseException) -> bool:
    if getattr(exc, "sqlstate", None) in _POSTGRESQL_STORAGE:
        return True
    # The primary result code (the low byte): SQLITE_IOERR_WRITE is an SQLITE_IOERR. The
    # write queue's timeout (``service.sqlite_turns``) carries none.
    code = getattr(exc, "sqlite_errorcode", None)
    return isinstance(exc, sqlite3.Error) and isinstance(code, int) and code & 0xFF in _SQLITE_STORAGE


# disk_full, out_of_memory, read_only_sql_transaction (a hot standby after a failover, or
# ``default_transaction_read_only``): the asyncpg errors ``_ASYNCPG_UNAVAILABLE`` names.
_POSTGRESQL_STORAGE = frozenset({"53100", "53200", "25006"})


_SQLITE_STORAGE = frozenset(
    {
        sqlite3.SQLITE_BUSY,
        sqlite3.SQLITE_READONLY,
        sqlite3.SQLITE_IOERR,
        sqlite3.SQLITE_FULL,
        sqlite3.SQLITE_CANTOPEN,
    }
)


# Connection-level failures (a refused, reset or unreachable database server).
_NETWORK_ERRNOS = frozenset(
    {
        errno.ECONNREFUSED,
        errno.ECONNRESET,
        errno.EHOSTUNREACH,
        errno.ENETUNREACH,
        errno.ETIMEDOUT,
        errno.EPIPE,
    }
)
_ASYNCPG_UNAVAILABLE = frozenset(
    {
        "CannotConnectNowError",
        "ConnectionDoesNotExistError",
        "ConnectionFailureError",
        "InterfaceError",
        "PostgresConnectionError",
        "TooManyConnectionsError",
        "AdminShutdownError",
        "CrashShutdownError",
        # The driver lost track of a connection's protocol state ("cannot switch to state
        # 12; another operation (2) is in progress"): seen on the raw-driver pool when the
        # server ends connections while statements run on them (MagicStack/asyncpg#1069).
        "InternalClientError",
        # The server refusing writes for now: its disk full (53100), out of memory (53200),
        # or read-only (25006: a hot standby after a failover, or
        # ``default_transaction_read_only``). Not the request's fault; the next may pass.
        "DiskFullError",
        "OutOfMemoryError",
        "ReadOnlySQLTransactionError",
    }
)


def problem_response(error: ServiceError) -> ProblemResponse:
    return ProblemResponse(error.problem(), status_code=error.status, headers=error.headers)


def _loc(parts: Sequence[Any], refused_keys: set[tuple[Any, ...]], *, extra: bool = False) -> list[str | int]:
    """An error's location, with ``"[key]"`` in place of a key the caller chose that its
    pattern refused (``refused_keys``: their locations).

    pydantic locates such a key as ``[..., key, "[key]"]``, and an error in the value under
    it as ``[..., key, ...]``: a national id sent where a field name belongs would be
    repeated in both. A member the model does not declare (``extra``: the location ends in
    its name) is named only if it is ``sayable_name``, and otherwise located by the object
    that holds it."""
    if extra and parts and sayable_name(parts[-1]) is None:
        parts = parts[:-1]
    kept: list[str | int] = []
    for n, part in enumerate(parts):
        if tuple(parts[: n + 1]) not in refused_keys:
            kept.append(part if isinstance(part, int) else str(part))
        elif n + 1 == len(parts) or parts[n + 1] != "[key]":
            kept.append("[key]")
    return kept


def _request_id(request: Request) -> str:
    # The 500 handler runs in Starlette's outermost middleware, after the request context
    # has been left, so the id comes from the scope the context left behind.
    return str(request.scope.get("state", {}).get("request_id") or current_request_id())


async def _service_error(_request: Request, exc: Exception) -> ProblemResponse:
    if not isinstance(exc, ServiceError):
        raise exc
    return problem_response(exc)


async def _validation_error(request: Request, exc: Exception) -> ProblemResponse:
    if not isinstance(exc, RequestValidationError):
        raise exc
    raw = exc.errors()
    if any(e.get("type") == "json_invalid" for e in raw):
        return problem_response(MalformedBody("The request body is not valid JSON."))
    if any(tuple(e.get("loc", ())) == ("body",) for e in raw) and not _json_media_type(request):
        # A JSON body route given another media type (or none): FastAPI hands it the raw
        # bytes, which then fail as "not an object"; the caller's fix is the header.
        return problem_response(
            UnsupportedMediaType("Send the body as JSON, with 'Content-Type: application/json'.")
        )
    # Never echo the submitted input back: it may be personal data. Neither the value
    # (``input``), a key that fails its pattern, nor an undeclared key of no name's shape
    # (``_loc``).
    refused_keys = {tuple(e["loc"][:-1]) for e in raw if e.get("loc", ())[-1:] == ("[key]",)}
    errors = [
        {
            "loc": _loc(e.get("loc", ()), refused_keys, extra=e.get("type") == "extra_forbidden"),
            "msg": str(e.get("msg", "")),
        }
        for e in raw
    ]
    return problem_response(ValidationFailed("The request is not valid.", errors=errors))


def _json_media_type(request: Request) -> bool:
    return _is_json(request.headers.get("content-type") or "")


def _is_json(content_type: str) -> bool:
    """Whether a Content-Type is JSON (``application/json`` or ``application/*+json``)."""
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


class AllowedMethods:
    """The methods served at each path, for the ``Allow`` header of a 405 (RFC 9110,
    15.5.6: every method the resource supports). Starlette names only the methods of the
    first route whose path matched, so a path served by two routes (``GET`` and ``DELETE
    /v1/citizens/{id}``) lost one. Built from the routes an app declares, after they are all
    included (``app.state.allowed_methods``).

    A route counts only where the path's segments are values its path parameters take:
    ``/v1/citizens/lookup`` has the shape of ``/v1/citizens/{citizen_id}``, but ``lookup``
    is no citizen id (its ``GET`` is a 422), so that path allows ``POST`` alone, as
    /openapi.json says. A path no route takes (``/v1/citizens/not-an-id``) still names the
    methods of every route of its shape: a 405 always carries ``Allow``.

    A path a route declares by name is served by the routes declared at that name alone:
    ``simulate`` in ``/v1/policies/simulate`` is no agreement id, though it has the form of
    one, so that path allows ``POST`` alone too (``by_name``, which ``NamedPathMiddleware``
    enforces: Starlette would send a ``GET`` to the parameter's route)."""

    def __init__(self, routes: Iterable[RouteContext]) -> None:
        # ``routes``: FastAPI's own walk of the app's routes, through every included router,
        # as its OpenAPI document is made from (``service.app.declared_routes``).
        declared = [
            (context.path, frozenset(context.methods), _path_fields(context))
            for context in routes
            if context.path and context.methods
        ]
        self._routes = [(compile_path(path)[0], methods, fields) for path, methods, fields in declared]
        named: dict[str, set[str]] = {}
        for path, methods, _fields in declared:
            if not compile_path(path)[2]:  # no path parameters
                named.setdefault(path, set()).update(methods)
        # Only the names a route with a parameter also matches with another method: where
        # none does, Starlette's routing answers the same.
        self.by_name: dict[str, frozenset[str]] = {
            path: frozenset(methods | ({"HEAD"} if "GET" in methods else set()))
            for path, methods in named.items()
            if any(pattern.match(path) and not served <= methods for pattern, served, _fields in self._routes)
        }

    def at(self, scope: Scope) -> str:
        path = _app_path(scope)
        named = self.by_name.get(path)
        if named is not None:
            return ", ".join(sorted(named))
        shaped = [
            (methods, fields, match.groupdict())
            for pattern, methods, fields in self._routes
            if (match := pattern.match(path))
        ]
        taken = [methods for methods, fields, values in shaped if _takes(fields, values)]
        methods = set().union(*(taken or [methods for methods, _fields, _values in shaped]))
        if "GET" in methods:
            methods.add("HEAD")  # answered as the GET is (``HeadAsGetMiddleware``)
        return ", ".join(sorted(methods))


def _app_path(scope: Scope) -> str:
    """The request's path within the app (without the ``root_path`` it is served under)."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root) :]
    return path


class NamedPathMiddleware:
    """405, with ``Allow``, for a method the routes declared at a path's name do not serve,
    where a route with a path parameter of the same shape serves it (``GET
    /v1/citizens/lookup`` is not a read of citizen ``lookup``, a 422, and ``GET
    /v1/policies/simulate`` not a read of an agreement). ``AllowedMethods.by_name`` holds
    those names; any other path is left to routing, one dictionary lookup per request.

    The answer is the app's own 405 (``_http_error``), as routing would give it; the body,
    if any, is not read."""

    def __init__(self, app: ASGIApp, allowed_methods: AllowedMethods) -> None:
        self.app = app
        self.by_name = allowed_methods.by_name

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            named = self.by_name.get(_app_path(scope))
            if named is not None and scope["method"] not in named:
                response = await _http_error(Request(scope, receive), StarletteHTTPException(405))
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _path_fields(context: RouteContext) -> dict[str, ModelField]:
    """A route's declared path parameters by name (none for a plain Starlette route)."""
    dependant: Dependant | None = getattr(context.route, "dependant", None)
    if dependant is None:
        return {}
    declared = get_flat_params(dependant)
    return {field.alias: field for field in declared if isinstance(field.field_info, params.Path)}


def _takes(fields: Mapping[str, ModelField], values: Mapping[str, str]) -> bool:
    """Whether each path parameter validates, as the route itself would check it."""
    for name, value in values.items():
        if name in fields and fields[name].validate(value, {}, loc=("path", name))[1]:
            return False
    return True


class HeadAsGetMiddleware:
    """HEAD answered as the GET of the same target, without its body (RFC 9110, 9.3.2:
    every general-purpose server supports GET and HEAD). The GET runs in full, so the
    status and headers, ``Content-Length`` included, are those the GET would send, and a
    HEAD of an audited read is audited as that read: its status alone tells whether the
    read is allowed. A path with no GET answers 405 with its ``Allow``.

    The scope is copied with the method changed, so the access log and the metrics around
    this layer still name HEAD."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def headers_only(message: Message) -> None:
            if message["type"] == "http.response.body":
                message = {
                    "type": "http.response.body",
                    "body": b"",
                    "more_body": message.get("more_body", False),
                }
            await send(message)

        await self.app(dict(scope, method="GET"), receive, headers_only)


async def _http_error(request: Request, exc: Exception) -> Response:
    if not isinstance(exc, StarletteHTTPException):
        raise exc
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        # Looked up only here: a missing attribute costs Starlette's State an exception, and
        # the witness's app has no table (its routes serve one method each).
        allowed_methods: AllowedMethods | None = getattr(request.app.state, "allowed_methods", None)
        allowed = allowed_methods.at(request.scope) if allowed_methods is not None else ""
        if allowed:
            headers["Allow"] = allowed
    mapped: dict[int, type[ServiceError]] = {
        400: BadRequest,
        401: Unauthenticated,
        403: Forbidden,
        404: NotFound,
        405: MethodNotAllowed,
        413: PayloadTooLarge,
        415: UnsupportedMediaType,
        422: ValidationFailed,
    }
    error_type = mapped.get(exc.status_code)
    if error_type is None:
        # No problem type of the service's own: RFC 9457's ``about:blank``, titled with the
        # status's phrase (4.2.1), the exception's text as the detail.
        try:
            phrase = HTTPStatus(exc.status_code).phrase
        except ValueError:
            phrase = "Error"
        body = {"type": "about:blank", "title": phrase, "status": exc.status_code, "detail": str(exc.detail)}
        return ProblemResponse(body, status_code=exc.status_code, headers=headers or None)
    detail = str(exc.detail) if exc.status_code != 404 else "No such resource."
    response = refusal_response(request, error_type(detail))
    response.headers.update(headers)
    return response


def refusal_response(request: Request, error: ServiceError) -> Response:
    """``error`` as problem+json, or at the console's addresses as its HTML page
    (``app.state.unrouted_page``, set by the app): for refusals made outside the console's
    routes (before any route ran, or by an app-wide safety net)."""
    page = _console_page(request, error.status, error.detail)
    if page is None:
        return problem_response(error)
    page.headers.update(error.headers)
    return page


def _console_page(request: Request, status: int, detail: str) -> Response | None:
    """The console's HTML page for ``status`` at the console's addresses, None elsewhere."""
    state = getattr(request.scope.get("app"), "state", None)
    unrouted_page: Callable[[Request, int, str], Response | None] | None = getattr(
        state, "unrouted_page", None
    )
    return unrouted_page(request, status, detail) if unrouted_page is not None else None


async def _storage_error(request: Request, exc: Exception) -> Response:
    """A database or connection error: 400 when the request held text the database cannot
    store (a safety net: inputs are checked before they get there), 503 when the database
    cannot be used (expected while it is down or restarting, locked past the busy timeout,
    full or read-only, and no bug; logged by ``FailureLog``, and told to the app's
    ``FailingWrites``, which ``/readyz`` reads), otherwise on to the 500 handler. At the
    console's addresses, the refusal is its HTML page."""
    if _unkeepable_character(exc):
        return refusal_response(request, UnkeepableCharacter(_UNKEEPABLE))
    if not database_unavailable(exc):
        raise exc
    _refused_requests.failed("a request was refused", exc, request_id=_request_id(request))
    writes: FailingWrites | None = getattr(request.app.state, "failing_writes", None)
    if writes is not None:
        writes.failed(exc)
    return refusal_response(
        request,
        DatabaseUnavailable(
            "The database cannot be used just now; nothing was read or changed. Try again shortly."
        ),
    )


# The requests of this process refused for an unusable database: the first logged, then a
# line a minute while they go on (an answered request is not watched: no cost on the hot
# path, and the audit writer's and the sequencer's logs say when the database is back).
_refused_requests = FailureLog(logger, "requests")


async def _encode_error(request: Request, exc: Exception) -> Response:
    """A lone surrogate from the request met a driver outside SQLAlchemy's errors (the
    SQLite driver raises the bare UnicodeEncodeError); any other encode error is a bug."""
    if not _surrogate(exc):
        raise exc
    return refusal_response(request, UnkeepableCharacter(_UNKEEPABLE))


async def _client_gone(request: Request, exc: Exception) -> Response:  # noqa: ARG001
    """The client closed the connection while its body was read (``request.form()``):
    nothing was done, and nobody is left to answer. Not logged: any client can close a
    connection, as often as it likes, and each would otherwise log a traceback."""
    return refusal_response(
        request,
        IncompleteRequest("The connection closed before the request's body arrived whole; nothing was done."),
    )


async def _unexpected_error(request: Request, exc: Exception) -> Response:
    """A 500 for an error nothing else answered: problem+json, or at the console's addresses
    its HTML page with its security headers (problem+json still if that page cannot be made:
    the error may be in the page's own templates)."""
    request_id = _request_id(request)
    logger.error("unhandled error", exc_info=exc, extra={"request_id": request_id})
    detail = f"An unexpected error occurred. Quote request id {request_id} to the operator."
    try:
        page = _console_page(request, 500, detail)
    except Exception:
        logger.exception("the console's error page failed", extra={"request_id": request_id})
        page = None
    if page is not None:
        page.headers["X-Request-ID"] = request_id
        return page
    body = {
        "type": PROBLEM_BASE + "internal-error",
        "title": "Internal server error",
        "status": 500,
        "detail": detail,
    }
    return ProblemResponse(body, status_code=500, headers={"X-Request-ID": request_id})


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    # Registered by type so that a 503 is an ordinary response, not a re-raised error.
    for storage_error in (sa_exc.SQLAlchemyError, OSError, sqlite3.Error, *_asyncpg_error_types()):
        app.add_exception_handler(storage_error, _storage_error)
    app.add_exception_handler(UnicodeEncodeError, _encode_error)
    app.add_exception_handler(ClientDisconnect, _client_gone)
    app.add_exception_handler(Exception, _unexpected_error)


def _asyncpg_error_types() -> tuple[type[Exception], ...]:
    try:
        import asyncpg
    except ImportError:  # the PostgreSQL driver is optional for a SQLite-only install
        return ()
    return (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError)


class _BodyTooLarge(StarletteHTTPException):
    """Raised from ``receive``. An HTTPException, because FastAPI re-raises those from
    body parsing unchanged (anything else it turns into a 400)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"The request body exceeds the limit of {limit} bytes.")


class BodyLimitMiddleware:
    """Refuse request bodies over ``limit`` bytes with 413, without buffering them.

    A declared ``Content-Length`` over the limit is refused before any of the body is
    read. A chunked body is counted as it streams and refused as soon as it passes
    the limit. On ``oauth_paths`` (the token endpoint) the refusal is an RFC 6749 error
    body, ``invalid_request``, as OAuth clients expect there; at the console's addresses,
    its HTML page (``refusal_response``).
    """

    def __init__(self, app: ASGIApp, limit: int, oauth_paths: Iterable[str] = ()) -> None:
        self.app = app
        self.limit = limit
        self.oauth_paths = frozenset(oauth_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await self._refuse(scope, send, MalformedBody("Invalid Content-Length header."))
                    return
                if declared > self.limit:
                    await self._refuse(scope, send, self._too_large())
                    return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise _BodyTooLarge(self.limit)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _BodyTooLarge:
            if not started:
                await self._refuse(scope, send, self._too_large())

    def _too_large(self) -> PayloadTooLarge:
        return PayloadTooLarge(f"The request body exceeds the limit of {self.limit} bytes.")

    async def _refuse(self, scope: Scope, send: Send, error: ServiceError) -> None:
        response: Response
        if scope.get("path") in self.oauth_paths:
            # Never cached, as nothing the endpoint answers is (``auth.endpoints.never_cached``).
            body = {"error": "invalid_request", "error_description": error.detail}
            response = JSONResponse(body, status_code=error.status)
        else:
            response = refusal_response(Request(scope), error)
        response.headers["Connection"] = "close"
        await send(
            {
                "type": "http.response.start",
                "status": response.status_code,
                "headers": response.raw_headers,
            }
        )
        await send({"type": "http.response.body", "body": response.body})


class RepeatedQueryMiddleware:
    """Refuse an API request that names a query parameter more than once (422): no API
    parameter takes a list, and taking one of the values (FastAPI takes the last) would
    act, and audit, on a purpose or a filter the caller may not have meant."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/v1/"):
            repeated = repeated_query_name(scope["query_string"])
            if repeated is not None:
                await problem_response(_given_twice("query", repeated))(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _given_twice(source: str, name: str) -> ValidationFailed:
    """The 422 for a query parameter or JSON key ``name`` given twice: located by the name
    only if it is ``sayable_name``, and never by a value."""
    said = sayable_name(name)
    loc: list[str | int] = [source] if said is None else [source, said]
    return ValidationFailed("The request is not valid.", errors=[{"loc": loc, "msg": "given more than once"}])


class JsonBodyMiddleware:
    """Refuse an API request whose JSON body is not UTF-8 or names a key twice.

    RFC 8259 (8.1) requires UTF-8 for JSON exchanged between systems, but Python's parser
    takes UTF-16 and UTF-32 too, guessed from where the NUL bytes are: a body in another
    encoding is 400, and a ``charset`` parameter naming one is 415 before the body is
    read. A UTF-8 byte order mark is ignored, as RFC 8259 allows a parser to (the parsers
    behind this skip it).

    A key named twice in one object is 422, as a query parameter named twice is: the
    parser keeps the last value, and acting, and auditing, on a national id or a purpose
    the caller may not have meant is worse than asking again.

    The body is read here whole (``BodyLimitMiddleware``, outside, bounds it) and handed
    on unchanged; one that is not JSON is left to the route's own 400. Neither refusal
    echoes the body."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        content_type = _json_content_type(scope) if scope["type"] == "http" else None
        if content_type is None or not scope["path"].startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        charset = _charset(content_type)
        if charset is not None and charset != "utf-8":
            refusal: ServiceError = UnsupportedMediaType(
                "Send the body as UTF-8 JSON: 'Content-Type: application/json' names no other charset."
            )
            await problem_response(refusal)(scope, receive, send)
            return
        messages: list[Message] = []
        body = bytearray()
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        if not _is_utf8_json_text(bytes(body)):
            await problem_response(MalformedBody("The request body must be JSON encoded as UTF-8."))(
                scope, receive, send
            )
            return
        key = repeated_json_key(bytes(body))
        if key is not None:
            await problem_response(_given_twice("body", key))(scope, receive, send)
            return
        replay = iter(messages)

        async def replayed() -> Message:
            for message in replay:
                return message
            return await receive()

        await self.app(scope, replayed, send)


def _is_utf8_json_text(body: bytes) -> bool:
    """Whether ``body`` is UTF-8 that the JSON parser will read as UTF-8. A NUL byte is
    valid UTF-8 but never in a JSON text (a string escapes it), and the parser would take
    its place as a sign of UTF-16 or UTF-32."""
    if b"\x00" in body:
        return False
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _charset(content_type: str) -> str | None:
    """The ``charset`` parameter of a Content-Type, lower-cased and unquoted; None if none."""
    for parameter in content_type.split(";")[1:]:
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "charset":
            return value.strip().strip('"').lower()
    return None


def _json_content_type(scope: Scope) -> str | None:
    """The request's Content-Type if it is JSON (as FastAPI then parses the body); else None."""
    for name, value in scope["headers"]:
        if name == b"content-type":
            content_type = value.decode("latin-1")
            return content_type if _is_json(content_type) else None
    return None


# Where a JSON object's key ends (a quote, then a colon): every key ends so. A body without
# one names no key; one with no more of them than its objects have keys repeats none.
KEY_END = re.compile(rb'"\s*:')


def repeated_json_key(body: bytes) -> str | None:
    """The first key that a JSON object in ``body`` names twice, at any depth; None when
    none is, or when ``body`` is not JSON (whoever reads it refuses that)."""
    if not KEY_END.search(body):
        return None
    repeated: list[str] = []

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        found: dict[str, Any] = {}
        for key, value in items:
            if key in found and not repeated:
                repeated.append(key)
            found[key] = value
        return found

    try:
        json.loads(body, object_pairs_hook=pairs)
    except (ValueError, RecursionError):
        return None
    return repeated[0] if repeated else None


def repeated_query_name(query_string: bytes) -> str | None:
    """The first query parameter name that ``query_string`` gives more than once, decoded
    as Starlette decodes it; None when every name is given once."""
    if not query_string:
        return None
    seen: set[str] = set()
    for name, _value in parse_qsl(query_string.decode("latin-1"), keep_blank_values=True):
        if name in seen:
            return name
        seen.add(name)
    return None
