"""The demo's closing report, rendered with rich from the counters and the audit.

The last lines are plain text in a fixed shape (``notifications delivered: N``,
``audit verified: N entries, checkpoint ROOT, cosigned by K of W witnesses``) so that
scripts and the end-to-end test can read them as well as people.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

from rich.console import Console
from rich.table import Table

from service.audit.releases import ReleaseReport
from service.sim.tally import Tally


@dataclass(frozen=True)
class AuditSummary:
    """The result of the real audit verification over the whole log."""

    entries: int
    root: str
    # How many of the configured witnesses cosigned the checkpoint ``root`` is from.
    cosigned: int = 0
    witnesses: int = 0


@dataclass
class DemoReport:
    citizens: int
    seconds: float
    tally: Tally
    # Owner -> consumer -> accesses that released the owner's fields to that consumer.
    value_by_owner: dict[str, Counter[str]] = field(default_factory=dict)
    audit: AuditSummary | None = None
    audit_problem: str | None = None
    # False when the server had no events service: nobody could be notified.
    events_available: bool = True
    # The signing owners' re-decision of every release of their fields, from the log.
    owner_checks: list[ReleaseReport] = field(default_factory=list)


def _departments_table(tally: Tally) -> Table:
    table = Table(title="Requests by department", title_justify="left")
    table.add_column("department")
    for name in ("requests", "allowed", "denied", "errors"):
        table.add_column(name, justify="right")
    for department in sorted(tally.departments):
        counts = tally.departments[department]
        table.add_row(
            department, str(counts.requests), str(counts.allowed), str(counts.denied), str(counts.errors)
        )
    table.add_section()
    table.add_row(
        "all",
        str(tally.total_requests),
        str(tally.total_allowed),
        str(tally.total_denied),
        str(tally.total_errors),
        style="bold",
    )
    return table


def _events_table(tally: Tally) -> Table:
    table = Table(title="Life events, and what departments did on hearing of them", title_justify="left")
    table.add_column("what happened")
    table.add_column("times", justify="right")
    for name, count in sorted(tally.life_events.items()):
        table.add_row(name, str(count))
    table.add_section()
    for name, count in sorted(tally.actions.items()):
        table.add_row(name, str(count))
    return table


def _notifications_table(tally: Tally) -> Table:
    table = Table(title="Notifications delivered", title_justify="left")
    table.add_column("department")
    table.add_column("notifications", justify="right")
    for department, count in sorted(tally.notifications.items()):
        table.add_row(department, str(count))
    return table


def _value_table(value: Mapping[str, Counter[str]]) -> Table:
    table = Table(title="Value per owning department (its data served to others)", title_justify="left")
    table.add_column("owner")
    table.add_column("field values served", justify="right")
    table.add_column("to")
    for owner, consumers in sorted(value.items(), key=lambda item: -sum(item[1].values())):
        spread = ", ".join(f"{consumer} {count}" for consumer, count in consumers.most_common())
        table.add_row(owner, str(sum(consumers.values())), spread)
    return table


def _denials_table(tally: Tally) -> Table:
    table = Table(title="Over-reaching requests, refused and audited (examples)", title_justify="left")
    table.add_column("department")
    table.add_column("tried to get")
    table.add_column("answer", justify="right")
    for denial in tally.denials:
        table.add_row(denial.department, denial.attempt, str(denial.status))
    return table


def render(console: Console, report: DemoReport) -> None:
    tally = report.tally
    console.rule(f"tellonce demo: {report.citizens:,} citizens, {report.seconds:.0f} s of department traffic")
    console.print(_departments_table(tally))
    console.print(_events_table(tally))
    console.print(_notifications_table(tally))
    if report.value_by_owner:
        console.print(_value_table(report.value_by_owner))
    if tally.denials:
        console.print(_denials_table(tally))
    channels = ", ".join(f"{count} by {channel}" for channel, count in sorted(tally.channels.items()))
    # The fixed-shape summary lines: soft_wrap keeps each on one line whatever the width.
    lines = [
        f"requests: {tally.total_requests}, allowed: {tally.total_allowed}, denied: {tally.total_denied}, "
        f"errors: {tally.total_errors}",
        f"notifications delivered: {tally.total_notifications}"
        + (f" ({channels})" if channels else "")
        + ("" if report.events_available else " (this server has no events service)"),
        f"re-tellings avoided: {tally.retellings_avoided}",
        f"releases refused for lack of consent: {tally.refused_for_consent}, "
        f"withheld after an objection: {tally.withheld_for_objection}",
        f"access notices delivered to the citizen portal: {tally.access_notices}",
        f"disclosures made when a case closed: {tally.disclosed_on_close}",
    ]
    if report.audit is not None:
        line = f"audit verified: {report.audit.entries} entries, checkpoint {report.audit.root}"
        if report.audit.witnesses:
            line += f", cosigned by {report.audit.cosigned} of {report.audit.witnesses} witnesses"
        lines.append(line)
    else:
        lines.append(f"audit NOT verified: {report.audit_problem or 'no verification ran'}")
    for check in report.owner_checks:
        lines.append(f"releases re-decided: {check.summary()}")
        lines.extend(f"  unjustified: {unjustified}" for unjustified in check.unjustified[:10])
    for line in lines:
        console.print(line, soft_wrap=True, highlight=False, markup=False)
