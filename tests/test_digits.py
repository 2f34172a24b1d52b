"""Numbers the service reads from outside are ASCII digits only.

A schema-driven run against a live server (Schemathesis) found ``GET
/v1/citizens/{id}/access-log?cursor=²`` answering 500: ``"²".isdigit()`` is true and
``int("²")`` raises. Digits of other scripts (``"٣"``) were worse the other way: ``int``
reads them, so a tile path or a checkpoint's size had more than one spelling.
"""

from __future__ import annotations

import re
from datetime import date, timedelta

import httpx
import pytest
from fastapi import FastAPI
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from service.audit import search
from service.audit.checkpoint import Checkpoint, CheckpointError
from service.audit.tiles import TilePathInvalid, parse_tile_path
from service.consent.schemas import ConsentIn
from service.console.agreement_pages import version_number
from service.console.forms import date_errors
from service.console.web import ConsolePageError
from service.digits import ascii_digits, bounded_decimal
from service.errors import BadRequest, InvalidCursor
from service.etags import parse_if_match
from service.events.cursors import decode_position, encode_text
from service.policy.terms import parse_duration
from service.records.validation import parse_cursor as history_cursor
from service.records.values import relative_date
from service.witness.protocol import MalformedSubmission, parse_submission
from tests.fixtures.auth import act_as

# isdigit() is true for both: a superscript two and an Arabic-Indic three.
SUPERSCRIPT, ARABIC_INDIC = "\u00b2", "\u0663"
NOT_ASCII = [SUPERSCRIPT, ARABIC_INDIC, "1" + SUPERSCRIPT, "\u0660\u0660\u0661"]


@given(st.text())
def test_ascii_digits_are_exactly_0_to_9(text: str) -> None:
    assert ascii_digits(text) == (re.fullmatch(r"[0-9]+", text) is not None)
    if ascii_digits(text):
        assert int(text) >= 0


@given(st.text(), st.integers(min_value=0, max_value=2**70))
def test_bounded_decimal_is_a_plain_number_up_to_the_bound(text: str, maximum: int) -> None:
    plain = re.fullmatch(r"0|[1-9][0-9]*", text) is not None
    assert bounded_decimal(text, maximum) == (int(text) if plain and int(text) <= maximum else None)


def test_bounded_decimal_reads_no_number_int_refuses() -> None:
    # int() refuses a number of over 4,300 digits with ValueError.
    assert bounded_decimal("9" * 5000, 2**63 - 1) is None
    assert bounded_decimal(str(2**63 - 1), 2**63 - 1) == 2**63 - 1
    assert bounded_decimal(str(2**63), 2**63 - 1) is None


@pytest.mark.parametrize("text", NOT_ASCII)
class TestParsersRefuse:
    def test_audit_cursor(self, text: str) -> None:
        with pytest.raises(InvalidCursor):
            search.parse_cursor(text)

    def test_history_cursor(self, text: str) -> None:
        with pytest.raises(InvalidCursor):
            history_cursor(text)

    def test_events_cursor(self, text: str) -> None:
        with pytest.raises(InvalidCursor):
            decode_position(encode_text(f"e1:{text}"), ["query", "cursor"])

    def test_tile_paths(self, text: str) -> None:
        for path in (f"{text}/000", f"0/{text:0>3}", f"0/000.p/{text}"):
            with pytest.raises(TilePathInvalid):
                parse_tile_path(path)

    def test_checkpoint_size(self, text: str) -> None:
        with pytest.raises(CheckpointError):
            Checkpoint.parse_body(f"origin\n{text}\n{'A' * 43}=\n")

    def test_witness_submission_size(self, text: str) -> None:
        with pytest.raises(MalformedSubmission):
            parse_submission(f"old {text}\n\norigin\n1\n{'A' * 43}=\n".encode())

    def test_console_form_version(self, text: str) -> None:
        with pytest.raises(ConsolePageError):
            version_number(text)

    def test_console_date_parts(self, text: str) -> None:
        parts = {"day": "1", "month": "1", "year": f"{text:2>4}"}
        assert date_errors({"valid_from_parts": parts}) != []


@pytest.mark.parametrize("text", NOT_ASCII)
async def test_a_citizens_access_log_cursor_is_422_not_500(
    app: FastAPI, client: httpx.AsyncClient, text: str
) -> None:
    act_as(app, "portal", "citizen-portal")
    response = await client.get(
        "/v1/citizens/00000000-0000-4000-8000-000000000001/access-log", params={"cursor": text}
    )
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["errors"] == [{"loc": ["query", "cursor"], "msg": "invalid cursor"}]


@pytest.mark.parametrize("text", NOT_ASCII)
async def test_an_audit_search_cursor_is_422_not_500(
    app: FastAPI, client: httpx.AsyncClient, text: str
) -> None:
    act_as(app, "audit-office", "auditor")
    response = await client.get("/v1/audit/entries", params={"cursor": text})
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"


class TestPatternsTakeAsciiDigitsOnly:
    """Patterns say [0-9], not \\d, which in Python and in pydantic's regex engine is any
    script's decimal digit."""

    def test_if_match(self) -> None:
        with pytest.raises(BadRequest):
            parse_if_match('"\u0661"')
        # As HTTP header text (UTF-8 bytes read as latin-1) it is a tag, but not version 1.
        named = parse_if_match('"\u0661"'.encode().decode("latin-1"))
        assert named is not None
        assert not named.holds(1)
        one = parse_if_match('"1"')
        assert one is not None
        assert one.holds(1)

    def test_durations(self) -> None:
        with pytest.raises(ValueError, match="is not an ISO 8601 duration"):
            parse_duration("P\u0663D")
        assert parse_duration("P3D") == timedelta(days=3)

    def test_a_consents_data_life(self) -> None:
        with pytest.raises(ValidationError):
            ConsentIn(agreement="an-agreement", data_life="P\u0663D")
        assert ConsentIn(agreement="an-agreement", data_life="P3D").data_life == "P3D"

    def test_relative_dates_in_claims(self) -> None:
        today = date(2026, 12, 4)
        assert relative_date("today-\u0661\u0668y", today) is None
        assert relative_date("today-18y", today) == date(2008, 12, 4)
