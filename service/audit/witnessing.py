"""Witnessing the audit log: submit checkpoints, keep cosignatures, fail closed.

The submitter sends the newest checkpoint to every configured witness (C2SP
tlog-witness), each with a consistency proof from the size that witness last cosigned.
It learns that size from the cosignatures already stored and re-syncs it from a 409's
body. Cosignatures are checked with the witness's key, and ignored if dated more than
a few minutes ahead, before they are stored; once a quorum of the configured witnesses
has cosigned, the checkpoint is *witnessed* and becomes what
``GET /v1/audit/checkpoint`` serves, with one cosignature line per configured witness.
While the log is idle the newest checkpoint is re-submitted every refresh period, so
"recently witnessed" stays true of a quiet log. A witness that fails (down, refusing, a
bad answer) is asked again after pauses that double from the poll interval up to
``MAX_RETRY_SECONDS``, while the others are asked as before; it is logged once when it
fails and once when it cosigns again. A witness slow to answer (up to the timeout) holds
back only its own cosignature: the checkpoint is witnessed as soon as the quorum has
answered, and once a newer checkpoint is signed too the round ends without it (before the
quorum has answered, the round waits for it). Its exchange goes on alone, its
cosignature is kept when it comes, and it is asked about the newest checkpoint once that
exchange has ended.

"At quorum" always means at quorum of the witnesses configured now: a checkpoint marked
witnessed under an earlier configuration counts only while enough of today's witnesses
have a stored cosignature on it that their keys verify.

The gate fails closed: with a grace period set, once no checkpoint has reached the
quorum for longer than that, reads and writes that release data answer 503. Requests
never wait for a witness: the gate only compares a timestamp kept fresh by a poller.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass

import httpx
from fastapi import FastAPI
from prometheus_client import Gauge
from sqlalchemy.ext.asyncio import AsyncEngine

from service.audit import cosignatures as cosignature_repository
from service.audit import proofs
from service.audit.checkpoint import MAX_TREE_SIZE
from service.audit.config import AuditSettings
from service.audit.cosignatures import CheckpointRow
from service.audit.errors import AuditUnavailable, NoCheckpoint
from service.audit.repository import Executor
from service.db import utcnow
from service.digits import bounded_decimal
from service.errors import FailureLog, database_unavailable
from service.witness.cosignature import (
    Cosignature,
    CosignatureError,
    CosignatureVerifier,
    answer_lines,
    split_note,
    verified_cosignatures,
)
from service.witness.protocol import submission_body

logger = logging.getLogger("tellonce.audit.witnessing")


# How often the fail-closed gate re-reads when a checkpoint last reached the quorum: once
# a second, or every tenth of the grace period if that is shorter. It runs in every
# API process, beside the requests, so it is kept far slower than the submitter's poll.
GATE_REFRESH_SECONDS = 1.0

# How far in the future a cosignature's timestamp may be (clock skew) before it is
# ignored. tlog-cosignature lets a verifier refuse future timestamps; one past the year
# 9999 could not even be stored, and must not cost the other witnesses' cosignatures.
MAX_COSIGNATURE_FUTURE_SECONDS = 300

# The most of a witness's answer read: a 200 is a few cosignature lines (about 120 bytes
# each for Ed25519) and a 409 a number. A witness that sends more is cut off, so a broken
# or hostile one cannot fill the sequencer's memory.
MAX_WITNESS_ANSWER_BYTES = 64 * 1024

# A witness that failed (unreachable, slow, refusing, a bad answer) is asked again after
# the poll interval, then after twice as long at each further failure, up to this (or the
# refresh period, if shorter: see ``WitnessConfig.max_retry_seconds``); a success resets it.
# So a witness that is down is not asked every poll, and one that is back is asked again
# within this long.
MAX_RETRY_SECONDS = 30.0


class WitnessConfigInvalid(ValueError):
    """TELLONCE_AUDIT_WITNESSES or the quorum cannot be used; ``variable`` names the setting.
    The message never repeats an entry as given: its URL may carry a credential."""

    def __init__(self, message: str, variable: str = "TELLONCE_AUDIT_WITNESSES") -> None:
        super().__init__(message)
        self.variable = variable


class LogUnwitnessed(AuditUnavailable):
    """No checkpoint reached the witness quorum within the grace period."""

    title, slug = "Audit log not witnessed", "audit-unwitnessed"


@dataclass(frozen=True)
class WitnessEndpoint:
    url: str
    verifier: CosignatureVerifier

    @property
    def name(self) -> str:
        return self.verifier.name


@dataclass(frozen=True)
class WitnessConfig:
    witnesses: tuple[WitnessEndpoint, ...]
    quorum: int
    grace_seconds: float | None
    refresh_seconds: float
    timeout_seconds: float
    poll_seconds: float  # how often the submitter looks for a checkpoint to submit
    gate_seconds: float = GATE_REFRESH_SECONDS  # how often each API process re-reads the age

    @property
    def enabled(self) -> bool:
        return bool(self.witnesses)

    @property
    def verifiers(self) -> tuple[CosignatureVerifier, ...]:
        return tuple(w.verifier for w in self.witnesses)

    @property
    def max_retry_seconds(self) -> float:
        """The longest pause before a failing witness is asked again: ``MAX_RETRY_SECONDS``,
        or the refresh period if shorter (at most a third of the grace period), so a witness
        back from an outage is asked again before the log must be re-witnessed."""
        return max(self.poll_seconds, min(MAX_RETRY_SECONDS, self.refresh_seconds))


def parse_witnesses(text: str) -> tuple[WitnessEndpoint, ...]:
    """``URL=VKEY`` pairs separated by whitespace; the URL is the witness's submission prefix."""
    found: list[WitnessEndpoint] = []
    for number, pair in enumerate(text.split(), start=1):
        url, separator, vkey = pair.partition("=")
        if not separator or not url.startswith(("http://", "https://")):
            raise WitnessConfigInvalid(f"entry {number} is not URL=VKEY (an http:// or https:// URL)")
        _check_url(url, number)
        try:
            verifier = CosignatureVerifier.parse(vkey)
        except CosignatureError as exc:
            raise WitnessConfigInvalid(f"entry {number}: {exc}") from None
        if any(w.name == verifier.name for w in found):
            raise WitnessConfigInvalid(f"the witness {verifier.name} is listed twice")
        # A cosignature does not sign its witness's name (C2SP tlog-cosignature), so one key
        # under two names would count one witness's cosignature twice toward the quorum.
        twin = next((w for w in found if w.verifier.public_key == verifier.public_key), None)
        if twin is not None:
            raise WitnessConfigInvalid(
                f"the witnesses {twin.name} and {verifier.name} have the same public key: "
                "one witness counts once"
            )
        found.append(WitnessEndpoint(url.rstrip("/"), verifier))
    return tuple(found)


def _check_url(url: str, number: int) -> None:
    """Refuse a witness URL no request could be sent to (no host, a port that is not a
    number from 1 to 65535), so it is said at start-up rather than on every round. The
    entry is named by its position: its URL may carry a credential."""
    try:
        parsed = httpx.URL(url)
        port = parsed.port
    except httpx.InvalidURL:
        raise WitnessConfigInvalid(f"entry {number}: the URL cannot be read") from None
    if not parsed.host:
        raise WitnessConfigInvalid(f"entry {number}: a witness URL names a host")
    if port is not None and not 1 <= port <= 65535:
        raise WitnessConfigInvalid(f"entry {number}: the port is not from 1 to 65535")


def witness_config(audit: AuditSettings) -> WitnessConfig:
    witnesses = parse_witnesses(audit.witnesses)
    if audit.witness_quorum is not None and not witnesses:
        # A quorum asks for witnessing; without witnesses it would be silently ignored and
        # the log served unwitnessed.
        raise WitnessConfigInvalid(
            f"a quorum of {audit.witness_quorum} is set, but TELLONCE_AUDIT_WITNESSES lists no witness",
            "TELLONCE_AUDIT_WITNESS_QUORUM",
        )
    quorum = audit.witness_quorum if audit.witness_quorum is not None else len(witnesses)
    if quorum > len(witnesses):
        raise WitnessConfigInvalid(
            f"a quorum of {quorum} needs at least {quorum} witnesses", "TELLONCE_AUDIT_WITNESS_QUORUM"
        )
    refresh = audit.witness_refresh_seconds
    gate = GATE_REFRESH_SECONDS
    if audit.witness_grace_seconds is not None:
        refresh = min(refresh, audit.witness_grace_seconds / 3)
        gate = min(gate, audit.witness_grace_seconds / 10)
    return WitnessConfig(
        witnesses=witnesses,
        quorum=quorum,
        grace_seconds=audit.witness_grace_seconds if witnesses else None,
        refresh_seconds=refresh,
        timeout_seconds=audit.witness_timeout_seconds,
        poll_seconds=audit.witness_poll_ms / 1000,
        gate_seconds=gate,
    )


def cosigned_note(note: str, lines: Mapping[str, str], witnesses: Sequence[str] | None = None) -> str:
    """The log's signed note with cosignature lines (witness name -> line) appended.

    With ``witnesses`` (names), the line of each of them that has one, in that order, and
    no other. Without, every line, by witness name: an exported bundle keeps the lines of
    witnesses since removed, and a verifier ignores those whose keys it does not trust.
    """
    names = [n for n in witnesses if n in lines] if witnesses is not None else sorted(lines)
    return note + "".join(lines[name] for name in names)


async def witnessed_checkpoint_note(db: Executor, config: WitnessConfig) -> str:
    """The newest checkpoint at quorum of the configured witnesses as one note: the log's
    line, then the cosignature line of each configured witness whose key verifies it, in
    the configured order (a witness since removed has none).

    Without witnesses configured, the newest signed checkpoint as it is.
    """
    if not config.enabled:
        return await proofs.checkpoint_note(db)
    found = await cosignature_repository.newest_witnessed(db, config.verifiers, config.quorum)
    if found is None:
        raise NoCheckpoint("No checkpoint has reached the witness quorum yet.")
    checkpoint, _at = found
    stored = await cosignature_repository.cosignatures_for(db, checkpoint.id)
    body, _lines = split_note(checkpoint.note)
    verified = verified_cosignatures(body, stored, config.verifiers)
    lines = {name: cosignature.line for name, cosignature in verified.items()}
    return cosigned_note(checkpoint.note, lines, [w.name for w in config.witnesses])


async def _consistency(db: Executor, old: int, size: int) -> list[bytes]:
    if old in (0, size):
        return []
    found = await proofs.consistency(db, old, size)
    return [base64.b64decode(h) for h in found["hashes"]]


class WitnessAnswerInvalid(Exception):
    """A witness's answer that is too long or not UTF-8 text."""


@dataclass
class _WitnessHealth:
    """How one witness has fared: the failures in a row since it last cosigned, and when
    (the submitter's clock) it may be asked again."""

    failures: int = 0
    retry_at: float = 0.0
    # The log message (its template, not its arguments) of the last failure.
    reason: str = ""


class WitnessSubmitter:
    """Gets the newest checkpoint cosigned by the quorum; one round per ``run_once``."""

    def __init__(
        self,
        engine: AsyncEngine,
        config: WitnessConfig,
        http: httpx.AsyncClient | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.engine = engine
        self.config = config
        self.clock = clock
        self._http = http
        self._own_http = http is None
        # Witness name -> the size it last cosigned for this log, as far as we know.
        self.known_sizes: dict[str, int] = {}
        # Witness name -> its failures in a row and when it may be asked again.
        self._health: dict[str, _WitnessHealth] = {}
        # Proof reads lost to the database, which are no witness's doing.
        self._proof_reads = FailureLog(logger, "witnessing proof reads")
        # The witnesses the last round left owing a cosignature on the newest checkpoint
        # that is not at quorum (None after any other round): ``_next_round_in`` reads it.
        self._owed: list[str] | None = None
        # Exchanges a round left running when a newer checkpoint was signed (``run_once``),
        # by witness name: each keeps its cosignature when it comes (``_keep_late``), and
        # its witness is not asked again until it has ended.
        self._in_flight: dict[str, asyncio.Task[None]] = {}
        # Set when such an exchange ends, so that ``run`` asks that witness about the
        # newest checkpoint then, not after a pause.
        self._settled = asyncio.Event()
        self._late_stores = FailureLog(logger, "witnessing late cosignatures")

    async def close(self) -> None:
        """End the exchanges left running (``_in_flight``), then the HTTP client if it is ours."""
        left = list(self._in_flight.values())
        for task in left:
            task.cancel()
        await asyncio.gather(*left, return_exceptions=True)
        if self._own_http and self._http is not None:
            await self._http.aclose()
            self._http = None

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=self.config.timeout_seconds)
        return self._http

    async def run_once(self, newer: asyncio.Event | None = None) -> bool:
        """Submit the newest checkpoint where needed; True if it is at quorum afterwards.

        The round waits for every witness it asked, unless ``newer`` (the sequencer's
        "checkpoint signed") is set first and the checkpoint is at quorum (or the witnesses
        still answering are too few to bring it there): then the exchanges still running
        are left to finish on their own (``_in_flight``), so that a witness that hangs until
        the timeout keeps no other witness from being asked about the newer checkpoint.
        Before the quorum has answered, the round waits for it, newer checkpoint or not: a
        checkpoint left behind is never marked witnessed (``_keep_late``)."""
        self._owed = None
        async with self.engine.connect() as conn:
            newest = await cosignature_repository.newest_checkpoint(conn)
            if newest is None:
                return False
            have = await cosignature_repository.cosignatures_for(conn, newest.id)
            witnessed_at = await cosignature_repository.witnessed_at(conn, newest.id)
            # Only configured witnesses count, each by a stored line its key verifies now:
            # cosignatures stored from a witness since removed from TELLONCE_AUDIT_WITNESSES
            # stay in the bundle but are no longer trusted. A checkpoint marked witnessed
            # under an earlier configuration that this one's quorum has not cosigned is
            # witnessed again, now.
            counted = set(verified_cosignatures(split_note(newest.note)[0], have, self.config.verifiers))
            if witnessed_at is not None and len(counted) < self.config.quorum:
                witnessed_at = None
            for witness in self.config.witnesses:
                if witness.name not in self.known_sizes:
                    size = await cosignature_repository.last_cosigned_size(conn, witness.name)
                    self.known_sizes[witness.name] = size or 0
            if witnessed_at is not None:
                if (utcnow() - witnessed_at).total_seconds() < self.config.refresh_seconds:
                    return True
                targets = list(self.config.witnesses)  # re-witness an idle log
            else:
                targets = [w for w in self.config.witnesses if w.name not in counted]
            owed = [w.name for w in targets]
            # A witness that failed lately waits its turn (``_failed``), and one still busy
            # with an earlier round's exchange waits for it to end: the others are asked now.
            now = self.clock()
            targets = [
                w
                for w in targets
                if w.name not in self._in_flight
                and (w.name not in self._health or self._health[w.name].retry_at <= now)
            ]
            # One proof per size the witnesses last cosigned (usually the same for all),
            # read on this connection before any witness is asked.
            proofs = {
                old: await _consistency(conn, old, newest.tree_size)
                for old in {self.known_sizes[w.name] for w in targets}
                if old <= newest.tree_size
            }
        # Stored, and the checkpoint marked witnessed, as soon as the quorum has answered: a
        # witness slow to answer (or to time out) holds back only its own cosignature.
        # A re-witnessed checkpoint counts only the cosignatures of this round.
        cosigned: set[str] = set() if witnessed_at is not None else set(counted)
        fresh: list[Cosignature] = []
        marked = len(cosigned) >= self.config.quorum  # by today's witnesses, on an earlier round
        if marked:
            await self._store(newest, fresh, witnessed=True)
        asked = {w.name: asyncio.create_task(self._cosign_or_none(w, newest, proofs)) for w in targets}
        pending = set(asked.values())
        newer_signed = asyncio.ensure_future(newer.wait()) if newer is not None else None
        moved_on = False  # a newer checkpoint was signed during the round
        try:
            while pending:
                waits = pending if newer_signed is None or moved_on else pending | {newer_signed}
                done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                for answer in [a for a in asked.values() if a in done and a in pending]:
                    pending.discard(answer)
                    found = answer.result()
                    if found is None:
                        continue
                    fresh.append(found)
                    cosigned.add(found.witness)
                    if not marked and len(cosigned) >= self.config.quorum:
                        await self._store(newest, fresh, witnessed=True)
                        fresh, marked = [], True
                moved_on = moved_on or newer_signed in done
                # Only once the quorum has answered, or can no longer: were the round to end
                # before, while a newer checkpoint is signed faster than the witnesses answer
                # (every second under steady writes), no checkpoint would reach the quorum.
                if moved_on and (marked or len(cosigned) + len(pending) < self.config.quorum):
                    break
        except BaseException:
            for answer in pending:
                answer.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            raise
        finally:
            if newer_signed is not None:
                newer_signed.cancel()
        for name, answer in asked.items():
            if answer in pending:
                self._in_flight[name] = asyncio.create_task(
                    self._keep_late(name, answer, newest), name=f"audit-witness-{name}"
                )
        await self._store(newest, fresh, witnessed=False)
        if marked or witnessed_at is not None:
            return True
        self._owed = [name for name in owed if name not in cosigned]
        return False

    async def _keep_late(
        self, name: str, answer: asyncio.Task[Cosignature | None], checkpoint: CheckpointRow
    ) -> None:
        """Keep the cosignature of an exchange its round left running (``run_once``) when it
        comes, on the checkpoint it was asked for; it marks nothing witnessed, as the rounds
        since have moved on to a newer checkpoint. Then its witness may be asked again."""
        try:
            found = await answer
            if found is not None:
                await self._store(checkpoint, [found], witnessed=False)
                self._late_stores.succeeded()
        except Exception as exc:
            self._late_stores.failed("keeping witness %s's late cosignature failed", exc, name)
        finally:
            del self._in_flight[name]
            self._settled.set()

    def _next_round_in(self) -> float:
        """Seconds until a round could ask a witness for the newest checkpoint, which is not
        at quorum: the poll interval, or longer while every witness still owing a
        cosignature waits out its pause after a failure (``_failed``), until the first of
        them is due, or is busy with an earlier round's exchange (``_in_flight``, whose end
        wakes ``run``). Such a round would only read the database (three queries) to ask
        no one."""
        poll = self.config.poll_seconds
        if not self._owed:
            return poll
        now = self.clock()
        waiting = [name for name in self._owed if name not in self._in_flight]
        if not waiting:
            return max(poll, self.config.max_retry_seconds)
        due = min(self._health[name].retry_at if name in self._health else now for name in waiting)
        return max(poll, due - now)

    async def _store(self, checkpoint: CheckpointRow, fresh: list[Cosignature], *, witnessed: bool) -> None:
        """Keep ``fresh`` cosignatures on ``checkpoint``, and mark it ``witnessed`` now."""
        if not fresh and not witnessed:
            return
        async with self.engine.begin() as conn:
            await cosignature_repository.store_cosignatures(conn, checkpoint.id, fresh)
            if witnessed:
                await cosignature_repository.mark_witnessed(conn, checkpoint, utcnow())

    async def _post(self, witness: WitnessEndpoint, body: bytes) -> tuple[int, str]:
        """(status, text) of ``witness``'s answer to an add-checkpoint request.

        The timeout bounds the whole exchange (``TimeoutError``), not each read: a witness
        dripping its answer a byte at a time would otherwise hold the round, and every other
        witness's cosignature with it. Only a 200's and a 409's text is read (other answers
        are refusals, whatever they say), at most ``MAX_WITNESS_ANSWER_BYTES`` of it; a longer
        one, or one that is not UTF-8 (as C2SP text is), is ``WitnessAnswerInvalid``.
        """
        received = bytearray()
        async with asyncio.timeout(self.config.timeout_seconds):
            request = self._client().stream("POST", f"{witness.url}/add-checkpoint", content=body)
            async with request as response:
                status = response.status_code
                if status in (200, 409):
                    async for chunk in response.aiter_bytes():
                        received += chunk
                        if len(received) > MAX_WITNESS_ANSWER_BYTES:
                            raise WitnessAnswerInvalid(f"an answer over {MAX_WITNESS_ANSWER_BYTES} bytes")
        try:
            return status, received.decode("utf-8")
        except UnicodeDecodeError:
            raise WitnessAnswerInvalid("an answer that is not UTF-8") from None

    async def _proof(self, old: int, size: int, known: dict[int, list[bytes]]) -> list[bytes]:
        """The consistency proof from ``old`` to ``size``: from ``known`` (read with the
        round's first queries) or, after a 409 named another size, read now."""
        if old not in known:
            async with self.engine.connect() as conn:
                known[old] = await _consistency(conn, old, size)
        return known[old]

    async def _cosign_or_none(
        self, witness: WitnessEndpoint, checkpoint: CheckpointRow, known: dict[int, list[bytes]]
    ) -> Cosignature | None:
        """``_cosign``, with anything unforeseen in one witness's exchange (an address the
        HTTP client cannot even try) logged and that witness left out: it must not cost
        the other witnesses the cosignatures they gave in the same round. A witness that
        cosigns after failing is said to be back, once."""
        try:
            found = await self._cosign(witness, checkpoint, known)
        except Exception as exc:
            if database_unavailable(exc):
                # Reading a proof after a 409 lost the database: not this witness's doing, so
                # no pause; it is asked again when a round can read.
                self._proof_reads.failed("asking witness %s for a cosignature failed", exc, witness.name)
                return None
            return self._failed(
                witness,
                logging.ERROR,
                "asking witness %s for a cosignature failed",
                witness.name,
                exc_info=True,
            )
        self._proof_reads.succeeded()
        if found is not None and witness.name in self._health:
            failures = self._health.pop(witness.name).failures
            logger.info("witness %s cosigns again, after %d failed attempts", witness.name, failures)
        return found

    def _failed(
        self, witness: WitnessEndpoint, level: int, message: str, *args: object, exc_info: bool = False
    ) -> Cosignature | None:
        """Note that ``witness`` failed, and when to ask it again: the poll interval after
        its first failure, then twice as long after each further one, up to
        ``config.max_retry_seconds``. The first failure is logged (``message`` at ``level``),
        and so is a failure for another reason than the one before (another ``message``: a
        witness that was unreachable now refuses); the ones that repeat the reason only at
        DEBUG: one line when a witness goes down, one when its reason changes, one when it
        is back (``_cosign_or_none``), never a line a poll. No cosignature: None, so a
        failing step can ``return self._failed(...)``."""
        health = self._health.setdefault(witness.name, _WitnessHealth())
        health.failures += 1
        pause = min(
            self.config.poll_seconds * 2 ** min(health.failures - 1, 64), self.config.max_retry_seconds
        )
        health.retry_at = self.clock() + pause
        if health.failures == 1:
            logger.log(
                level,
                message + "; asking it again with growing pauses, at most %g s apart, until it cosigns",
                *args,
                self.config.max_retry_seconds,
                exc_info=exc_info,
            )
        elif message != health.reason:
            logger.log(
                level,
                message + "; still asking it again, after %d failures",
                *args,
                health.failures,
                exc_info=exc_info,
            )
        else:
            logger.debug(message, *args, exc_info=exc_info)
        health.reason = message
        return None

    async def _cosign(
        self, witness: WitnessEndpoint, checkpoint: CheckpointRow, known: dict[int, list[bytes]]
    ) -> Cosignature | None:
        """One witness's cosignature on ``checkpoint``, re-syncing its size once from a 409."""
        for _attempt in range(2):
            old = self.known_sizes.get(witness.name, 0)
            if old > checkpoint.tree_size:
                # ``checkpoint`` is the log's newest, yet this witness has cosigned a larger
                # tree of this log: the log was rolled back (a restore from an older
                # backup) or another history was signed with its key.
                return self._failed(
                    witness,
                    logging.ERROR,
                    "witness %s has cosigned a tree of size %d, larger than the log's newest "
                    "checkpoint %d: the log was rolled back or forked",
                    witness.name,
                    old,
                    checkpoint.tree_size,
                )
            proof = await self._proof(old, checkpoint.tree_size, known)
            body = submission_body(old, proof, checkpoint.note)
            try:
                status, answer = await self._post(witness, body)
            except httpx.HTTPError as exc:
                return self._failed(witness, logging.WARNING, "witness %s unreachable: %s", witness.name, exc)
            except TimeoutError:
                return self._failed(
                    witness,
                    logging.WARNING,
                    "witness %s did not answer within %g s",
                    witness.name,
                    self.config.timeout_seconds,
                )
            except WitnessAnswerInvalid as exc:
                return self._failed(witness, logging.ERROR, "witness %s sent %s", witness.name, exc)
            if status == 409:
                latest = bounded_decimal(answer.strip(), MAX_TREE_SIZE)
                if latest is None:
                    return self._failed(
                        witness, logging.WARNING, "witness %s sent a 409 without a size", witness.name
                    )
                if latest == old:
                    # Same size, another root: the witness holds a different history.
                    return self._failed(
                        witness,
                        logging.ERROR,
                        "witness %s refuses checkpoint %d: it cosigned another tree of size %s",
                        witness.name,
                        checkpoint.tree_size,
                        latest,
                    )
                self.known_sizes[witness.name] = latest
                continue
            if status != 200:
                return self._failed(
                    witness,
                    logging.ERROR,
                    "witness %s refused checkpoint %d with %d",
                    witness.name,
                    checkpoint.tree_size,
                    status,
                )
            try:
                found = witness.verifier.find(split_note(checkpoint.note)[0], answer_lines(answer))
            except CosignatureError as exc:
                return self._failed(
                    witness, logging.ERROR, "witness %s returned a bad cosignature: %s", witness.name, exc
                )
            if found is None:
                return self._failed(
                    witness, logging.ERROR, "witness %s answered without its cosignature", witness.name
                )
            self.known_sizes[witness.name] = checkpoint.tree_size
            ahead = found.timestamp - time.time()
            if ahead > MAX_COSIGNATURE_FUTURE_SECONDS:
                return self._failed(
                    witness,
                    logging.ERROR,
                    "witness %s cosigned checkpoint %d with a timestamp %.0f s in the future; ignored",
                    witness.name,
                    checkpoint.tree_size,
                    ahead,
                )
            return found
        return self._failed(
            witness, logging.WARNING, "witness %s named another size it cosigned twice in a row", witness.name
        )

    async def run(self, stop: asyncio.Event, wake: asyncio.Event | None = None) -> None:
        """Round after round until ``stop``; ``wake`` (the sequencer's "checkpoint signed")
        starts the next round at once. While the newest checkpoint is at quorum there is
        nothing to poll for: the next round waits for ``wake`` or a quarter of the refresh
        period (to re-witness an idle log in time). Until then, a round every poll, which
        asks only the witnesses whose pause after a failure is over (``_failed``); while
        every witness owing a cosignature is in such a pause, the next round waits for
        ``wake`` or the first of them to be due (``_next_round_in``), so a new checkpoint is
        still taken to the healthy witnesses at once. Without ``wake`` a new checkpoint is
        only seen by a round, so there is one every poll.

        A round lost to the database (a restart, a failover) is one warning line a run of
        them (``FailureLog``); anything else unforeseen is logged with its traceback."""
        failures = FailureLog(logger, "witnessing")
        while not stop.is_set():
            if wake is not None:
                wake.clear()  # before the round: a checkpoint signed during it wakes the next
            self._settled.clear()
            witnessed = False
            try:
                witnessed = await self.run_once(wake)
                failures.succeeded()
            except Exception as exc:
                failures.failed("witnessing round failed", exc)
            waits = [asyncio.ensure_future(stop.wait())]
            if wake is None:
                timeout = self.config.poll_seconds
            else:
                waits.append(asyncio.ensure_future(wake.wait()))
                if not witnessed:
                    waits.append(asyncio.ensure_future(self._settled.wait()))
                timeout = self.config.refresh_seconds / 4 if witnessed else self._next_round_in()
            _done, pending = await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            for waiter in pending:
                waiter.cancel()


class WitnessGate:
    """Whether the log has been witnessed recently enough to release data.

    ``refresh`` reads the database (a poller calls it); ``check`` runs on every request
    and only compares clocks, so a request never waits for the database or a witness.
    """

    def __init__(self, config: WitnessConfig, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.clock = clock
        self.started = clock()
        self.witnessed_at: float | None = None
        self.first_checkpoint_at: float | None = None

    async def refresh(self, engine: AsyncEngine) -> None:
        async with engine.connect() as conn:
            witnessed = await cosignature_repository.newest_witnessed_time(
                conn, self.config.verifiers, self.config.quorum
            )
            first = (
                await cosignature_repository.first_checkpoint_time(conn)
                if witnessed is None and self.first_checkpoint_at is None
                else None
            )
        if witnessed is not None:
            self.witnessed_at = witnessed.timestamp()
        if first is not None:
            self.first_checkpoint_at = first.timestamp()

    def age(self) -> float | None:
        """Seconds since a checkpoint last reached the quorum (counted from start-up or the
        log's first checkpoint if none ever has); None while there is nothing to witness."""
        if self.witnessed_at is not None:
            reference = self.witnessed_at
        elif self.first_checkpoint_at is not None:
            reference = max(self.started, self.first_checkpoint_at)
        else:
            return None
        return max(0.0, self.clock() - reference)

    def stale_reason(self) -> str | None:
        grace = self.config.grace_seconds
        age = self.age()
        if grace is None or age is None or age <= grace:
            return None
        return (
            f"no audit checkpoint has been cosigned by {self.config.quorum} witness(es) for "
            f"{age:.0f} s, longer than the {grace:g} s grace period; no data is released"
        )

    def check(self) -> None:
        reason = self.stale_reason()
        if reason is not None:
            raise LogUnwitnessed(reason)

    async def run(self, engine: AsyncEngine, stop: asyncio.Event) -> None:
        failures = FailureLog(logger, "witnessing state")
        while not stop.is_set():
            try:
                await self.refresh(engine)
                failures.succeeded()
            except Exception as exc:
                failures.failed("reading the witnessing state failed", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.config.gate_seconds)


@contextlib.asynccontextmanager
async def witnessing_lifecycle(
    app: FastAPI,
    audit: AuditSettings,
    run_submitter: bool,
    submitter_engine: AsyncEngine | None,
    wake: asyncio.Event | None = None,
) -> AsyncIterator[None]:
    """The gate and its poller in every API process; the submitter where workers run."""
    config = witness_config(audit)
    app.state.witness_config = config
    if not config.enabled:
        yield
        return
    gate = WitnessGate(config)
    app.state.witness_gate = gate
    gauge = Gauge(
        "tellonce_audit_witnessed_checkpoint_age_seconds",
        "Seconds since an audit checkpoint last reached the witness quorum.",
        registry=app.state.metrics.registry,
    )
    gauge.set_function(lambda: gate.age() or 0.0)
    engine: AsyncEngine = app.state.database.engine
    await gate.refresh(engine)
    stop = asyncio.Event()
    tasks = [asyncio.create_task(gate.run(engine, stop), name="audit-witness-gate")]
    submitter: WitnessSubmitter | None = None
    if run_submitter:
        submitter = WitnessSubmitter(submitter_engine or engine, config)
        tasks.append(asyncio.create_task(submitter.run(stop, wake), name="audit-witness-submitter"))
    try:
        yield
    finally:
        stop.set()
        await asyncio.gather(*tasks)
        if submitter is not None:
            await submitter.close()
