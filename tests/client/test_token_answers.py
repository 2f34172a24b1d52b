"""A token endpoint's 200 whose body is not a token answer (RFC 6749 section 5.1) is the
library's ``TokenError``, saying what is wrong and never echoing the body (it may hold a
token), from a real HTTP server on the loopback interface."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from tellonce_client import ClientSecret, TellonceClient, TokenError

# In every body below: it must never appear in the error.
SECRET = "tok-3b7e0c-do-not-echo"


class TokenEndpoint:
    """Answers every POST with 200 and ``body`` (as ``application/json``)."""

    def __init__(self) -> None:
        self.body = b""
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length") or 0))
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(endpoint.body)))
                self.end_headers()
                self.wfile.write(endpoint.body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"


@pytest.fixture
def endpoint() -> Iterator[TokenEndpoint]:
    served = TokenEndpoint()
    thread = threading.Thread(target=served.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield served
    finally:
        served.server.shutdown()
        served.server.server_close()
        thread.join(timeout=5)


def body(**members: object) -> bytes:
    return json.dumps({"token_type": "Bearer", **members}).encode()


CASES = {
    "not JSON": (f"access_token={SECRET}".encode(), "the body is not JSON"),
    "not UTF-8": (b'{"access_token": "\xff' + SECRET.encode() + b'"}', "the body is not JSON"),
    "not an object": (json.dumps([SECRET]).encode(), "the body is not a JSON object"),
    "no access_token": (body(token=SECRET), "access_token is missing or not a string"),
    "token not a string": (body(access_token=[SECRET]), "access_token is missing or not a string"),
    "token empty": (body(access_token="", note=SECRET), "access_token is missing or not a string"),
    "expires_in not a number": (body(access_token=SECRET, expires_in="soon"), "expires_in is not a number"),
    "expires_in an object": (body(access_token=SECRET, expires_in={"s": 1}), "expires_in is not a number"),
    "expires_in a boolean": (body(access_token=SECRET, expires_in=True), "expires_in is not a number"),
    "expires_in too large": (
        f'{{"access_token": "{SECRET}", "expires_in": 1{"0" * 400}}}'.encode(),
        "expires_in is not a number",
    ),
    "expires_in negative": (
        body(access_token=SECRET, expires_in=-1),
        "expires_in is not a finite number of seconds, zero or more",
    ),
    "expires_in infinite": (
        body(access_token=SECRET, expires_in="Infinity"),
        "expires_in is not a finite number of seconds, zero or more",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
async def test_a_200_that_is_not_a_token_answer_is_a_token_error(endpoint: TokenEndpoint, case: str) -> None:
    endpoint.body, reason = CASES[case]
    async with TellonceClient(endpoint.url, ClientSecret("tc_x", "s3cret")) as client:
        with pytest.raises(TokenError) as refused:
            await client.catalog()
    error = refused.value
    assert str(error) == f"the token endpoint answered 200 for tc_x with no usable token: {reason}"
    assert (error.status, error.reason, error.error) == (200, reason, None)
    assert SECRET not in str(error)
    assert SECRET not in repr(error)
    # Nothing chained carries the body either.
    assert error.__cause__ is None
    assert error.__context__ is None or error.__suppress_context__


async def test_a_string_of_a_number_is_a_lifetime_and_the_token_is_used(endpoint: TokenEndpoint) -> None:
    endpoint.body = body(access_token=SECRET, expires_in="300")
    source = ClientSecret("tc_x", "s3cret")
    async with httpx.AsyncClient() as http:
        assert await source.token(http, endpoint.url + "/oauth/token") == SECRET
