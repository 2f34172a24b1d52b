"""Errors the client raises: one class per status the service answers with a problem,
and one for an exchange that failed below HTTP."""

from __future__ import annotations

import httpx

from tellonce_client.models import Problem

# The most of a server's text (a problem's title or detail, a token refusal's
# error_description) an error's message holds; the whole is kept on the error.
MESSAGE_TEXT_CHARS = 200


def cut(text: str) -> str:
    """``text`` as an error's message may hold it: its first ``MESSAGE_TEXT_CHARS``
    characters, then an ellipsis if there was more."""
    return text if len(text) <= MESSAGE_TEXT_CHARS else text[:MESSAGE_TEXT_CHARS] + "…"


class TellonceError(Exception):
    """Base of everything this package raises on purpose."""


class TransportError(TellonceError):
    """The exchange failed below HTTP: the service could not be reached (refused, name not
    resolved), the connection broke or the answer was not HTTP, or one of httpx's own
    timeouts expired (``ResponseTimeout``, a subclass). The httpx error is the
    ``__cause__``; the message names the call's method and path (never its query) and the
    httpx error's class."""


class ApiError(TellonceError):
    """The service answered with an error status; ``problem`` is its RFC 9457 body. The
    message holds at most ``MESSAGE_TEXT_CHARS`` characters each of the problem's title and
    detail; ``problem`` holds them whole."""

    status: int

    def __init__(self, status: int, problem: Problem, response: httpx.Response) -> None:
        title = cut(problem.title or response.reason_phrase or str(status))
        super().__init__(f"{status} {title}: {cut(problem.detail or '')}".rstrip(": "))
        self.status = status
        self.problem = problem
        self.response = response


class BadRequest(ApiError):
    """400."""


class Unauthorized(ApiError):
    """401: the token was refused even after a fresh one was fetched."""


class Forbidden(ApiError):
    """403: no agreement or role allows this."""


class NotFound(ApiError):
    """404: unknown, or not for this caller to know about."""


class Conflict(ApiError):
    """409."""


class Gone(ApiError):
    """410: the citizen's record was erased."""


class PreconditionFailed(ApiError):
    """412: the ``If-Match`` ETag is stale; read again, then retry."""


class ValidationFailed(ApiError):
    """422."""


class PreconditionRequired(ApiError):
    """428: this write needs ``If-Match``."""


class RateLimited(ApiError):
    """429, after the client's retries ran out."""


class Unavailable(ApiError):
    """503, after the client's retries ran out (for instance the audit could not be written)."""


class InvalidResponse(TellonceError, ValueError):
    """The service answered with a body this client cannot use: not JSON, not of the shape
    the call returns, or a cursor it had already given. The message says what is wrong and
    where, never what the body holds (it may hold personal data). A ``ValueError`` too, as
    the parse errors it replaces were."""


class ResponseTooLarge(InvalidResponse):
    """The answer is larger than the client's ``max_response_bytes`` (or a line of the
    audit export longer than ``max_line_chars``): it was not read further."""


class ResponseTimeout(TransportError, httpx.TimeoutException):
    """One exchange took longer than the client's ``timeout`` in all (a server dripping its
    answer, or sending one without end), or one of httpx's own timeouts (connect, read,
    write, pool) expired, which is then its ``__cause__``. An ``httpx.TimeoutException``
    too."""

    def __init__(self, message: str, *, request: httpx.Request | None = None) -> None:
        super().__init__(message, request=request)


class TokenError(TellonceError):
    """The token endpoint refused the client's credentials, or answered 200 with no usable
    token. ``error``, ``error_description`` and ``error_uri`` are its RFC 6749 section 5.2
    answer (written by the server, never personal data), each ``None`` where it gave none,
    kept whole (the message holds at most ``MESSAGE_TEXT_CHARS`` characters of each);
    ``reason`` says what was wrong with a 200's body (never what the body holds: it may hold
    a token), ``None`` for a refusal."""

    def __init__(
        self,
        status: int,
        client_id: str,
        *,
        error: str | None = None,
        error_description: str | None = None,
        error_uri: str | None = None,
        reason: str | None = None,
    ) -> None:
        said = ": ".join(cut(part) for part in (error, error_description) if part)
        message = f"the token endpoint answered {status} for {client_id}"
        message += f" with no usable token: {reason}" if reason else ""
        message += f": {said}" if said else ""
        message += f" (see {cut(error_uri)})" if error_uri else ""
        super().__init__(message)
        self.status = status
        self.error = error
        self.error_description = error_description
        self.error_uri = error_uri
        self.reason = reason

    @classmethod
    def from_response(cls, response: httpx.Response, client_id: str) -> TokenError:
        """The error of a token endpoint's refusal; its body's members that are not text
        (or a body that is not a JSON object) are left out."""
        try:
            body = response.json()
        except (ValueError, RecursionError):  # RecursionError: nested past the parser's stack
            body = None
        members = body if isinstance(body, dict) else {}

        def text(name: str) -> str | None:
            value = members.get(name)
            return value if isinstance(value, str) else None

        return cls(
            response.status_code,
            client_id,
            error=text("error"),
            error_description=text("error_description"),
            error_uri=text("error_uri"),
        )


_BY_STATUS: dict[int, type[ApiError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    410: Gone,
    412: PreconditionFailed,
    422: ValidationFailed,
    428: PreconditionRequired,
    429: RateLimited,
    503: Unavailable,
}


def raise_for_problem(response: httpx.Response) -> None:
    """Raise the ``ApiError`` subclass for an error response; do nothing on success."""
    if response.status_code < 400:
        return
    try:
        problem = Problem.model_validate(response.json())
    except (ValueError, RecursionError):  # RecursionError: nested past the parser's stack
        # Not a problem document (a proxy's page, say): the status line stands in for one.
        reason = response.reason_phrase or str(response.status_code)
        problem = Problem(type="about:blank", title=reason, status=response.status_code, detail=reason)
    if problem.status is None:
        # A problem may leave its status out (RFC 9457 section 3.1.2): the response's is it.
        problem.status = response.status_code
    error_class = _BY_STATUS.get(response.status_code, ApiError)
    raise error_class(response.status_code, problem, response)
