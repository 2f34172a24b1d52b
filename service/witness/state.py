"""The witness's own state: per log origin, the latest checkpoint it cosigned.

Logs are known by their origin line (C2SP tlog-witness), each with the verifier keys
trusted for it; a key's name only should match the origin (tlog-checkpoint).

One SQLite file, never the tellonce database. ``add_checkpoint`` checks the submission
against the stored size and saves the new checkpoint inside one ``BEGIN IMMEDIATE``
transaction, so two submissions (even from two witness processes on the same file) are
decided one after the other: the rollback race the spec warns about cannot happen.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
import stat
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from service.audit import merkle
from service.audit.checkpoint import Checkpoint, CheckpointError, NoteVerifier, open_note, parse_note
from service.witness.cosignature import CosignatureSigner
from service.witness.protocol import Submission

_SCHEMA = """
CREATE TABLE IF NOT EXISTS cosigned (
    origin TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    root_hash BLOB NOT NULL,
    note TEXT NOT NULL,
    cosigned_at INTEGER NOT NULL
)
"""


class Refusal(Exception):
    """Why a submission was not cosigned, with the status the protocol gives it."""

    def __init__(self, status: int, detail: str, latest_size: int | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        # Set for 409: the size of the latest checkpoint cosigned for the origin.
        self.latest_size = latest_size


@dataclass(frozen=True)
class TrustedLog:
    """A log this witness follows: its origin line and one verifier key trusted for it."""

    origin: str
    verifier: NoteVerifier

    @classmethod
    def parse(cls, text: str) -> TrustedLog:
        """``VKEY``, or ``ORIGIN VKEY``: the origin line, a space and the verifier key.

        A verifier key holds no space, so the origin is all before the last space (without
        surrounding whitespace); with no origin given, the key's name is the origin, as
        tlog-checkpoint recommends and as a tellonce log names its key."""
        head, _space, vkey = text.strip().rpartition(" ")
        verifier = NoteVerifier.parse(vkey)
        origin = head.strip() or verifier.name
        if "\n" in origin:
            raise CheckpointError("an origin is one line")
        return cls(origin=origin, verifier=verifier)


@dataclass(frozen=True)
class Cosigned:
    cosignature: str  # one signature line, newline-terminated


class WitnessState:
    def __init__(
        self,
        path: Path,
        signer: CosignatureSigner,
        logs: Iterable[TrustedLog | NoteVerifier],
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``logs``: the logs followed, each a ``TrustedLog`` or a bare verifier key, which
        stands for the log whose origin is the key's name."""
        self.path = path
        self.signer = signer
        self.clock = clock
        # Origin line -> the verifier keys trusted for that log.
        self.logs: dict[str, list[NoteVerifier]] = {}
        for log in logs:
            trusted = log if isinstance(log, TrustedLog) else TrustedLog(log.name, log)
            self.logs.setdefault(trusted.origin, []).append(trusted.verifier)
        self._lock = threading.Lock()
        # The state is this witness's word on every log (a rollback would let it cosign a
        # fork): made readable by its owner only; SQLite gives its WAL the same mode. An
        # existing file is not opened here: closing a descriptor of it would release the
        # locks any SQLite connection of this process holds on it (POSIX). Anything else
        # there (a folder) is refused, its mode left as it is: ``OSError``, as is a path
        # that cannot be opened; a file that is not an SQLite database is ``sqlite3.Error``.
        with contextlib.suppress(FileExistsError):
            os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600))
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        os.chmod(path, 0o600)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    def latest(self, origin: str) -> str | None:
        """The latest cosigned checkpoint for ``origin`` with this witness's cosignature."""
        with self._lock:
            row = self._db.execute("SELECT note FROM cosigned WHERE origin = ?", (origin,)).fetchone()
        return None if row is None else str(row[0])

    def _open(self, note: str) -> tuple[Checkpoint, str]:
        """The checkpoint and its body, once a key trusted for its origin has signed it and
        no signature by such a key fails (C2SP signed-note: the whole note is refused)."""
        try:
            body, _signatures = parse_note(note)
            checkpoint = Checkpoint.parse_body(body)
        except CheckpointError as exc:
            raise Refusal(400, f"the checkpoint does not parse: {exc}") from None
        verifiers = self.logs.get(checkpoint.origin)
        if not verifiers:
            raise Refusal(404, f"this witness does not follow the log {checkpoint.origin!r}")
        try:
            open_note(note, verifiers)
        except CheckpointError as exc:
            raise Refusal(403, f"the checkpoint's signatures are not trusted: {exc}") from None
        return checkpoint, body

    def add_checkpoint(self, submission: Submission) -> Cosigned:
        """Cosign ``submission`` or raise ``Refusal`` with the status tlog-witness gives."""
        checkpoint, body = self._open(submission.note)
        if submission.old_size > checkpoint.size:
            raise Refusal(400, "the old size is larger than the checkpoint's size")
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                cosigned = self._check_and_save(checkpoint, body, submission)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        return cosigned

    def _check_and_save(self, checkpoint: Checkpoint, body: str, submission: Submission) -> Cosigned:
        row = self._db.execute(
            "SELECT size, root_hash FROM cosigned WHERE origin = ?", (checkpoint.origin,)
        ).fetchone()
        stored_size, stored_root = (0, None) if row is None else (int(row[0]), bytes(row[1]))
        if submission.old_size != stored_size:
            raise Refusal(
                409, f"the latest cosigned size is {stored_size}, not {submission.old_size}", stored_size
            )
        if checkpoint.size == stored_size and stored_root is not None:
            # Same size: only the very same tree may be cosigned again (a fork otherwise).
            if checkpoint.root_hash != stored_root:
                raise Refusal(409, "a checkpoint of this size with another root was cosigned", stored_size)
            if submission.proof:
                raise Refusal(422, "a same-size submission carries no consistency proof")
        elif stored_root is None:
            if submission.proof:
                raise Refusal(422, "the consistency proof must be empty when the old size is zero")
        elif not merkle.verify_consistency(
            stored_size, checkpoint.size, submission.proof, stored_root, checkpoint.root_hash
        ):
            raise Refusal(422, "the consistency proof does not verify")
        timestamp = int(self.clock())
        line = self.signer.cosign(body, timestamp)
        note = submission.note + line
        self._db.execute(
            "INSERT INTO cosigned (origin, size, root_hash, note, cosigned_at) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (origin) DO UPDATE SET size = excluded.size, root_hash = excluded.root_hash, "
            "note = excluded.note, cosigned_at = excluded.cosigned_at",
            (checkpoint.origin, checkpoint.size, checkpoint.root_hash, note, timestamp),
        )
        return Cosigned(cosignature=line)
