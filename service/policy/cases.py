"""Policy test cases: ``DIR/tests/*.yaml``, each case a request and its expected decisions.

A case file is a list of cases (or ``cases: [...]``)::

    - name: dwp reads licence status for a benefit claim
      consumer: dwp
      action: read
      fields: [licence_status]
      purpose: benefit-eligibility
      case_ref: CLAIM-1          # optional
      citizen_status: active     # optional
      time: 2026-06-01           # optional; defaults to now
      consents: [agreement-id]   # optional: the citizen's active consents
      objections: [agreement-id] # optional: the citizen's objections
      expect: {licence_status: permit}
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from service.policy.engine import (
    Action,
    CompiledPolicy,
    Consented,
    Decision,
    RequestContext,
    compile_policy,
    consented,
)
from service.policy.loader import PolicyFolder
from service.sourcefile import SourceError, SourceFileError, read_yaml


class PolicyCase(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = ""
    consumer: str
    action: Action
    fields: list[str] = Field(min_length=1)
    purpose: str
    case_ref: str | None = None
    citizen_status: Literal["active", "deceased"] | None = None
    time: datetime | date | None = None
    # The agreements the citizen holds an active consent to, and has objected to.
    consents: list[str] = Field(default_factory=list)
    objections: list[str] = Field(default_factory=list)
    expect: dict[str, Literal["permit", "deny"]] = Field(min_length=1)


@dataclass(frozen=True)
class LoadedCase:
    case: PolicyCase
    file: str
    line: int

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass(frozen=True)
class Mismatch:
    case: LoadedCase
    field: str
    expected: str
    decision: Decision


def load_cases(directory: Path) -> list[LoadedCase]:
    """Every case in ``DIR/tests/*.yaml``; raises ``SourceFileError`` with every problem."""
    cases: list[LoadedCase] = []
    errors: list[SourceError] = []
    for path in sorted((directory / "tests").glob("*.yaml")):
        try:
            document = read_yaml(path)
        except SourceFileError as exc:
            errors.extend(exc.errors)
            continue
        data = document.data
        prefix: tuple[str, ...] = ()
        if isinstance(data, dict) and set(data) == {"cases"}:
            data, prefix = data["cases"], ("cases",)
        if not isinstance(data, list):
            errors.append(document.error((), "a case file is a list of cases"))
            continue
        for index, raw in enumerate(data):
            try:
                case = PolicyCase.model_validate(raw)
            except ValidationError as exc:
                errors.extend(document.pydantic_errors(exc, prefix=(*prefix, index)))
                continue
            for name in case.expect:
                if name not in case.fields:
                    errors.append(
                        document.error((*prefix, index, "expect", name), f"{name} is not in fields")
                    )
            cases.append(LoadedCase(case, document.file, document.line_of((*prefix, index))))
    if errors:
        raise SourceFileError(errors)
    return cases


def folder_policy(folder: PolicyFolder) -> CompiledPolicy:
    """The folder's agreements compiled as if applied (every agreement at version 1)."""
    agreements = [a.spec.to_engine(a.owner, 1) for a in folder.agreements]
    return compile_policy(
        agreements, folder.catalog.field_owners, [p.id for p in folder.catalog.purposes], epoch=0
    )


def _instant(value: datetime | date | None) -> datetime:
    if value is None:
        return datetime.now(UTC)
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    return datetime.combine(value, time(12), tzinfo=UTC)


def _consented(policy: CompiledPolicy, agreement_ids: Iterable[str]) -> frozenset[Consented]:
    """A case's consents, each given to its agreement's terms as the policy has them."""
    wanted = set(agreement_ids)
    return frozenset(
        held
        for agreement in policy.agreements
        if agreement.id in wanted and agreement.purposes
        for held in consented(
            agreement.id, agreement.consumer, agreement.purposes[0], agreement.fields, agreement.actions
        )
    )


def run_cases(policy: CompiledPolicy, cases: list[LoadedCase]) -> list[Mismatch]:
    mismatches = []
    for loaded in cases:
        case = loaded.case
        context = RequestContext(
            case.purpose,
            case.case_ref,
            _instant(case.time),
            case.citizen_status,
            consents=_consented(policy, case.consents),
            objections=frozenset(case.objections),
        )
        decisions = policy.decide(case.consumer, case.action, case.fields, context)
        for name, expected in case.expect.items():
            if decisions[name].effect != expected:
                mismatches.append(Mismatch(loaded, name, expected, decisions[name]))
    return mismatches


def describe(mismatch: Mismatch) -> str:
    """A readable diff line for one mismatch."""
    case = mismatch.case.case
    title = f" ({case.name})" if case.name else ""
    return (
        f"{mismatch.case.where}: {case.consumer} {case.action} {mismatch.field} for {case.purpose}{title}\n"
        f"  - expected: {mismatch.expected}\n"
        f"  + got:      {mismatch.decision.effect} ({mismatch.decision.reason})"
    )
