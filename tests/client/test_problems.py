"""The client reads any RFC 9457 problem, as a proxy, gateway or newer server may write it,
into the typed error of the response's status."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from tellonce_client import ApiError, Forbidden, NotFound, TokenError, Unavailable, ValidationFailed
from tellonce_client.errors import raise_for_problem

PROBLEM_JSON = {"content-type": "application/problem+json"}


def _raised(status: int, body: Any) -> ApiError:
    response = httpx.Response(status, json=body, headers=PROBLEM_JSON)
    with pytest.raises(ApiError) as raised:
        raise_for_problem(response)
    return raised.value


class TestPartialProblems:
    @pytest.mark.parametrize(
        ("status", "body", "error_class"),
        [
            (404, {}, NotFound),
            (403, {"title": "Forbidden"}, Forbidden),
            (503, {"type": "https://gateway.example/overloaded", "detail": "try later"}, Unavailable),
            (422, {"status": 422, "detail": "bad input"}, ValidationFailed),
        ],
    )
    def test_a_problem_with_some_members_is_its_typed_error(
        self, status: int, body: dict[str, Any], error_class: type[ApiError]
    ) -> None:
        error = _raised(status, body)
        assert type(error) is error_class
        assert error.status == status
        # The status the body leaves out is the response's.
        assert error.problem.status == status
        assert error.problem.type == body.get("type", "about:blank")
        assert error.problem.title == body.get("title")
        assert error.problem.detail == body.get("detail")
        assert str(error).startswith(str(status))
        assert "None" not in str(error)

    def test_extension_members_are_kept(self) -> None:
        body = {"type": "https://example.net/out-of-credit", "title": "Out of credit", "balance": 30}
        error = _raised(403, {**body, "accounts": ["/account/12345"]})
        assert type(error) is Forbidden
        assert error.problem.extensions == {"balance": 30, "accounts": ["/account/12345"]}

    def test_a_member_of_the_wrong_type_is_ignored(self) -> None:
        """RFC 9457 section 3.1: a member whose value has the wrong type is ignored."""
        error = _raised(404, {"type": 7, "title": ["x"], "status": "not a number", "detail": "gone"})
        assert type(error) is NotFound
        assert (error.problem.type, error.problem.title) == ("about:blank", None)
        assert error.problem.status == 404
        assert error.problem.detail == "gone"


class TestLongServerText:
    """A server's text goes into an error's message cut to 200 characters and an
    ellipsis; the error keeps it whole."""

    def test_a_long_title_and_detail_are_cut_in_the_message(self) -> None:
        title, detail = "T" * 5000, "d" * 5000
        error = _raised(404, {"title": title, "detail": detail})
        assert str(error) == f"404 {'T' * 200}…: {'d' * 200}…"
        assert (error.problem.title, error.problem.detail) == (title, detail)

    def test_text_of_200_characters_is_not_cut(self) -> None:
        error = _raised(404, {"title": "Not Found", "detail": "d" * 200})
        assert str(error) == f"404 Not Found: {'d' * 200}"

    def test_a_long_token_refusal_is_cut_in_the_message(self) -> None:
        description, uri = "e" * 5000, "https://example.net/" + "u" * 5000
        response = httpx.Response(
            400, json={"error": "invalid_scope", "error_description": description, "error_uri": uri}
        )
        error = TokenError.from_response(response, "tc_x")
        assert str(error) == (
            f"the token endpoint answered 400 for tc_x: invalid_scope: {'e' * 200}… (see {uri[:200]}…)"
        )
        assert (error.error_description, error.error_uri) == (description, uri)
