"""ETags and ``If-Match`` for the versioned resources (RFC 9110, sections 8.8.3 and 13.1.1).

A citizen record and an agreement each have a version, counted from 1, and the ETag of
either is that number as a strong entity tag: ``"3"``. Both read ``If-Match`` here, so
they answer it alike:

- no header: no precondition;
- ``*``: any current version;
- a list of entity tags: the versions it names. The comparison is strong, as section
  13.1.1 requires, so a weak tag (``W/"3"``) names no version. Neither does a tag that
  is not one of ours: ``"abc"``, ``"03"``, or digits of another script. A list that
  names none fails the precondition (412), as a stale version does, and so does an
  empty header;
- anything else is not a list of entity tags: 400.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated

from fastapi import Header

from service.digits import ascii_digits
from service.errors import BadRequest

# One member of the list (entity-tag = [ "W/" ] DQUOTE *etagc DQUOTE, where etagc is
# %x21 / %x23-7E / obs-text), or an empty member, then a comma or the end.
_MEMBER = re.compile(r'[ \t]*(?:(W/)?"([\x21\x23-\x7e\x80-\xff]*)")?[ \t]*(?:,|\Z)')
# A version number has at most this many digits: versions are 32-bit integers in the
# database, and a longer number sent to PostgreSQL as one would fail there, not as a 412.
_MAX_DIGITS = 9

# The whole header ``parse_if_match`` reads without a 400, for the OpenAPI document: "*",
# or a comma-separated list of entity tags in which a member may be empty.
_ENTITY_TAG = r'(?:W/)?"[\x21\x23-\x7e\x80-\xff]*"'
_LIST_MEMBER = rf"[ \t]*(?:{_ENTITY_TAG})?[ \t]*"
IF_MATCH_PATTERN = rf"^(?:[ \t]*\*[ \t]*|(?:{_LIST_MEMBER},)*{_LIST_MEMBER})$"
# The list alone, for a route that needs the version read: there "*" names none (428).
IF_MATCH_LIST_PATTERN = rf"^(?:{_LIST_MEMBER},)*{_LIST_MEMBER}$"

IfMatchHeader = Annotated[
    str | None,
    Header(
        alias="If-Match",
        description='"*" or the ETag you read, such as "3"; a list of ETags names any of them.',
        # Documentation only: ``parse_if_match`` checks it, with its own 400.
        json_schema_extra={"pattern": IF_MATCH_PATTERN},
    ),
]
VersionIfMatchHeader = Annotated[
    str | None,
    Header(
        alias="If-Match",
        description='The ETag you read, such as "3"; "*" names no version, so it is a 428.',
        json_schema_extra={"pattern": IF_MATCH_LIST_PATTERN},
    ),
]


def etag(version: int) -> str:
    """The strong ETag of a version."""
    return f'"{version}"'


class MalformedIfMatch(BadRequest):
    def __init__(self) -> None:
        super().__init__('If-Match must be "*" or ETags such as "3", as returned on reads and writes.')


@dataclass(frozen=True, slots=True)
class IfMatch:
    """A request's ``If-Match``: the versions it names, or None for ``*`` (any)."""

    versions: frozenset[int] | None

    @classmethod
    def version(cls, version: int) -> IfMatch:
        """The precondition of a form that names the version it was made from."""
        return cls(frozenset((version,)))

    def holds(self, version: int) -> bool:
        return self.versions is None or version in self.versions


def parse_if_match(value: str | None) -> IfMatch | None:
    """The precondition an ``If-Match`` header states; None without the header."""
    if value is None:
        return None
    text = value.strip(" \t")
    if text == "*":
        return IfMatch(None)
    versions: set[int] = set()
    position = 0
    while position < len(text):
        member = _MEMBER.match(text, position)
        if member is None:
            raise MalformedIfMatch()
        weak, opaque = member.groups()
        if (
            weak is None
            and opaque is not None
            and ascii_digits(opaque)
            and len(opaque) <= _MAX_DIGITS
            and opaque[0] != "0"
        ):
            versions.add(int(opaque))
        position = member.end()
    return IfMatch(frozenset(versions))
