"""``tellonce records``: maintenance of stored citizen records; ``tellonce import``."""

from __future__ import annotations

import asyncio
import csv
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from service import operator
from service.audit.key_events import KeyEventsInTransaction
from service.config import get_settings
from service.crypto.keyring import Keyring
from service.db import Database, missing_schema, unusable_database
from service.digits import bounded_decimal
from service.private_files import open_owner_only
from service.records import import_worker, importing
from service.records.import_files import ImportFormat
from service.records.reindex import ReindexResult, rebuild_blind_indexes

app = typer.Typer(no_args_is_help=True, help="Citizen records maintenance.")
# Progress and refused rows go to stderr, the summary to stdout. Each line stays one line
# (soft wrap), whatever the terminal's width: scripts read them line by line.
console = Console(soft_wrap=True)
errors = Console(stderr=True, soft_wrap=True)


@app.command("reindex")
def reindex(
    batch_size: int = typer.Option(500, min=1, help="Value rows rebuilt per transaction."),
) -> None:
    """Rebuild blind indexes computed with an older identifier normalisation.

    Safe to interrupt: run it again and it resumes after the last finished batch. Exit 1
    if, afterwards, two citizens share one national id (look-alike ids, or one id with and
    without spaces inside, registered twice before normalisation); their ids are printed so
    the register can resolve them."""
    settings = get_settings()
    keyring = Keyring.from_settings(settings)

    async def main() -> ReindexResult:
        database = Database(settings)
        try:
            return await rebuild_blind_indexes(
                database,
                keyring,
                batch_size=batch_size,
                progress=lambda done: console.print(f"rebuilt {done} blind indexes"),
            )
        finally:
            await database.dispose()

    result = asyncio.run(main())
    console.print(f"{result.rebuilt} blind indexes rebuilt, {result.changed} changed")
    for group in result.shared:
        console.print(f"one national id is held by several citizens: {', '.join(group)}")
    if result.shared:
        raise typer.Exit(1)


class _RowsPerSecond(ProgressColumn):
    """The import's rate, once rich can estimate one and the import has run for
    ``MIN_SECONDS_FOR_A_RATE``; nothing before (not "0 rows/s")."""

    def render(self, task: Task) -> Text:
        if task.speed is None or (task.elapsed or 0.0) < importing.MIN_SECONDS_FOR_A_RATE:
            return Text("")
        return Text(f"{task.speed:,.0f} rows/s")


class _RejectFile:
    """Refused rows as CSV (line, reason), no values, in a file only its owner may read. On
    resume, the lines an earlier run reported beyond the last committed row are dropped:
    their rows run again."""

    def __init__(self, path: Path, keep_up_to_line: int | None) -> None:
        kept: list[list[str]] = []
        if keep_up_to_line is not None and path.exists():
            with path.open(newline="", encoding="utf-8") as old:
                # Whole lines of committed rows only: a batch's lines are flushed before it
                # commits. A line number too long for ``int`` is past any committed line (an
                # import writes them without leading zeros).
                reader = csv.reader(old)
                try:
                    kept = [
                        r
                        for r in list(reader)[1:]
                        if len(r) == 2 and bounded_decimal(r[0], keep_up_to_line) is not None
                    ]
                except UnicodeDecodeError:
                    raise importing.ImportRefused(
                        "the reject file to resume is not one an import wrote (not UTF-8): "
                        "move it away or name another with --reject-file"
                    ) from None
                except csv.Error as exc:
                    # The reader's message names the rule (a cell over the limit), never the cell.
                    raise importing.ImportRefused(
                        f"the reject file to resume is not one an import wrote (line {reader.line_num}: "
                        f"{exc}): move it away or name another with --reject-file"
                    ) from None
        # The reasons name fields of people's records: for the owner only, as a key file is.
        # Not through a link put there since the command checked (OSError, said as such).
        self.handle: TextIO = open_owner_only(path, newline="", follow_symlinks=False)
        self.writer = csv.writer(self.handle)
        self.writer.writerow(["line", "reason"])
        self.writer.writerows(kept)
        self.handle.flush()

    def add(self, rejections: Sequence[importing.Rejection]) -> None:
        self.writer.writerows([r.line, r.reason] for r in rejections)
        self.handle.flush()

    def close(self) -> None:
        self.handle.close()


def import_file(
    file: Path = typer.Argument(..., exists=True, dir_okay=False, readable=True, help="The file to import."),
    department: str = typer.Option(..., "--department", help="The department whose records the file holds."),
    file_format: ImportFormat = typer.Option("csv", "--format", help="csv (with a header row) or jsonl."),
    mode: importing.ImportMode = typer.Option(
        "register", "--mode", help="register new citizens, or update registered citizens' values."
    ),
    reject_file: Path | None = typer.Option(
        None, "--reject-file", help="Write refused rows here as CSV (line, reason); else to stderr."
    ),
    resume: bool = typer.Option(
        False, "--resume", help="Continue after the last batch an earlier run committed."
    ),
    batch_size: int = typer.Option(
        importing.DEFAULT_BATCH_SIZE,
        "--batch-size",
        min=1,
        max=importing.MAX_BATCH_SIZE,
        help="Rows per transaction (at most 2,000).",
    ),
) -> None:
    """Import a department's existing records from a CSV or JSON Lines file.

    The columns are national_id and fields the department owns. Each row is validated as
    the API validates a request, encrypted, blind-indexed and audited; rows already stored
    change nothing. Exit 1 if any row was refused (each listed with its line and reason,
    never its values), 2 if the file cannot be imported at all (nothing is written)."""
    if reject_file is not None and reject_file.is_symlink():
        # Its target, wherever it is, would be emptied and made the operator's alone.
        errors.print(
            "tellonce import: the reject file is a symbolic link: name the file itself", markup=False
        )
        raise typer.Exit(2)
    if reject_file is not None and reject_file.exists() and reject_file.samefile(file):
        # Opened for writing, it would be emptied before a row of it was read.
        errors.print("tellonce import: the reject file is the file being imported", markup=False)
        raise typer.Exit(2)
    settings = get_settings()
    keyring = Keyring.from_settings(settings)
    keyring.on_key_event = KeyEventsInTransaction(operator.audit_client_id())

    async def main() -> importing.ImportReport:
        database = Database(settings)
        try:
            plan = await importing.plan_import(database.engine, file, file_format, department, mode)
            earlier = await importing.earlier_run(database.engine, plan) if resume else None
            if resume and earlier is None:
                # Said, not refused: a first run given --resume (a script that always passes
                # it) does what a first run does.
                errors.print(
                    "tellonce import: no earlier run of this file (for this department and mode) "
                    "to resume; importing from the start",
                    markup=False,
                )
            finished = earlier is not None and earlier.finished_at is not None
            keep = (earlier.last_line if earlier is not None else 0) if resume else None
            try:
                rejects = _RejectFile(reject_file, keep) if reject_file else None
            except OSError as exc:
                # Before any row: nothing is written. The reason, not a traceback.
                reason = exc.strerror or type(exc).__name__
                raise importing.ImportRefused(f"cannot write the reject file: {reason}") from None
            columns = (
                TextColumn("[bold]importing"),
                BarColumn(),
                MofNCompleteColumn(),
                _RowsPerSecond(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                TimeElapsedColumn(),
            )
            try:
                with Progress(*columns, console=errors, disable=finished) as progress:
                    task = progress.add_task("import", total=plan.scanned.rows)

                    def refused(rejections: Sequence[importing.Rejection]) -> None:
                        if rejects is not None:
                            rejects.add(rejections)
                        else:
                            for rejection in rejections:
                                progress.console.print(
                                    f"line {rejection.line}: {rejection.reason}", markup=False
                                )

                    return await importing.run_import(
                        database.engine,
                        keyring,
                        plan,
                        actor=operator.audit_client_id(),
                        resume=resume,
                        batch_size=batch_size,
                        on_rejections=refused,
                        on_progress=lambda done: progress.update(task, completed=done),
                    )
            finally:
                if rejects is not None:
                    rejects.close()
        finally:
            await database.dispose()

    try:
        report = asyncio.run(main())
    except importing.ImportRefused as exc:
        errors.print(f"tellonce import: {exc}", markup=False)
        raise typer.Exit(2) from None
    except import_worker.WorkerFailed as exc:
        # Names the exception's type and place, never a value.
        errors.print(
            f"tellonce import: {exc}; every committed batch is kept: run again with --resume to continue",
            markup=False,
        )
        raise typer.Exit(1) from None
    except (SQLAlchemyError, OSError) as exc:
        if missing_schema(exc) is not None:
            raise  # never migrated: the command's one line says to migrate, not to resume
        # The driver's message, never the statement's parameters (ciphertexts, blind indexes).
        reason = unusable_database(exc)
        if reason is None and isinstance(exc, OSError):
            raise  # the command's own files: not the database's
        if reason is None:
            original = exc.orig if isinstance(exc, DBAPIError) else None
            reason = (str(original).splitlines() or [""])[0] if original is not None else type(exc).__name__
        errors.print(
            f"tellonce import: stopped by a database error ({reason}); every committed batch "
            "is kept: run again with --resume to continue",
            markup=False,
        )
        raise typer.Exit(1) from None
    _print_summary(report)
    if report.counts.rejected:
        raise typer.Exit(1)


def _print_summary(report: importing.ImportReport) -> None:
    counts = report.counts
    if report.already_finished:
        console.print("this file was imported already; nothing to do")
    elif report.resumed_after_line:
        console.print(f"resumed after line {report.resumed_after_line}")
    console.print(
        f"rows read {counts.rows_read:,}, registered {counts.registered:,}, updated {counts.updated:,}, "
        f"unchanged {counts.unchanged:,}, rejected {counts.rejected:,}",
        markup=False,
    )
    if report.rows_this_run:
        rate = report.rows_per_second
        console.print(
            f"this run: {report.rows_this_run:,} {'row' if report.rows_this_run == 1 else 'rows'} "
            f"in {report.elapsed:.1f} s" + (f" ({rate:,.0f} rows/s)" if rate is not None else "")
        )
