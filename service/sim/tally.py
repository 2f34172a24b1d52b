"""What the simulated departments saw, counted as they go. Plain counters, no I/O.

The event loop is single-threaded, so counters need no locks.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

DENIAL_STATUSES = frozenset({403, 404})


@dataclass
class DepartmentCounts:
    requests: int = 0
    allowed: int = 0
    denied: int = 0
    errors: int = 0


@dataclass(frozen=True)
class Denial:
    """An over-reaching request and how it was refused (no values, no national ids)."""

    department: str
    attempt: str
    status: int


@dataclass
class Tally:
    departments: dict[str, DepartmentCounts] = field(default_factory=dict)
    # Life events that ran to completion, by kind (move, death, renewal, claim, over-reach).
    life_events: Counter[str] = field(default_factory=Counter)
    # Notifications received, by receiving department, and by channel (webhook or feed).
    notifications: Counter[str] = field(default_factory=Counter)
    channels: Counter[str] = field(default_factory=Counter)
    # (event id, department) pairs already counted, so a redelivery is not counted twice.
    seen: set[tuple[str, str]] = field(default_factory=set)
    # A department learnt a citizen's change by event instead of the citizen telling it.
    retellings_avoided: int = 0
    # Follow-up actions taken on an event (read the new address, stop a benefit...).
    actions: Counter[str] = field(default_factory=Counter)
    denials: list[Denial] = field(default_factory=list)
    # Reads refused or withheld because the citizen had not consented, or had objected.
    refused_for_consent: int = 0
    withheld_for_objection: int = 0
    # Access notices the citizen portal received, and those of them about accesses held
    # from the citizen until an investigation closed its case.
    access_notices: int = 0
    disclosed_on_close: int = 0

    def counts(self, department: str) -> DepartmentCounts:
        counts = self.departments.get(department)
        if counts is None:
            counts = self.departments[department] = DepartmentCounts()
        return counts

    def record_call(self, department: str, status: int) -> None:
        counts = self.counts(department)
        counts.requests += 1
        if 200 <= status < 300:
            counts.allowed += 1
        elif status in DENIAL_STATUSES:
            counts.denied += 1
        else:
            counts.errors += 1

    def record_notification(self, department: str, event_id: str, channel: str) -> bool:
        """Count one delivery; False if this department already had this event."""
        key = (event_id, department)
        if key in self.seen:
            return False
        self.seen.add(key)
        self.notifications[department] += 1
        self.channels[channel] += 1
        return True

    @property
    def total_requests(self) -> int:
        return sum(c.requests for c in self.departments.values())

    @property
    def total_allowed(self) -> int:
        return sum(c.allowed for c in self.departments.values())

    @property
    def total_denied(self) -> int:
        return sum(c.denied for c in self.departments.values())

    @property
    def total_errors(self) -> int:
        return sum(c.errors for c in self.departments.values())

    @property
    def total_notifications(self) -> int:
        return sum(self.notifications.values())
