"""When a citizen may see an access: the pure rules of delayed disclosure.

An access permitted by an agreement with ``disclosure: after-case-closed`` is held from
the citizen (their access log and access notices) until the consumer closes the case it
was made under, or the agreement's ``max_delay`` has passed since the access; then it is
shown with its original time. A refusal under a case is held the same way: it cites such
an agreement of the refused field's owner, or, where that owner has none for the consumer,
it names the longest it is held itself (its reason's ``held_for``), so that no owner's
reasons cite another owner's agreement. Everything else is shown at once. Auditors
always see it. The rules read only the audit entry, the terms of the agreement versions
it cites, and when its case was closed, so anyone holding those can check them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from service.policy.terms import Cited, Terms, parse_duration

DisclosedBy = Literal["case-closed", "max-delay"]


def cited(entry: Mapping[str, Any]) -> list[Cited]:
    """The agreement versions ``entry``'s decisions cite: those that permitted a field, a
    forbid that denied one, and the delayed-disclosure agreement a request was refused
    under, without a case reference or with one (so that refusal is held from the citizen
    as well)."""
    return [
        (str(r["agreement"]), int(r["version"]), r.get("digest"))
        for r in entry.get("reasons", ())
        if r.get("agreement") and r.get("version") is not None
    ]


def all_cited(entries: Iterable[Mapping[str, Any]]) -> set[Cited]:
    return {c for entry in entries for c in cited(entry)}


def holds(entry: Mapping[str, Any]) -> list[timedelta]:
    """The delays ``entry``'s refusals under a case name themselves (``held_for``), held
    without citing a delayed-disclosure agreement."""
    return [parse_duration(str(r["held_for"])) for r in entry.get("reasons", ()) if r.get("held_for")]


def delay_of(entry: Mapping[str, Any], terms: Mapping[Cited, Terms]) -> timedelta | None:
    """The longest delay of the agreements ``entry`` cites and of the holds its refusals
    name; None: shown at once."""
    return longest_delay(cited(entry), terms, holds(entry))


def longest_delay(
    cites: Iterable[Cited], terms: Mapping[Cited, Terms], held: Iterable[timedelta] = ()
) -> timedelta | None:
    """The longest delay of the agreement versions ``cites`` and of ``held`` (``holds``);
    None: shown at once."""
    delays = [d for c in cites if (d := terms[c].delay) is not None]
    delays.extend(held)
    return max(delays) if delays else None


@dataclass(frozen=True)
class Shown:
    """Whether the citizen may see one access now, and if it was held, since when."""

    visible: bool
    # Held accesses only: when it became (or becomes, at the latest) visible, and why.
    disclosed_at: datetime | None = None
    disclosed_by: DisclosedBy | None = None


SHOWN_AT_ONCE = Shown(True)


def shown(accessed_at: datetime, delay: timedelta | None, closed_at: datetime | None, now: datetime) -> Shown:
    """The rule. A case closed before the access (an access under a closed case) shows it
    at once, as closed; whichever of the closing and the maximum delay comes first wins."""
    if delay is None:
        return SHOWN_AT_ONCE
    deadline = accessed_at + delay
    by: DisclosedBy = "max-delay"
    at = deadline
    if closed_at is not None and closed_at <= deadline:
        at, by = max(closed_at, accessed_at), "case-closed"
    return Shown(at <= now, at, by)


def entry_time(entry: Mapping[str, Any]) -> datetime:
    return datetime.fromisoformat(str(entry["time"]))
