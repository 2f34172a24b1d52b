"""The add-checkpoint request body of C2SP tlog-witness. Pure: no I/O.

The body is an ``old <size>`` line, up to 63 base64 consistency-proof hashes one per
line, an empty line, then the checkpoint as a signed note.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

from service.audit.checkpoint import MAX_TREE_SIZE
from service.digits import bounded_decimal

MAX_PROOF_LINES = 63


class MalformedSubmission(ValueError):
    """The body is not an add-checkpoint request."""


@dataclass(frozen=True)
class Submission:
    old_size: int
    proof: list[bytes]
    note: str


def _decimal(text: str) -> int:
    size = bounded_decimal(text, MAX_TREE_SIZE)
    if size is None:
        raise MalformedSubmission(
            f"a size is a decimal number without leading zeroes, at most {MAX_TREE_SIZE}"
        )
    return size


def parse_submission(body: bytes) -> Submission:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedSubmission("the body is not UTF-8") from None
    head, separator, note = text.partition("\n\n")
    if not separator:
        raise MalformedSubmission("the body needs an empty line before the checkpoint")
    lines = head.split("\n")
    if not lines[0].startswith("old "):
        raise MalformedSubmission("the first line is 'old <size>'")
    old_size = _decimal(lines[0][4:])
    if len(lines) - 1 > MAX_PROOF_LINES:
        raise MalformedSubmission(f"at most {MAX_PROOF_LINES} consistency proof lines")
    proof: list[bytes] = []
    for line in lines[1:]:
        try:
            digest = base64.b64decode(line, validate=True)
        except (binascii.Error, ValueError):
            raise MalformedSubmission("a consistency proof line is not base64") from None
        if len(digest) != 32:
            raise MalformedSubmission("a consistency proof line is not a SHA-256 hash")
        proof.append(digest)
    return Submission(old_size=old_size, proof=proof, note=note)


def submission_body(old_size: int, proof: list[bytes], note: str) -> bytes:
    """The request a log sends: the inverse of ``parse_submission``."""
    lines = [f"old {old_size}", *(base64.b64encode(h).decode() for h in proof)]
    return ("\n".join(lines) + "\n\n" + note).encode()
