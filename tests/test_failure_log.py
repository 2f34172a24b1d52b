"""``FailureLog``: a database that stays unusable is a line per run of failures, not a
line per request or round."""

from __future__ import annotations

import logging
import sqlite3

import pytest
from sqlalchemy import exc as sa_exc

from service.errors import FailingWrites, FailureLog


def disk_full() -> sa_exc.OperationalError:
    driver = sqlite3.OperationalError("database or disk is full")
    driver.sqlite_errorcode, driver.sqlite_errorname = sqlite3.SQLITE_FULL, "SQLITE_FULL"  # as SQLite's own
    try:
        raise sa_exc.OperationalError("INSERT INTO audit_entries ...", None, driver) from driver
    except sa_exc.OperationalError as exc:
        return exc


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def failures(clock: Clock) -> FailureLog:
    return FailureLog(logging.getLogger("tellonce.test"), "audit writer", repeat_seconds=60, clock=clock)


def lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.name == "tellonce.test"]


class TestFailureLog:
    def test_a_run_of_failures_is_one_line_with_the_drivers_error(
        self, failures: FailureLog, caplog: pytest.LogCaptureFixture
    ) -> None:
        for rows in range(1, 101):
            failures.failed("audit batch of %d entries failed to commit", disk_full(), rows)
        assert lines(caplog) == [
            "audit batch of 1 entries failed to commit: database unavailable"
            " (OperationalError: database or disk is full)"
        ]
        assert all(record.exc_info is None for record in caplog.records)

    def test_a_lasting_run_is_logged_again_with_the_count_left_unlogged(
        self, failures: FailureLog, clock: Clock, caplog: pytest.LogCaptureFixture
    ) -> None:
        for _ in range(5):
            failures.failed("round failed", disk_full())
        clock.now += 60
        failures.failed("round failed", disk_full())
        assert lines(caplog)[1:] == [
            "round failed: database unavailable (OperationalError: database or disk is full);"
            " 4 more since the last such line"
        ]

    def test_the_first_success_after_failures_says_so_once(
        self, failures: FailureLog, caplog: pytest.LogCaptureFixture
    ) -> None:
        failures.succeeded()
        assert lines(caplog) == []
        for _ in range(3):
            failures.failed("round failed", disk_full())
        failures.succeeded()
        failures.succeeded()
        assert lines(caplog)[1:] == ["audit writer: the database is usable again, after 3 failures"]
        # A new run starts with a line at once.
        failures.failed("round failed", disk_full())
        assert len(lines(caplog)) == 3

    def test_anything_else_is_a_traceback_every_time(
        self, failures: FailureLog, caplog: pytest.LogCaptureFixture
    ) -> None:
        for _ in range(2):
            failures.failed("round failed", ValueError("a bug"))
        assert lines(caplog) == ["round failed", "round failed"]
        assert all(record.exc_info is not None for record in caplog.records)
        failures.succeeded()
        assert len(lines(caplog)) == 2

    def test_what_the_caller_expects_is_a_run_too(
        self, clock: Clock, caplog: pytest.LogCaptureFixture
    ) -> None:
        failures = FailureLog(
            logging.getLogger("tellonce.test"),
            "audit appends",
            clock=clock,
            expected=lambda exc: isinstance(exc, ConnectionAbortedError | LookupError),
        )
        for _ in range(3):
            failures.failed("append failed", LookupError("the writer is not running"))
        # The database's absence stays in the run, and is still named so.
        failures.failed("append failed", disk_full())
        failures.failed("append failed", ValueError("a bug"))
        failures.succeeded()
        assert lines(caplog) == [
            "append failed: unavailable (LookupError: the writer is not running)",
            "append failed",
            "audit appends: the database is usable again, after 4 failures",
        ]
        assert [record.exc_info is not None for record in caplog.records] == [False, True, False]
        clock.now += 60
        failures.failed("append failed", disk_full())
        assert lines(caplog)[3:] == [
            "append failed: database unavailable (OperationalError: database or disk is full)"
        ]


class TestFailingWrites:
    """What ``/readyz`` reads: a writer's failure of the database makes the process not
    ready until a write succeeds, or for the window at most."""

    @pytest.fixture
    def writes(self, clock: Clock) -> FailingWrites:
        return FailingWrites(window_seconds=30, clock=clock)

    def test_a_failure_of_the_database_until_a_write_succeeds(
        self, writes: FailingWrites, clock: Clock
    ) -> None:
        log = FailureLog(logging.getLogger("tellonce.test"), "audit writer", clock=clock, writes=writes)
        assert not writes.failing()
        log.failed("batch failed", disk_full())
        clock.now += 29
        assert writes.failing()
        log.succeeded()
        assert not writes.failing()

    def test_a_bug_is_no_failure_of_the_database(self, writes: FailingWrites, clock: Clock) -> None:
        log = FailureLog(logging.getLogger("tellonce.test"), "audit writer", clock=clock, writes=writes)
        log.failed("batch failed", ValueError("a bug"))
        assert not writes.failing()

    def test_with_no_write_since_the_last_failure_ready_again_after_the_window(
        self, writes: FailingWrites, clock: Clock
    ) -> None:
        writes.failed(disk_full())
        clock.now += 20
        writes.failed(disk_full())
        clock.now += 29
        assert writes.failing()
        clock.now += 1
        assert not writes.failing()

    def test_a_connection_lost_or_a_busy_process_is_no_failure_of_the_storage(
        self, writes: FailingWrites, clock: Clock
    ) -> None:
        """What ``/readyz`` finds by its own read (a database down), or what taking the node
        out would only pass on to the others (a pool, the write queue out of time)."""
        log = FailureLog(logging.getLogger("tellonce.test"), "audit writer", clock=clock, writes=writes)
        lost = sa_exc.DBAPIError("SELECT 1", None, ConnectionResetError(), connection_invalidated=True)
        pool = sa_exc.TimeoutError("QueuePool limit of size 10 overflow 20 reached, connection timed out")
        queue = sqlite3.OperationalError("database is locked: no turn to write within 10 s")
        for exc in (lost, pool, queue, ConnectionRefusedError(), TimeoutError()):
            log.failed("batch failed", exc)
            assert not writes.failing()
        assert log.failing  # still a run of failures of the database, in the log
