"""What an agreement version says beyond who may do what: its basis, and when the
accesses it permits may be shown to the citizen.

Audit entries cite the agreement versions that permitted each field, with each version's
digest; versions never change, so ``AgreementTerms`` reads each once and keeps it under
its digest too (two databases may hold different agreements of the same id and version).
The access log and the access notices ask it which accesses a citizen may be shown yet.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal

from sqlalchemy.ext.asyncio import AsyncConnection

from service.policy import repository as policy_repository
from service.policy.engine import Basis

Disclosure = Literal["immediate", "after-case-closed"]

# The longest an owner may let a consumer keep its accesses from the citizen: five years.
MAX_DELAY_LIMIT = timedelta(days=1826)
_DURATION = re.compile(
    r"^P(?:([0-9]{1,5})W|(?:([0-9]{1,5})D)?(?:T(?:([0-9]{1,6})H)?(?:([0-9]{1,7})M)?(?:([0-9]{1,8})S)?)?)$"
)


def parse_duration(text: str) -> timedelta:
    """An ISO 8601 duration in weeks, days, hours, minutes and seconds (``P365D``,
    ``P2W``, ``PT36H``). Years and months are refused: their length depends on the date."""
    match = _DURATION.match(text)
    if match is None or text in ("P", "PT") or text.endswith("T"):
        raise ValueError(
            f"{text!r} is not an ISO 8601 duration in weeks, days, hours, minutes or seconds (e.g. P365D)"
        )
    weeks, days, hours, minutes, seconds = (int(part) if part else 0 for part in match.groups())
    return timedelta(weeks=weeks, days=days, hours=hours, minutes=minutes, seconds=seconds)


def format_duration(delay: timedelta) -> str:
    """``delay`` as ``parse_duration`` reads it, in whole days, hours, minutes and seconds
    (``P365D``, ``P1DT12H``); what an audit reason's ``held_for`` says."""
    days, rest = divmod(int(delay.total_seconds()), 86_400)
    hours, rest = divmod(rest, 3_600)
    minutes, seconds = divmod(rest, 60)
    time = "".join(f"{n}{unit}" for n, unit in ((hours, "H"), (minutes, "M"), (seconds, "S")) if n)
    if not days and not time:
        return "PT0S"
    return f"P{f'{days}D' if days else ''}{f'T{time}' if time else ''}"


@dataclass(frozen=True)
class Terms:
    basis: Basis
    # ``after-case-closed``: the longest a citizen may be kept from seeing an access.
    delay: timedelta | None


IMMEDIATE_STATUTORY = Terms("statutory", None)


def terms_of(content: dict[str, Any]) -> Terms:
    """The terms of one stored agreement version (keys left out take their defaults)."""
    basis = content.get("basis", "statutory")
    delay = None
    if content.get("disclosure") == "after-case-closed":
        delay = parse_duration(str(content.get("max_delay") or ""))
    return Terms(basis if basis in ("consent", "objectable") else "statutory", delay)


# (agreement id, version, digest) as an audit entry's reason cites it.
Cited = tuple[str, int, str | None]


class AgreementTerms:
    """Cited version -> ``Terms``, read once per version and kept (bounded)."""

    def __init__(self, limit: int = 10_000) -> None:
        self._known: dict[Cited, Terms] = {}
        self._limit = limit

    async def of(self, conn: AsyncConnection, cited: Iterable[Cited]) -> dict[Cited, Terms]:
        wanted = set(cited)
        missing = [c for c in wanted if c not in self._known]
        if missing:
            if len(self._known) + len(missing) > self._limit:
                self._known.clear()
            contents = await policy_repository.version_contents(conn, [(a, v) for a, v, _d in missing])
            for key in missing:
                content = contents.get((key[0], key[1]))
                # A version that is not stored (a log imported without its policies) is
                # taken as the default: shown at once, statutory.
                self._known[key] = terms_of(content) if content is not None else IMMEDIATE_STATUTORY
        return {c: self._known[c] for c in wanted}


# One per process: versions are the same for every caller.
agreement_terms = AgreementTerms()
