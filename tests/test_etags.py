"""``If-Match`` as RFC 9110 (sections 8.8.3 and 13.1.1) reads it, for citizen records and
agreements alike: ``*``, or a list of strong entity tags compared strongly; a list that
names no version of ours fails the precondition, and a value that is no list is a 400."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.errors import BadRequest
from service.etags import IF_MATCH_LIST_PATTERN, IF_MATCH_PATTERN, IfMatch, etag, parse_if_match


def versions(value: str) -> frozenset[int] | None:
    parsed = parse_if_match(value)
    assert parsed is not None
    return parsed.versions


class TestParse:
    def test_no_header_is_no_precondition(self) -> None:
        assert parse_if_match(None) is None

    def test_star_is_any_version(self) -> None:
        assert versions("*") is None
        assert versions(" * ") is None
        assert IfMatch(None).holds(12)

    @pytest.mark.parametrize(
        ("value", "named"),
        [
            ('"3"', {3}),
            (' "3" ', {3}),
            ('"3", "5"', {3, 5}),
            ('"3",,"5",', {3, 5}),  # empty members are allowed (RFC 9110 section 5.6.1)
            ('W/"3"', set()),  # weak: never equal under the strong comparison
            ('W/"3", "4"', {4}),
            ('"abc"', set()),
            ('"03"', set()),  # another tag than "3"
            ('"0"', set()),
            ('"999999999"', {999_999_999}),
            ('"1234567890"', set()),  # longer than any version: a 32-bit column holds none
            ('"a,b", "2"', {2}),  # a comma inside an opaque tag is part of it
            ('"\xd9\xa3"', set()),  # UTF-8 of an Arabic-Indic 3, as latin-1 header text
            ("", set()),  # an empty list: nothing matches
        ],
    )
    def test_the_versions_a_list_names(self, value: str, named: set[int]) -> None:
        assert versions(value) == frozenset(named)

    @pytest.mark.parametrize(
        "value", ["3", "yesterday", '"3', '3"', '"3" "4"', 'w/"3"', "W/3", '"3";', '*, "3"', '"\u0663"']
    )
    def test_anything_else_is_a_bad_request(self, value: str) -> None:
        with pytest.raises(BadRequest, match="If-Match must be"):
            parse_if_match(value)

    @given(st.integers(min_value=1, max_value=10**9 - 1))
    def test_an_etag_read_back_names_its_version(self, version: int) -> None:
        parsed = parse_if_match(etag(version))
        assert parsed is not None
        assert parsed.holds(version)
        assert not parsed.holds(version + 1)

    @given(st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0xFF), max_size=40))
    def test_any_latin_1_text_is_read_or_refused_never_an_other_error(self, value: str) -> None:
        try:
            parse_if_match(value)
        except BadRequest:
            pass


def is_read(value: str) -> bool:
    try:
        parse_if_match(value)
    except BadRequest:
        return False
    return True


class TestDocumentedPattern:
    """``IF_MATCH_PATTERN``, the header's pattern in /openapi.json, is the grammar the parser
    reads: a value it matches is never a 400, and a value it does not match always is. A
    client generated from the document can check the header before it sends it."""

    @given(st.text(alphabet=' \t,*"W/w3a0;\x7f\x80\xd9\u0663', max_size=16))
    def test_matches_exactly_what_the_parser_reads(self, value: str) -> None:
        assert (re.fullmatch(IF_MATCH_PATTERN, value) is not None) == is_read(value)

    @given(st.from_regex(IF_MATCH_PATTERN, fullmatch=True))
    def test_every_value_it_matches_is_read(self, value: str) -> None:
        assert is_read(value)

    @given(st.text(alphabet=' \t,*"W/w3a0;\x7f\x80\xd9\u0663', max_size=16))
    def test_the_list_pattern_is_the_same_without_star(self, value: str) -> None:
        """For a route that needs the version read (replacing an agreement), "*" is a 428."""
        names_versions = is_read(value) and parse_if_match(value) != IfMatch(None)
        assert (re.fullmatch(IF_MATCH_LIST_PATTERN, value) is not None) == names_versions

    @pytest.mark.parametrize("value", ["*", ' "3" ', '"3",,"5",', 'W/"3", "4"', "", '"a,b", "2"'])
    def test_the_lists_above_match(self, value: str) -> None:
        assert re.fullmatch(IF_MATCH_PATTERN, value)
