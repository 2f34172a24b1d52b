"""The witness submitter against fake witnesses (httpx MockTransport): which cosignatures
it keeps, and when a checkpoint counts as witnessed, under the witnesses configured now."""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import logging
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable

import httpx
import pytest
from sqlalchemy import delete
from sqlalchemy.ext.asyncio import AsyncEngine

from service.audit import cosignatures as cosignature_repository
from service.audit.errors import NoCheckpoint
from service.audit.models import AuditWitnessedCheckpoint
from service.audit.witnessing import (
    WitnessConfig,
    WitnessEndpoint,
    WitnessGate,
    WitnessSubmitter,
    cosigned_note,
    witnessed_checkpoint_note,
)
from service.audit.writer import append_many_in_transaction
from service.db import create_engine
from service.witness.cosignature import CosignatureSigner, CosignatureVerifier, split_note
from service.witness.protocol import parse_submission
from tests.audit.conftest import poll
from tests.fixtures.audit import make_entry, make_sequencer, make_signer, sequence_all
from tests.fixtures.databases import create_scratch_database, drop_scratch_database, unreachable_engine

Clock = Callable[[], int]


@pytest.fixture
async def sequenced_engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    """A fresh committed database holding a few entries and a signed checkpoint over them."""
    url = await create_scratch_database(database_url)
    engine = create_engine(url)
    async with engine.begin() as conn:
        await append_many_in_transaction(conn, [make_entry() for _ in range(3)])
    await sequence_all(make_sequencer(engine, make_signer(), every=1))
    yield engine
    await engine.dispose()
    await drop_scratch_database(url)


class FakeWitnesses:
    """Witnesses at http://<name>/ that cosign whatever they are sent, each at the time its
    clock says."""

    def __init__(self, clocks: dict[str, Clock]) -> None:
        self.signers = {name: CosignatureSigner.generate(name) for name in clocks}
        self.clocks = clocks

    def endpoint(self, name: str) -> WitnessEndpoint:
        verifier = CosignatureVerifier.parse(self.signers[name].verifier_key())
        return WitnessEndpoint(f"http://{name}", verifier)

    def handler(self, request: httpx.Request) -> httpx.Response:
        name = request.url.host
        submission = parse_submission(request.content)
        body, _lines = split_note(submission.note)
        return httpx.Response(200, text=self.signers[name].cosign(body, self.clocks[name]()))


def _config(witnesses: FakeWitnesses, names: list[str], quorum: int) -> WitnessConfig:
    return WitnessConfig(
        witnesses=tuple(witnesses.endpoint(n) for n in names),
        quorum=quorum,
        grace_seconds=None,
        refresh_seconds=3600,
        timeout_seconds=5,
        poll_seconds=0.02,
    )


def _now() -> int:
    return int(time.time())


async def _round(engine: AsyncEngine, witnesses: FakeWitnesses, config: WitnessConfig) -> bool:
    async with httpx.AsyncClient(transport=httpx.MockTransport(witnesses.handler)) as http:
        return await WitnessSubmitter(engine, config, http).run_once()


async def _stored(engine: AsyncEngine) -> dict[str, str]:
    async with engine.connect() as conn:
        newest = await cosignature_repository.newest_checkpoint(conn)
        assert newest is not None
        return await cosignature_repository.cosignatures_for(conn, newest.id)


class TestFutureCosignatures:
    @pytest.mark.parametrize(
        "ahead",
        [
            pytest.param(lambda: 2**40, id="past-year-9999"),
            pytest.param(lambda: _now() + 3600, id="an-hour-ahead"),
        ],
    )
    async def test_are_ignored_and_the_others_still_reach_the_quorum(
        self, sequenced_engine: AsyncEngine, ahead: Clock
    ) -> None:
        witnesses = FakeWitnesses({"good-a.example": _now, "good-b.example": _now, "skewed.example": ahead})
        config = _config(witnesses, ["good-a.example", "skewed.example", "good-b.example"], quorum=2)
        assert await _round(sequenced_engine, witnesses, config)
        assert set(await _stored(sequenced_engine)) == {"good-a.example", "good-b.example"}

    async def test_a_little_clock_skew_is_accepted(self, sequenced_engine: AsyncEngine) -> None:
        witnesses = FakeWitnesses({"ahead.example": lambda: _now() + 30})
        assert await _round(sequenced_engine, witnesses, _config(witnesses, ["ahead.example"], quorum=1))
        assert set(await _stored(sequenced_engine)) == {"ahead.example"}


class TestQuorum:
    async def test_counts_only_configured_witnesses(self, sequenced_engine: AsyncEngine) -> None:
        witnesses = FakeWitnesses({"removed.example": _now, "kept.example": _now, "down.example": _now})
        # A witness cosigns, then is removed from the configuration.
        assert await _round(sequenced_engine, witnesses, _config(witnesses, ["removed.example"], quorum=1))
        async with sequenced_engine.begin() as conn:
            newest = await cosignature_repository.newest_checkpoint(conn)
            assert newest is not None
            # Forget the quorum it made, so the next round decides afresh.
            await conn.execute(
                delete(AuditWitnessedCheckpoint).where(AuditWitnessedCheckpoint.checkpoint_id == newest.id)
            )

        def down(request: httpx.Request) -> httpx.Response:
            if request.url.host == "down.example":
                return httpx.Response(503)
            return witnesses.handler(request)

        # Now two others are configured with a quorum of 2, and only one answers: the
        # removed witness's stored cosignature must not make up the second.
        config = _config(witnesses, ["kept.example", "down.example"], quorum=2)
        async with httpx.AsyncClient(transport=httpx.MockTransport(down)) as http:
            assert not await WitnessSubmitter(sequenced_engine, config, http).run_once()
        async with sequenced_engine.connect() as conn:
            newest = await cosignature_repository.newest_checkpoint(conn)
            assert newest is not None
            assert await cosignature_repository.witnessed_at(conn, newest.id) is None
        assert set(await _stored(sequenced_engine)) == {"removed.example", "kept.example"}


class TestMisbehavingWitnesses:
    @pytest.mark.parametrize("size", ["9" * 5000, str(2**64), "007"])
    async def test_a_409_without_a_readable_size_is_passed_over(
        self, sequenced_engine: AsyncEngine, size: str
    ) -> None:
        """A 409 whose body is no tree size (here digits ``int`` refuses, a size beyond 63
        bits, leading zeroes) costs that witness its turn; the others still reach the quorum."""
        witnesses = FakeWitnesses({"good.example": _now, "odd.example": _now})

        def odd(request: httpx.Request) -> httpx.Response:
            if request.url.host == "odd.example":
                return httpx.Response(409, text=f"{size}\n", headers={"Content-Type": "text/x.tlog.size"})
            return witnesses.handler(request)

        config = _config(witnesses, ["good.example", "odd.example"], quorum=1)
        async with httpx.AsyncClient(transport=httpx.MockTransport(odd)) as http:
            assert await WitnessSubmitter(sequenced_engine, config, http).run_once()
        assert set(await _stored(sequenced_engine)) == {"good.example"}


async def _served(engine: AsyncEngine, config: WitnessConfig) -> list[str]:
    """The key names on the note ``GET /v1/audit/checkpoint`` serves under ``config``."""
    async with engine.connect() as conn:
        note = await witnessed_checkpoint_note(conn, config)
    return [line.split(" ")[1] for line in split_note(note)[1]]


async def _gate_time(engine: AsyncEngine, config: WitnessConfig) -> float | None:
    gate = WitnessGate(config)
    await gate.refresh(engine)
    return gate.witnessed_at


class TestConfigurationChange:
    """The witnessed table says when a checkpoint reached the quorum of the witnesses
    configured then; "at quorum" is always judged against the witnesses configured now."""

    async def test_the_served_note_carries_only_the_configured_witnesses_lines(
        self, sequenced_engine: AsyncEngine
    ) -> None:
        witnesses = FakeWitnesses({"a.example": _now, "b.example": _now, "c.example": _now})
        before = _config(witnesses, ["a.example", "b.example"], 2)
        assert await _round(sequenced_engine, witnesses, before)
        assert (await _served(sequenced_engine, before))[1:] == ["a.example", "b.example"]
        # a.example is removed: b.example alone is the quorum of 1, and the note is its line only.
        now = _config(witnesses, ["c.example", "b.example"], 1)
        log_name, *cosigners = await _served(sequenced_engine, now)
        assert cosigners == ["b.example"]
        # The export keeps every stored line: the bundle records what was cosigned.
        async with sequenced_engine.connect() as conn:
            newest = await cosignature_repository.newest_checkpoint(conn)
            assert newest is not None
            stored = await cosignature_repository.cosignatures_for(conn, newest.id)
        exported = cosigned_note(newest.note, stored)
        names = [line.split(" ")[1] for line in split_note(exported)[1]]
        assert names == [log_name, "a.example", "b.example"]

    async def test_a_checkpoint_witnessed_under_another_configuration_is_not_at_quorum(
        self, sequenced_engine: AsyncEngine
    ) -> None:
        witnesses = FakeWitnesses({"a.example": _now, "c.example": _now, "d.example": _now})
        before = _config(witnesses, ["a.example"], 1)
        assert await _round(sequenced_engine, witnesses, before)
        assert await _gate_time(sequenced_engine, before) is not None
        now = _config(witnesses, ["c.example", "d.example"], 2)
        async with sequenced_engine.connect() as conn:
            assert await cosignature_repository.newest_witnessed(conn, now.verifiers, now.quorum) is None
            assert await cosignature_repository.newest_witnessed_time(conn, now.verifiers, now.quorum) is None
            # As recorded, for those that ask without a configuration.
            assert await cosignature_repository.newest_witnessed(conn) is not None
            with pytest.raises(NoCheckpoint):
                await witnessed_checkpoint_note(conn, now)
        # The fail-closed timer does not count the old quorum either.
        assert await _gate_time(sequenced_engine, now) is None

    async def test_a_witness_with_a_new_key_under_its_old_name_does_not_count(
        self, sequenced_engine: AsyncEngine
    ) -> None:
        old = FakeWitnesses({"a.example": _now})
        assert await _round(sequenced_engine, old, _config(old, ["a.example"], 1))
        rekeyed = FakeWitnesses({"a.example": _now})
        now = _config(rekeyed, ["a.example"], 1)
        async with sequenced_engine.connect() as conn:
            assert await cosignature_repository.newest_witnessed(conn, now.verifiers, 1) is None
        assert await _gate_time(sequenced_engine, now) is None
        # Its cosignature with the new key is asked for at once, and is what the note carries.
        assert await _round(sequenced_engine, rekeyed, now)
        async with sequenced_engine.connect() as conn:
            note = await witnessed_checkpoint_note(conn, now)
        assert now.witnesses[0].verifier.find(*split_note(note)) is not None
        assert await _gate_time(sequenced_engine, now) is not None

    async def test_the_submitter_earns_the_quorum_of_the_new_configuration_at_once(
        self, sequenced_engine: AsyncEngine
    ) -> None:
        witnesses = FakeWitnesses({"a.example": _now, "b.example": _now, "c.example": _now})
        assert await _round(sequenced_engine, witnesses, _config(witnesses, ["a.example"], 1))
        # The mark is fresh (the refresh period is an hour), but not by these witnesses.
        now = _config(witnesses, ["b.example", "c.example"], 2)
        assert await _round(sequenced_engine, witnesses, now)
        assert set(await _stored(sequenced_engine)) == {"a.example", "b.example", "c.example"}
        assert (await _served(sequenced_engine, now))[1:] == ["b.example", "c.example"]
        assert await _gate_time(sequenced_engine, now) is not None

    async def test_the_submitter_does_not_claim_a_quorum_the_new_configuration_lacks(
        self, sequenced_engine: AsyncEngine
    ) -> None:
        witnesses = FakeWitnesses({"a.example": _now, "b.example": _now, "c.example": _now})
        assert await _round(sequenced_engine, witnesses, _config(witnesses, ["a.example"], 1))

        def c_down(request: httpx.Request) -> httpx.Response:
            if request.url.host == "c.example":
                return httpx.Response(503)
            return witnesses.handler(request)

        now = _config(witnesses, ["b.example", "c.example"], 2)
        async with httpx.AsyncClient(transport=httpx.MockTransport(c_down)) as http:
            assert not await WitnessSubmitter(sequenced_engine, now, http).run_once()
        async with sequenced_engine.connect() as conn:
            with pytest.raises(NoCheckpoint):
                await witnessed_checkpoint_note(conn, now)


class TestRollback:
    async def test_a_witness_ahead_of_the_newest_checkpoint_is_logged_as_a_rollback(
        self, sequenced_engine: AsyncEngine, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A witness that has cosigned a larger tree of this log than its newest checkpoint
        (the database restored from an older backup): not cosigned, and said loudly."""
        witnesses = FakeWitnesses({"ahead.example": _now})

        def ahead(request: httpx.Request) -> httpx.Response:
            return httpx.Response(409, text="1000\n", headers={"Content-Type": "text/x.tlog.size"})

        config = _config(witnesses, ["ahead.example"], quorum=1)
        async with httpx.AsyncClient(transport=httpx.MockTransport(ahead)) as http:
            with caplog.at_level(logging.ERROR, logger="tellonce.audit.witnessing"):
                assert not await WitnessSubmitter(sequenced_engine, config, http).run_once()
        assert await _stored(sequenced_engine) == {}
        [record] = [r for r in caplog.records if "rolled back" in r.getMessage()]
        assert record.levelno == logging.ERROR
        assert "ahead.example has cosigned a tree of size 1000" in record.getMessage()


class CountingTransport(httpx.AsyncBaseTransport):
    """Real HTTP, with the requests sent to each port counted (a refused connection too)."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.attempts: Counter[int] = Counter()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.attempts[request.url.port or 0] += 1
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


class LoopbackWitness:
    """A witness on a loopback port of its own that cosigns whatever it is sent once
    ``recover`` is called. Until then it is down: its port refuses connections (bound, not
    listening, so no other process can take it meanwhile), or it answers 503."""

    def __init__(self, name: str, outage: str) -> None:
        self.signer = CosignatureSigner.generate(name)
        self.outage = outage
        self.cosigning = outage == "none"
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port: int = self.sock.getsockname()[1]
        self.server: asyncio.Server | None = None

    @property
    def endpoint(self) -> WitnessEndpoint:
        verifier = CosignatureVerifier.parse(self.signer.verifier_key())
        return WitnessEndpoint(f"http://127.0.0.1:{self.port}", verifier)

    async def start(self) -> None:
        if self.outage != "refused":
            await self._listen()

    async def recover(self) -> None:
        self.cosigning = True
        if self.server is None:
            await self._listen()

    async def _listen(self) -> None:
        self.sock.listen()
        self.server = await asyncio.start_server(self._answer, sock=self.sock)

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
        self.sock.close()

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                (
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                ),
                0,
            )
            body = await reader.readexactly(length)
            status, text = b"503 Service Unavailable", b""
            if self.cosigning:
                note_body, _lines = split_note(parse_submission(body).note)
                status, text = b"200 OK", self.signer.cosign(note_body, _now()).encode()
            reply = b"HTTP/1.1 %s\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n" % (status, len(text))
            writer.write(reply + b"Connection: close\r\n\r\n" + text)
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


def most_attempts(elapsed: float, poll: float, cap: float) -> int:
    """How many times a witness failing all along may be asked in ``elapsed`` seconds at most:
    at once, then after pauses from ``poll`` doubling up to ``cap``; one more for slack."""
    attempts, at, pause = 1, 0.0, poll
    while at + pause <= elapsed:
        at += pause
        attempts += 1
        pause = min(pause * 2, cap)
    return attempts + 1


async def _witnessed(engine: AsyncEngine) -> bool:
    async with engine.connect() as conn:
        newest = await cosignature_repository.newest_checkpoint(conn)
        assert newest is not None
        return await cosignature_repository.witnessed_at(conn, newest.id) is not None


def _witness_lines(caplog: pytest.LogCaptureFixture, name: str) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name == "tellonce.audit.witnessing"
        and r.levelno >= logging.INFO
        and f" {name} " in r.getMessage()
    ]


class TestAWitnessThatIsDown:
    """Asked again after growing pauses, not every poll; the others are asked at once; it is
    asked again soon after it is back; one log line when it goes down and one when it is back."""

    POLL = 0.005
    CAP = 2.0
    DOWN_FOR = 3.0

    @pytest.mark.parametrize("outage", ["refused", "503"])
    async def test_is_asked_less_and_less_often_and_again_once_back(
        self, sequenced_engine: AsyncEngine, outage: str, caplog: pytest.LogCaptureFixture
    ) -> None:
        healthy, flaky = LoopbackWitness("healthy.example", "none"), LoopbackWitness("flaky.example", outage)
        # Both must cosign: the flaky witness is asked round after round until it does.
        config = WitnessConfig(
            witnesses=(healthy.endpoint, flaky.endpoint),
            quorum=2,
            grace_seconds=None,
            refresh_seconds=self.CAP,
            timeout_seconds=10,
            poll_seconds=self.POLL,
        )
        assert config.max_retry_seconds == self.CAP
        transport = CountingTransport()
        stop, wake = asyncio.Event(), asyncio.Event()
        sequencer = make_sequencer(sequenced_engine, make_signer(), every=1)
        caplog.set_level(logging.INFO, logger="tellonce.audit.witnessing")
        await healthy.start()
        await flaky.start()
        try:
            async with httpx.AsyncClient(transport=transport) as http:
                submitter = WitnessSubmitter(sequenced_engine, config, http)
                task = asyncio.create_task(submitter.run(stop, wake))
                try:
                    started = time.monotonic()
                    await poll(lambda: _has(sequenced_engine, "healthy.example"))
                    await asyncio.sleep(self.DOWN_FOR)  # the window the attempts are counted over
                    elapsed = time.monotonic() - started
                    down_attempts = transport.attempts[flaky.port]
                    # Every poll, that would be hundreds.
                    assert 2 <= down_attempts <= most_attempts(elapsed, self.POLL, self.CAP), down_attempts
                    assert not await _witnessed(sequenced_engine)

                    # A new checkpoint: the healthy witness is asked for it at once.
                    async with sequenced_engine.begin() as conn:
                        await append_many_in_transaction(conn, [make_entry()])
                    await sequence_all(sequencer)
                    wake.set()
                    await poll(lambda: _has(sequenced_engine, "healthy.example"))

                    # Back: asked again within the longest pause, and the quorum is reached.
                    await flaky.recover()
                    await poll(lambda: _witnessed(sequenced_engine), timeout=2 * self.CAP + 15)
                finally:
                    stop.set()
                    await task
        finally:
            await healthy.close()
            await flaky.close()
        assert set(await _stored(sequenced_engine)) == {"healthy.example", "flaky.example"}
        down, back = _witness_lines(caplog, "flaky.example")
        assert down.levelno >= logging.WARNING
        assert ("unreachable" if outage == "refused" else "with 503") in down.getMessage()
        assert "at most 2 s apart" in down.getMessage()
        assert back.levelno == logging.INFO
        assert "flaky.example cosigns again" in back.getMessage()
        assert _witness_lines(caplog, "healthy.example") == []


class TestASilentWitness:
    async def test_does_not_hold_back_the_quorum_of_the_others(self, sequenced_engine: AsyncEngine) -> None:
        """A witness that takes the request and never answers is given the whole timeout;
        the checkpoint is witnessed as soon as the others make the quorum, not after it."""
        held: list[asyncio.StreamWriter] = []

        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            held.append(writer)

        server = await asyncio.start_server(silent, "127.0.0.1", 0)
        silent_port = server.sockets[0].getsockname()[1]
        healthy = LoopbackWitness("healthy.example", "none")
        signer = CosignatureSigner.generate("silent.example")
        silent_witness = WitnessEndpoint(
            f"http://127.0.0.1:{silent_port}", CosignatureVerifier.parse(signer.verifier_key())
        )
        config = WitnessConfig(
            witnesses=(silent_witness, healthy.endpoint),
            quorum=1,
            grace_seconds=None,
            refresh_seconds=3600,
            timeout_seconds=120,  # far beyond the poll's deadline below
            poll_seconds=0.02,
        )
        await healthy.start()
        try:
            async with httpx.AsyncClient(timeout=config.timeout_seconds) as http:
                round_ = asyncio.create_task(WitnessSubmitter(sequenced_engine, config, http).run_once())
                try:
                    await poll(lambda: _witnessed(sequenced_engine))
                    assert not round_.done()  # still waiting for the silent witness
                    assert held
                finally:
                    for writer in held:
                        writer.close()  # the silent witness hangs up: the round ends
                    assert await round_
        finally:
            server.close()
            await server.wait_closed()
            await healthy.close()
        assert set(await _stored(sequenced_engine)) == {"healthy.example"}


class TestASlowWitnessAndANewerCheckpoint:
    async def test_the_others_are_asked_about_it_at_once_and_the_late_cosignature_is_kept(
        self, sequenced_engine: AsyncEngine
    ) -> None:
        """A newer checkpoint signed while a witness still holds the round's exchange: the
        round ends, the other witness is asked about the newer one at once, the slow
        witness is not asked again while its exchange runs, and its answer, when it comes,
        is kept on the checkpoint it was asked about. Then it is asked again."""
        witnesses = FakeWitnesses({"quick.example": _now, "slow.example": _now})
        release = asyncio.Event()
        slow_asked: list[int] = []

        async def answer(request: httpx.Request) -> httpx.Response:
            if request.url.host == "slow.example":
                slow_asked.append(parse_submission(request.content).old_size)
                await release.wait()
            return witnesses.handler(request)

        config = WitnessConfig(
            witnesses=(witnesses.endpoint("quick.example"), witnesses.endpoint("slow.example")),
            quorum=1,
            grace_seconds=None,
            refresh_seconds=3600,
            timeout_seconds=120,  # far beyond the polls' deadlines below
            poll_seconds=0.02,
        )
        stop, wake = asyncio.Event(), asyncio.Event()
        sequencer = make_sequencer(sequenced_engine, make_signer(), every=1)
        async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as http:
            submitter = WitnessSubmitter(sequenced_engine, config, http)
            task = asyncio.create_task(submitter.run(stop, wake))
            try:
                await poll(lambda: _witnessed(sequenced_engine))
                async with sequenced_engine.connect() as conn:
                    first = await cosignature_repository.newest_checkpoint(conn)
                assert first is not None
                await poll(lambda: _asked(slow_asked))

                async with sequenced_engine.begin() as conn:
                    await append_many_in_transaction(conn, [make_entry()])
                await sequence_all(sequencer)
                wake.set()
                # Cosigned by the quick witness while the slow one still holds its exchange.
                await poll(lambda: _has(sequenced_engine, "quick.example"))
                async with sequenced_engine.connect() as conn:
                    second = await cosignature_repository.newest_checkpoint(conn)
                assert second is not None
                assert second.tree_size > first.tree_size
                assert await _witnessed(sequenced_engine)
                assert slow_asked == [0]

                release.set()
                await poll(lambda: _cosigned_by(sequenced_engine, first.id, "slow.example"))
                # Its exchange over, it is asked about the next checkpoint, from the size its
                # late answer cosigned.
                async with sequenced_engine.begin() as conn:
                    await append_many_in_transaction(conn, [make_entry()])
                await sequence_all(sequencer)
                wake.set()
                await poll(lambda: _has(sequenced_engine, "slow.example"))
            finally:
                stop.set()
                await task
                await submitter.close()
        assert slow_asked == [0, first.tree_size]

    async def test_closing_ends_an_exchange_left_running(self, sequenced_engine: AsyncEngine) -> None:
        witnesses = FakeWitnesses({"quick.example": _now, "slow.example": _now})
        held = asyncio.Event()

        async def answer(request: httpx.Request) -> httpx.Response:
            if request.url.host == "slow.example":
                held.set()
                await asyncio.Event().wait()  # never answers
            return witnesses.handler(request)

        config = _config(witnesses, ["quick.example", "slow.example"], quorum=1)
        newer = asyncio.Event()
        async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as http:
            submitter = WitnessSubmitter(sequenced_engine, config, http)
            round_ = asyncio.create_task(submitter.run_once(newer))
            await held.wait()
            await poll(lambda: _witnessed(sequenced_engine))
            newer.set()
            assert await round_
            (left,) = submitter._in_flight.values()
            await submitter.close()
            assert left.cancelled()
            assert submitter._in_flight == {}

    async def test_before_the_quorum_has_answered_the_round_waits_for_it(
        self, sequenced_engine: AsyncEngine
    ) -> None:
        """Both witnesses of a quorum of two answer only after a newer checkpoint is signed
        (as they would, slower than the checkpoints of steady writes): the round waits for
        them, and the checkpoint is witnessed. Had it ended at the newer checkpoint, their
        late cosignatures would mark nothing, and the next checkpoint would fare the same."""
        witnesses = FakeWitnesses({"a.example": _now, "b.example": _now})
        newer = asyncio.Event()
        asked: list[str] = []

        async def answer(request: httpx.Request) -> httpx.Response:
            asked.append(request.url.host)
            if len(asked) == 2:
                newer.set()
            await newer.wait()
            for _ in range(20):  # the round sees the newer checkpoint first
                await asyncio.sleep(0)
            return witnesses.handler(request)

        config = _config(witnesses, ["a.example", "b.example"], quorum=2)
        async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as http:
            submitter = WitnessSubmitter(sequenced_engine, config, http)
            try:
                assert await submitter.run_once(newer)
            finally:
                await submitter.close()
            assert submitter._in_flight == {}
        assert await _witnessed(sequenced_engine)
        assert set(await _stored(sequenced_engine)) == {"a.example", "b.example"}

    async def test_one_that_cannot_bring_the_quorum_is_left_running(
        self, sequenced_engine: AsyncEngine
    ) -> None:
        """A quorum of two, one witness refusing, the other hanging: a newer checkpoint ends
        the round, as waiting for the hanging one could not bring this checkpoint to quorum."""
        witnesses = FakeWitnesses({"refusing.example": _now, "hung.example": _now})
        held = asyncio.Event()

        async def answer(request: httpx.Request) -> httpx.Response:
            if request.url.host == "refusing.example":
                return httpx.Response(503)
            held.set()
            await asyncio.Event().wait()  # never answers
            raise AssertionError("unreachable")

        config = _config(witnesses, ["refusing.example", "hung.example"], quorum=2)
        newer = asyncio.Event()
        async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as http:
            submitter = WitnessSubmitter(sequenced_engine, config, http)
            try:
                round_ = asyncio.create_task(submitter.run_once(newer))
                await held.wait()
                newer.set()
                assert not await round_
                assert list(submitter._in_flight) == ["hung.example"]
            finally:
                await submitter.close()


async def _asked(asked: list[int]) -> bool:
    return bool(asked)


async def _cosigned_by(engine: AsyncEngine, checkpoint_id: int, name: str) -> bool:
    async with engine.connect() as conn:
        return name in await cosignature_repository.cosignatures_for(conn, checkpoint_id)


async def _has(engine: AsyncEngine, name: str) -> bool:
    return name in await _stored(engine)


class TestRetrySchedule:
    """On the submitter's own clock, so the pauses are exact: the poll interval doubled after
    each failure, up to the cap, and back to the poll interval after a success."""

    async def test_pauses_double_to_the_cap_and_reset_on_success(
        self, sequenced_engine: AsyncEngine, caplog: pytest.LogCaptureFixture
    ) -> None:
        witnesses = FakeWitnesses({"steady.example": _now, "flaky.example": _now})
        asked: list[float] = []
        now = [0.0]
        failing = True

        def answer(request: httpx.Request) -> httpx.Response:
            if request.url.host == "flaky.example":
                asked.append(now[0])
                if failing:
                    return httpx.Response(503)
            return witnesses.handler(request)

        config = WitnessConfig(
            witnesses=(witnesses.endpoint("steady.example"), witnesses.endpoint("flaky.example")),
            quorum=2,
            grace_seconds=None,
            refresh_seconds=3600,
            timeout_seconds=5,
            poll_seconds=1,
        )
        assert config.max_retry_seconds == 30
        caplog.set_level(logging.DEBUG, logger="tellonce.audit.witnessing")
        async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as http:
            submitter = WitnessSubmitter(sequenced_engine, config, http, clock=lambda: now[0])
            # A round every tenth of a second for 200 s: the flaky witness's turns only.
            for tick in range(2000):
                now[0] = tick / 10
                await submitter.run_once()
            assert asked == [0, 1, 3, 7, 15, 31, 61, 91, 121, 151, 181]
            failing = False
            now[0] = 211
            assert await submitter.run_once()
            assert len(asked) == 12
            # A new checkpoint it fails on: asked again after the poll interval, not the cap.
            async with sequenced_engine.begin() as conn:
                await append_many_in_transaction(conn, [make_entry()])
            await sequence_all(make_sequencer(sequenced_engine, make_signer(), every=1))
            failing = True
            for tick in range(2120, 2140):
                now[0] = tick / 10
                await submitter.run_once()
        assert asked[12:] == [212, 213]
        lines = [(r.levelno, r.getMessage()) for r in _witness_lines(caplog, "flaky.example")]
        assert [level for level, _message in lines] == [logging.ERROR, logging.INFO, logging.ERROR]
        assert "refused checkpoint 3 with 503; asking it again" in lines[0][1]
        assert lines[1][1] == "witness flaky.example cosigns again, after 11 failed attempts"
        debug = [
            r for r in caplog.records if r.levelno == logging.DEBUG and "flaky.example" in r.getMessage()
        ]
        assert len(debug) == 10 + 1


class TestAChangedReason:
    async def test_is_logged_once_and_its_repeats_only_at_debug(
        self, sequenced_engine: AsyncEngine, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Unreachable twice, then refusing with 503 three times: one line when it goes down,
        one when the reason changes, the repeats at DEBUG only."""
        witnesses = FakeWitnesses({"flaky.example": _now})
        answers = iter(["down", "down", "503", "503", "503"])

        def answer(request: httpx.Request) -> httpx.Response:
            if next(answers) == "down":
                raise httpx.ConnectError("connection refused", request=request)
            return httpx.Response(503)

        now = [0.0]
        caplog.set_level(logging.DEBUG, logger="tellonce.audit.witnessing")
        async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as http:
            config = _config(witnesses, ["flaky.example"], quorum=1)
            submitter = WitnessSubmitter(sequenced_engine, config, http, clock=lambda: now[0])
            for _ in range(5):
                now[0] += 3600  # past any pause: asked every round
                assert not await submitter.run_once()
        lines = [(r.levelno, r.getMessage()) for r in _witness_lines(caplog, "flaky.example")]
        assert [level for level, _message in lines] == [logging.WARNING, logging.ERROR]
        assert "unreachable: connection refused; asking it again" in lines[0][1]
        assert lines[1][1].endswith("refused checkpoint 3 with 503; still asking it again, after 3 failures")
        debug = [
            r for r in caplog.records if r.levelno == logging.DEBUG and "flaky.example" in r.getMessage()
        ]
        assert len(debug) == 3


class TestMaxRetry:
    @pytest.mark.parametrize(
        ("refresh", "poll", "expected"),
        [(3600, 0.05, 30.0), (2.0, 0.05, 2.0), (0.01, 0.05, 0.05)],
    )
    def test_is_the_cap_or_the_refresh_period_if_shorter(
        self, refresh: float, poll: float, expected: float
    ) -> None:
        config = WitnessConfig(
            witnesses=(),
            quorum=0,
            grace_seconds=None,
            refresh_seconds=refresh,
            timeout_seconds=5,
            poll_seconds=poll,
        )
        assert config.max_retry_seconds == expected


class CountingSubmitter(WitnessSubmitter):
    """Counts its rounds (each reads the database)."""

    rounds = 0

    async def run_once(self, newer: asyncio.Event | None = None) -> bool:
        self.rounds += 1
        return await super().run_once(newer)


class TestWhileEveryOwedWitnessWaits:
    """A round while every witness owing a cosignature is in its pause after a failure would
    only read the database: the submitter sleeps until the first of them is due instead,
    and a new checkpoint still wakes it for the healthy witnesses at once."""

    POLL = 0.005
    CAP = 2.0
    WINDOW = 3.0

    @staticmethod
    def _down(witnesses: FakeWitnesses, asked: Counter[str]) -> Callable[[httpx.Request], httpx.Response]:
        def answer(request: httpx.Request) -> httpx.Response:
            asked[request.url.host] += 1
            if request.url.host == "down.example":
                return httpx.Response(503)
            return witnesses.handler(request)

        return answer

    @staticmethod
    def _healthy_and_down(witnesses: FakeWitnesses, refresh: float, poll: float) -> WitnessConfig:
        """Both must cosign, so the down one is owed a cosignature all along."""
        return WitnessConfig(
            witnesses=(witnesses.endpoint("healthy.example"), witnesses.endpoint("down.example")),
            quorum=2,
            grace_seconds=None,
            refresh_seconds=refresh,
            timeout_seconds=5,
            poll_seconds=poll,
        )

    async def test_it_reads_the_database_only_when_a_witness_is_due(
        self, sequenced_engine: AsyncEngine
    ) -> None:
        witnesses = FakeWitnesses({"healthy.example": _now, "down.example": _now})
        config = self._healthy_and_down(witnesses, refresh=self.CAP, poll=self.POLL)
        asked: Counter[str] = Counter()
        stop = asyncio.Event()
        async with httpx.AsyncClient(transport=httpx.MockTransport(self._down(witnesses, asked))) as http:
            submitter = CountingSubmitter(sequenced_engine, config, http)
            task = asyncio.create_task(submitter.run(stop, asyncio.Event()))
            try:
                started = time.monotonic()
                await poll(lambda: _has(sequenced_engine, "healthy.example"))
                await asyncio.sleep(self.WINDOW)  # the window the rounds are counted over
                elapsed = time.monotonic() - started
                rounds, attempts = submitter.rounds, asked["down.example"]
            finally:
                stop.set()
                await task
        most = most_attempts(elapsed, self.POLL, self.CAP)
        assert 2 <= attempts <= most, attempts
        # A round every poll would be hundreds: one per attempt, and one more for slack.
        assert rounds <= attempts + 2, (rounds, attempts)
        assert asked["healthy.example"] == 1

    async def test_a_new_checkpoint_is_taken_to_the_healthy_witness_at_once(
        self, sequenced_engine: AsyncEngine
    ) -> None:
        """The down witness's first pause is the poll interval, here far beyond the deadline."""
        witnesses = FakeWitnesses({"healthy.example": _now, "down.example": _now})
        config = self._healthy_and_down(witnesses, refresh=3600, poll=120)
        asked: Counter[str] = Counter()
        stop, wake = asyncio.Event(), asyncio.Event()
        async with httpx.AsyncClient(transport=httpx.MockTransport(self._down(witnesses, asked))) as http:
            submitter = CountingSubmitter(sequenced_engine, config, http)
            task = asyncio.create_task(submitter.run(stop, wake))
            try:
                await poll(lambda: _has(sequenced_engine, "healthy.example"))
                assert asked == {"healthy.example": 1, "down.example": 1}
                async with sequenced_engine.begin() as conn:
                    await append_many_in_transaction(conn, [make_entry()])
                await sequence_all(make_sequencer(sequenced_engine, make_signer(), every=1))
                wake.set()
                await poll(lambda: _has(sequenced_engine, "healthy.example"), timeout=30)
            finally:
                stop.set()
                await task
        assert asked == {"healthy.example": 2, "down.example": 1}


class TestALostDatabase:
    """A submitter's rounds, or the gate's refreshes, lost to the database (a restart, a
    failover) are one warning line a run of them (``FailureLog``: then a line a minute);
    anything else unforeseen keeps its traceback."""

    @staticmethod
    def _lines(caplog: pytest.LogCaptureFixture, start: str) -> list[logging.LogRecord]:
        return [r for r in caplog.records if r.getMessage().startswith(start)]

    async def _until_lines(self, caplog: pytest.LogCaptureFixture, start: str, count: int) -> None:
        async def enough() -> bool:
            return len(self._lines(caplog, start)) >= count

        await poll(enough)

    async def test_a_submitter_round_is_one_line(self, caplog: pytest.LogCaptureFixture) -> None:
        witnesses = FakeWitnesses({"a.example": _now})
        config = _config(witnesses, ["a.example"], quorum=1)
        caplog.set_level(logging.INFO, logger="tellonce.audit.witnessing")
        stop = asyncio.Event()
        async with (
            unreachable_engine() as engine,
            httpx.AsyncClient(transport=httpx.MockTransport(witnesses.handler)) as http,
        ):
            task = asyncio.create_task(WitnessSubmitter(engine, config, http).run(stop, asyncio.Event()))
            try:
                await self._until_lines(caplog, "witnessing round failed", 1)
                await asyncio.sleep(0.5)  # several more rounds (a poll is 50 ms), all failing
            finally:
                stop.set()
                await task
        records = [r for r in caplog.records if r.name == "tellonce.audit.witnessing"]
        assert len(records) == 1
        for record in records:
            assert record.levelno == logging.WARNING
            assert record.exc_info is None
            assert record.getMessage().startswith("witnessing round failed: database unavailable (")

    async def test_a_gate_refresh_is_one_line(self, caplog: pytest.LogCaptureFixture) -> None:
        witnesses = FakeWitnesses({"a.example": _now})
        config = dataclasses.replace(_config(witnesses, ["a.example"], quorum=1), gate_seconds=0.02)
        caplog.set_level(logging.INFO, logger="tellonce.audit.witnessing")
        stop = asyncio.Event()
        async with unreachable_engine() as engine:
            task = asyncio.create_task(WitnessGate(config).run(engine, stop))
            try:
                await self._until_lines(caplog, "reading the witnessing state failed", 1)
                await asyncio.sleep(0.3)  # several more refreshes (every 20 ms), all failing
            finally:
                stop.set()
                await task
        records = self._lines(caplog, "reading the witnessing state failed")
        assert len(records) == 1
        assert {(r.levelno, r.exc_info) for r in records} == {(logging.WARNING, None)}
        assert "database unavailable (" in records[0].getMessage()

    async def test_anything_else_keeps_its_traceback(
        self, sequenced_engine: AsyncEngine, caplog: pytest.LogCaptureFixture
    ) -> None:
        class Broken(WitnessSubmitter):
            async def run_once(self, newer: asyncio.Event | None = None) -> bool:
                raise RuntimeError("a bug")

        witnesses = FakeWitnesses({"a.example": _now})
        caplog.set_level(logging.INFO, logger="tellonce.audit.witnessing")
        stop = asyncio.Event()
        submitter = Broken(sequenced_engine, _config(witnesses, ["a.example"], quorum=1))
        task = asyncio.create_task(submitter.run(stop, asyncio.Event()))
        try:
            await self._until_lines(caplog, "witnessing round failed", 1)
        finally:
            stop.set()
            await task
            await submitter.close()
        record = self._lines(caplog, "witnessing round failed")[0]
        assert record.levelno == logging.ERROR
        assert record.exc_info is not None

    async def test_a_proof_read_lost_is_not_held_against_the_witness(
        self, sequenced_engine: AsyncEngine, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A 409 naming another size needs a proof read now; if the database is lost then,
        the witness did nothing wrong: one line, and it is asked again next round, not after
        a pause."""
        witnesses = FakeWitnesses({"a.example": _now})
        asked: list[str] = []

        def other_size(request: httpx.Request) -> httpx.Response:
            asked.append(request.url.host)
            return httpx.Response(409, text="1\n", headers={"Content-Type": "text/x.tlog.size"})

        async def lost(old: int, _size: int, known: dict[int, list[bytes]]) -> list[bytes]:
            if old in known:  # read with the round's first queries
                return known[old]
            raise ConnectionResetError(errno.ECONNRESET, "Connection reset by peer")

        caplog.set_level(logging.INFO, logger="tellonce.audit.witnessing")
        async with httpx.AsyncClient(transport=httpx.MockTransport(other_size)) as http:
            submitter = WitnessSubmitter(
                sequenced_engine, _config(witnesses, ["a.example"], quorum=1), http, clock=lambda: 0.0
            )
            monkeypatch.setattr(submitter, "_proof", lost)
            assert not await submitter.run_once()
            assert not await submitter.run_once()  # at the same instant: no pause was set
        assert asked == ["a.example", "a.example"]
        # (The second round's proof came with its first queries: the witness then refuses.)
        records = [r for r in caplog.records if r.name == "tellonce.audit.witnessing"]
        assert (records[0].levelno, records[0].exc_info) == (logging.WARNING, None)
        said = records[0].getMessage()
        assert said.startswith("asking witness a.example for a cosignature failed: database unavailable (")
        assert "ConnectionResetError" in said
