"""A forked worker process that prepares an import's batches while the importing process
writes them.

The import's Python work per citizen (reading the row, the API's validation, blind
indexes, six AEAD values, a data key and its wrapping, the audit row) is about as much as
the database's, and in one process the two share one GIL. The worker is forked, so it
inherits the keyring's keys in memory (nothing is written anywhere or sent to it); it
never touches the database, and what it sends back holds no key material (a data key
refuses to be pickled) and no row's values other than the validated ones of accepted rows.

One request at a time: ``ask`` sends a request, ``answer`` waits for the result of
``make(request)`` run in the worker. An exception in the worker, or its death, ends the
exchange with ``WorkerFailed``; the message names the exception's type and where it was
raised, never its text (which might hold a value).
"""

from __future__ import annotations

import asyncio
import gc
import multiprocessing
import os
import pickle
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from service.records.import_files import ImportFileError

__all__ = ["BatchWorker", "WorkerFailed"]

_STOP = b""


class WorkerFailed(Exception):
    """The worker process failed or ended before answering. The message holds no value."""


class BatchWorker:
    """One forked process answering requests with ``make``, in order."""

    def __init__(self, make: Callable[[Any], Any]) -> None:
        context = multiprocessing.get_context("fork")
        self._conn, child = context.Pipe()
        self._process = context.Process(
            target=_serve, args=(child, self._conn, make), name="tellonce-import-worker", daemon=True
        )
        self._process.start()
        self._asked = False
        # Only the worker holds its end: its exit is seen here as the end of the pipe.
        child.close()

    def ask(self, request: Any) -> None:
        self._asked = True
        try:
            self._conn.send_bytes(pickle.dumps(request, pickle.HIGHEST_PROTOCOL))
        except OSError:
            raise self._ended() from None

    async def answer(self) -> Any:
        return await asyncio.to_thread(self._receive)

    def _receive(self) -> Any:
        try:
            payload = self._conn.recv_bytes()
        except (EOFError, OSError):
            raise self._ended() from None
        self._asked = False
        kind, body = pickle.loads(payload)  # noqa: S301 (our own forked child's reply)
        if kind == "failed":
            raise WorkerFailed(f"preparing a batch failed in the import's worker process: {body}")
        return body

    def _ended(self) -> WorkerFailed:
        self._process.join(5)
        return WorkerFailed(
            f"the import's worker process ended unexpectedly (exit code {self._process.exitcode})"
        )

    def close(self) -> None:
        """Stop the worker and wait for it: at once if a request is still unanswered (the
        import failed; what it prepares is not wanted), otherwise after it reads the stop."""
        if not self._asked:
            try:
                self._conn.send_bytes(_STOP)
            except OSError:
                pass
            self._process.join(10)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()
        self._conn.close()


def _serve(conn: Connection, parents_end: Connection, make: Callable[[Any], Any]) -> None:
    # The copy of the importing process's end that the fork gave this process: closed, so
    # that end closes when the importing process ends, even by kill -9, and this one
    # then reads the end of the pipe and exits.
    parents_end.close()
    # The parent's objects (engine, connections, open files) are never released here:
    # nothing inherited is collected, and the worker leaves by os._exit, running no
    # finaliser or exit handler of the parent's.
    gc.freeze()
    code = 0
    try:
        while True:
            request = conn.recv_bytes()
            if request == _STOP:
                break
            try:
                reply = pickle.dumps(("done", make(pickle.loads(request))), pickle.HIGHEST_PROTOCOL)  # noqa: S301
            except BaseException as exc:
                # Reported to the parent, which fails the import.
                conn.send_bytes(pickle.dumps(("failed", _described(exc))))
                code = 1
                break
            conn.send_bytes(reply)
    except (EOFError, OSError):
        code = 1  # the importing process is gone
    finally:
        os._exit(code)


def _described(error: BaseException) -> str:
    """The exception's type and the innermost place it was raised; its text only for the
    file's own errors, which never hold a value."""
    frames = traceback.extract_tb(error.__traceback__)
    last = frames[-1] if frames else None
    where = f" at {os.path.basename(last.filename)}:{last.lineno} ({last.name})" if last else ""
    text = f": {error}" if isinstance(error, ImportFileError) else ""
    return f"{type(error).__name__}{text}{where}"
