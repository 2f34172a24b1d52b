"""Simulate a policy change: replay recorded requests against a draft index.

Pure apart from the request source; the live policy is never touched. The audit domain
provides the real ``RecordedRequestSource`` (put on ``app.state.recorded_requests``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
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


class RecordedRequestSource(Protocol):
    """Where simulate reads past requests from (the audit store, or a test fixture)."""

    def recorded_requests(self, since: datetime | None) -> AsyncIterator[RecordedRequest]: ...


@dataclass(frozen=True)
class ListSource:
    """A fixed list of requests: for tests and for sources held in memory."""

    requests: tuple[RecordedRequest, ...]

    async def recorded_requests(self, since: datetime | None) -> AsyncIterator[RecordedRequest]:
        for request in self.requests:
            if since is None or request.time >= since:
                yield request


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


async def simulate(
    live: CompiledPolicy,
    draft: CompiledPolicy,
    source: RecordedRequestSource | None,
    since: datetime | None = None,
    choices: ChoiceLoader | None = None,
    fields: Collection[str] | None = None,
) -> SimulationResult:
    """Decide every recorded request under both policies and count what would differ.

    With ``choices``, a request an agreement with a citizen's choice decides is decided
    with that citizen's consents and objections (as ``choices`` gives them). With
    ``fields`` (those of the departments whose agreements the draft changes: no other can
    change), only they are decided and counted, and a request that asked none of them is
    not evaluated, so a data owner learns nothing of the requests for other departments'
    fields."""
    evaluated = 0
    changed = 0
    changes: Counter[ChangeKey] = Counter()
    by_choice: Counter[str] = Counter()
    if source is None:
        return SimulationResult(0, 0, {}, {})
    async for request in source.recorded_requests(since):
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
