"""Whole-log verification in parallel: worker processes check pages of leaves, the parent
checks every checkpoint.

Each worker reads its pages itself with the database driver (sqlite3, or asyncpg on an
event loop of its own) and runs ``check_leaves`` on them: parse, canonical form, leaf
hash, filter columns. A page holds a power of two of leaves and starts on a multiple of
it, so its leaves form whole subtrees of the log's tree: the worker grows the page's own
tree and sends back its compact range (one hash when the page is full), and another at
each checkpoint's size inside the page, so no entry and no leaf hash is copied between
processes and the parent's work per page is a few hashes. A worker stops a page at its
first problem and sends it with the ranges of the leaves before it; the parent takes the
pages in log order, growing the tree and checking each checkpoint's root on the way, so
the problem it reports is the one ``LogVerifier.add_rows`` finds reading the log in one
process: the first in log order.

The workers are forked, so they start at once with the modules the parent has already
imported (a fresh interpreter would spend longer importing them than it takes to check
a large log). That is for a command-line process (``tellonce audit verify``); a server
with threads of its own verifies in one process.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import multiprocessing.util
import signal
import sqlite3
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any

import asyncpg
from sqlalchemy.engine import make_url

from service.audit import repository as audit_repository
from service.audit.leaf_checks import VerificationFailed, check_leaves
from service.audit.merkle import CompactRange
from service.audit.verify import LogVerifier
from service.db import KeptAliveConnection, asyncpg_dsn


@dataclass(frozen=True)
class Parallel:
    """How to verify a stored log in worker processes: the database they read
    (``TELLONCE_DATABASE_URL``'s form), how many, and how many leaves a page holds (a
    power of two, so a page is whole subtrees). A log smaller than ``from_size`` is
    checked in one process, which is quicker than starting the workers."""

    database_url: str
    workers: int = 2
    page: int = 8192
    from_size: int = 50_000

    def __post_init__(self) -> None:
        if self.page < 1 or self.page & (self.page - 1):
            raise ValueError(f"a page holds a power of two of leaves, not {self.page}")


# The worker's page reader, set once when the worker starts.
_read_page: Callable[[int, int], list[Any]] | None = None


def _start_worker(database_url: str) -> None:
    global _read_page  # one reader per worker process
    # Ctrl-C is the parent's to handle: it stops the pool.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        connection = sqlite3.connect(url.database or "")
        _read_page = partial(audit_repository.sqlite_leaf_page, connection)
        return
    loop = asyncio.new_event_loop()
    postgres: asyncpg.Connection = loop.run_until_complete(
        asyncpg.connect(asyncpg_dsn(url), connection_class=KeptAliveConnection)
    )

    def read(first: int, below: int) -> list[Any]:
        return loop.run_until_complete(audit_repository.postgres_leaf_page(postgres, first, below))

    def close() -> None:
        loop.run_until_complete(postgres.close())
        loop.close()

    _read_page = read
    # Run as the worker process exits, so the server sees the connection closed cleanly.
    multiprocessing.util.Finalize(None, close, exitpriority=10)


# (the page's first stored leaf index, or None if it holds none; the compact ranges of
# its leaves before its first problem as ``LogVerifier.add_ranges`` takes them; that
# problem's message).
PageResult = tuple[int | None, list[tuple[int, list[bytes]]], str | None]


def page_ranges(leaves: Sequence[bytes], cuts: Sequence[int]) -> list[tuple[int, list[bytes]]]:
    """The compact range of the first ``cut`` of ``leaves`` for each of ``cuts`` (ascending)
    below their number, then of all of them, each as (leaf count, hashes)."""
    tree = CompactRange()
    ranges: list[tuple[int, list[bytes]]] = []
    for cut in cuts:
        if cut >= len(leaves):
            break
        tree.extend(leaves[tree.size : cut])
        ranges.append((cut, list(tree.hashes)))
    tree.extend(leaves[tree.size :])
    ranges.append((tree.size, tree.hashes))
    return ranges


def check_page(rows: Sequence[Sequence[Any]], cuts: Sequence[int] = ()) -> PageResult:
    """A worker's check of one page of stored rows, ``cuts`` the checkpoint sizes inside
    it counted from its first leaf: (the page's first stored leaf index, or None if it
    holds none; the compact ranges of its leaves before its first problem, at each cut
    and whole; that problem's message)."""
    if not rows:
        return None, [], None
    start = int(rows[0][0])
    leaves, _records, failure = check_leaves(rows, start)
    return start, page_ranges(leaves, cuts), None if failure is None else str(failure)


def take_page(log: LogVerifier, result: PageResult) -> None:
    """The parent's side: feed a page's ranges to ``log`` (the next page in log order),
    then raise the page's problem, if any."""
    first, ranges, problem = result
    if first is not None:
        log.add_ranges(first, ranges)
    if problem is not None:
        raise VerificationFailed(problem)


def page_bounds(log: LogVerifier, size: int, page: int) -> list[tuple[int, int, list[int]]]:
    """The pages of a log of ``size`` leaves, ``page`` leaves each: (first leaf, the leaf
    after the last, the sizes of ``log``'s checkpoints inside the page counted from its
    first leaf). A checkpoint at a page's end is checked on the whole page, one at its
    start on the page before."""
    sizes = sorted({checkpoint.tree_size for checkpoint in log.checkpoints})
    bounds = []
    for start in range(0, size, page):
        below = min(start + page, size)
        inside = sizes[bisect_right(sizes, start) : bisect_left(sizes, below)]
        bounds.append((start, below, [at - start for at in inside]))
    return bounds


def read_stored_page(first: int, below: int) -> list[Any]:
    """In a worker: the stored rows of leaves ``first`` to ``below`` (exclusive)."""
    assert _read_page is not None, "the worker was started without a reader"  # noqa: S101
    return _read_page(first, below)


def check_stored_page(first: int, below: int, cuts: Sequence[int]) -> PageResult:
    """In a worker: ``check_page`` on the stored rows of leaves ``first`` to ``below``."""
    return check_page(read_stored_page(first, below), cuts)


async def verify_in_pages(
    log: LogVerifier,
    parallel: Parallel,
    size: int,
    progress: Callable[[int, int], None] | None = None,
    page_check: Callable[[int, int, Sequence[int]], PageResult] = check_stored_page,
) -> None:
    """Feed ``log`` every stored leaf below ``size``, checked by ``parallel.workers``
    processes a page at a time (``page_check``: a benchmark's baseline passes one that
    only hashes); raise ``VerificationFailed`` at the first problem in log order, as
    ``LogVerifier.add_rows`` would."""
    pool = ProcessPoolExecutor(
        parallel.workers,
        mp_context=multiprocessing.get_context("fork"),
        initializer=_start_worker,
        initargs=(parallel.database_url,),
    )
    try:
        pages = [
            pool.submit(page_check, audit_repository.FIRST_LEAF if start == 0 else start, below, cuts)
            for start, below, cuts in page_bounds(log, size, parallel.page)
        ]
        for page in pages:
            take_page(log, await asyncio.wrap_future(page))
            if progress is not None:
                progress(log.compact.size, size)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
