"""Simulate a policy change: replay recorded requests against a draft index.

Pure apart from the request source; the live policy is never touched. The audit domain
provides the real ``RecordedRequestSource`` (put on ``app.state.recorded_requests``).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol

from service.policy.engine import (
    CONSENT_REQUIRED,
    OBJECTED,
    Agreement,
    CompiledPolicy,
    RequestContext,
    compile_policy,
)

# A citizen's consents and objections to some agreements, added to a request's context.
ChoiceLoader = Callable[[str, RequestContext, frozenset[str]], Awaitable[RequestContext]]


@dataclass(frozen=True)
class RecordedRequest:
    """One audited access, as much of it as a policy decision needs (no values)."""

    consumer: str
    action: str
    fields: tuple[str, ...]
    purpose: str
    case_ref: str | None
    citizen_status: str | None
    time: datetime
    citizen_id: str | None = None


@dataclass(frozen=True)
class Window:
    """The recorded requests a simulation replays: those decided at or after ``since``
    (every one, if None) that asked for a field of one of ``owners`` (any field, if None).
    ``fields`` are those owners' fields by name: what a source that keeps no owners goes by,
    and what each request is decided on."""

    since: datetime | None = None
    owners: frozenset[str] | None = None
    fields: frozenset[str] | None = None


class RecordedRequestSource(Protocol):
    """Where simulate reads past requests from (the audit store, or a test fixture)."""

    def recorded_requests(self, window: Window) -> AsyncIterator[RecordedRequest]: ...

    async def count(self, window: Window, at_most: int) -> int:
        """How many entries ``window`` holds, counted no further than ``at_most``: cheap
        whatever the log holds (no entry is decoded)."""
        ...

    async def since_holding(self, window: Window, at_most: int) -> datetime | None:
        """The earliest ``since`` from which ``window`` (its own ``since`` aside) holds at
        most ``at_most`` entries; None if the whole of it does."""
        ...


# The smallest step of an audit entry's time (microseconds, on both databases).
TIME_STEP = timedelta(microseconds=1)


@dataclass(frozen=True)
class ListSource:
    """A fixed list of requests: for tests and for sources held in memory."""

    requests: tuple[RecordedRequest, ...]

    def _held(self, window: Window, since: datetime | None) -> list[RecordedRequest]:
        return [
            r
            for r in self.requests
            if (since is None or r.time >= since)
            and (window.fields is None or not window.fields.isdisjoint(r.fields))
        ]

    async def recorded_requests(self, window: Window) -> AsyncIterator[RecordedRequest]:
        for request in self._held(window, window.since):
            yield request

    async def count(self, window: Window, at_most: int) -> int:
        return min(len(self._held(window, window.since)), at_most)

    async def since_holding(self, window: Window, at_most: int) -> datetime | None:
        times = sorted((r.time for r in self._held(window, None)), reverse=True)
        return times[at_most] + TIME_STEP if len(times) > at_most else None


class WindowTooLarge(Exception):
    """``window`` holds more than ``limit`` entries, the most one simulation replays;
    ``fits_since`` is the earliest ``since`` from which it holds no more (None if unknown)."""

    def __init__(self, window: Window, limit: int, fits_since: datetime | None) -> None:
        self.window = window
        self.limit = limit
        self.fits_since = fits_since
        super().__init__(f"the window holds more than {limit} entries")


def draft_agreements(
    live: Iterable[Agreement], upsert: Iterable[Agreement], remove: Iterable[str]
) -> list[Agreement]:
    """The live agreements with ``upsert`` replacing (or adding) by id and ``remove`` dropped."""
    replaced = {a.id: a for a in upsert}
    removed = set(remove) | set(replaced)
    return [a for a in live if a.id not in removed] + list(replaced.values())


def draft_policy(live: CompiledPolicy, upsert: Iterable[Agreement], remove: Iterable[str]) -> CompiledPolicy:
    """The live policy with ``upsert`` replacing (or adding) agreements by id and ``remove``
    dropped. An agreement the live policy refused still fails its owner's fields closed
    unless the draft replaces or removes it, so the simulation shows what the draft changes,
    not what the refusal does."""
    upsert, remove = list(upsert), list(remove)
    changed = set(remove) | {a.id for a in upsert}
    return compile_policy(
        draft_agreements(live.agreements, upsert, remove),
        live.field_owners,
        live.purposes,
        epoch=live.epoch,
        refused=[r for r in live.refused if r[1] not in changed],
    )


ChangeKey = tuple[str, str, str, str, str, str]


@dataclass(frozen=True)
class SimulationResult:
    evaluated: int
    changed: int
    # (consumer, field, action, purpose, before, after) -> how many requests
    changes: Mapping[ChangeKey, int]
    # consent-required / objected -> field decisions the draft withholds for that reason
    withheld_by_choice: Mapping[str, int] = field(default_factory=dict)


# How many requests the replay decides between two turns it gives the event loop: each
# one is some tens of microseconds of CPU, and nothing else in the replay awaits.
DECIDED_PER_TURN = 100


async def within_limit(source: RecordedRequestSource, window: Window, limit: int) -> None:
    """Raise ``WindowTooLarge`` unless ``window`` holds at most ``limit`` entries."""
    if await source.count(window, limit + 1) > limit:
        raise WindowTooLarge(window, limit, await source.since_holding(window, limit))


async def simulate(
    live: CompiledPolicy,
    draft: CompiledPolicy,
    source: RecordedRequestSource | None,
    window: Window | None = None,
    choices: ChoiceLoader | None = None,
    *,
    limit: int | None = None,
) -> SimulationResult:
    """Decide every recorded request in ``window`` under both policies and count what
    would differ.

    With ``limit``, a window holding more entries than that is refused before any is
    replayed (``WindowTooLarge``, from the source's bounded count), and so is one that grows
    past it while it is replayed. The replay gives the event loop a turn every
    ``DECIDED_PER_TURN`` requests.

    With ``choices``, a request an agreement with a citizen's choice decides is decided
    with that citizen's consents and objections (as ``choices`` gives them). With the
    window's ``fields`` (those of the departments whose agreements the draft changes: no
    other can change), only they are decided and counted, and a request that asked none of
    them is not evaluated, so a data owner learns nothing of the requests for other
    departments' fields."""
    evaluated = 0
    changed = 0
    changes: Counter[ChangeKey] = Counter()
    by_choice: Counter[str] = Counter()
    if source is None:
        return SimulationResult(0, 0, {}, {})
    window = window or Window()
    fields = window.fields
    if limit is not None:
        await within_limit(source, window, limit)
    replayed = 0
    async for request in source.recorded_requests(window):
        replayed += 1
        if limit is not None and replayed > limit:
            # Entries written since the count.
            raise WindowTooLarge(window, limit, await source.since_holding(window, limit))
        if replayed % DECIDED_PER_TURN == 0:
            await asyncio.sleep(0)
        asked: Sequence[str] = request.fields
        if fields is not None:
            asked = [name for name in asked if name in fields]
            if not asked:
                continue
        evaluated += 1
        context = RequestContext(request.purpose, request.case_ref, request.time, request.citizen_status)
        needed = live.choices_needed(request.consumer, request.action, asked) | draft.choices_needed(
            request.consumer, request.action, asked
        )
        if needed and choices is not None and request.citizen_id is not None:
            context = await choices(request.citizen_id, context, needed)
        before = live.decide(request.consumer, request.action, asked, context)
        after = draft.decide(request.consumer, request.action, asked, context)
        differs = False
        for name, old in before.items():
            new = after[name]
            if new.reason in (CONSENT_REQUIRED, OBJECTED):
                by_choice[new.reason] += 1
            if old.effect != new.effect:
                differs = True
                changes[
                    (request.consumer, name, request.action, request.purpose, old.effect, new.effect)
                ] += 1
        changed += differs
    return SimulationResult(evaluated, changed, dict(changes), dict(by_choice))
