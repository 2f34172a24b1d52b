"""C2SP tlog-witness, tlog-cosignature/v1 and signed-note, read to the letter by an outside
implementer: requests are built and responses checked by the small log, note signer and
cosignature verifier below, written from the specification texts and sharing no code
with the service (only the witness under test and the submitter under test are tellonce's).

- signed-note: text ending in a newline, a blank line, signature lines ``— <name>
  base64(key id || signature)``; key id = SHA-256(name || 0x0A || type || key)[:4], type
  0x01 for a note's Ed25519 key and 0x04 for a cosignature key; no control character but
  newline; unknown keys ignored; a note with no verified signature by a known key refused.
- tlog-cosignature/v1: the signature is u64 big-endian timestamp || Ed25519 signature over
  ``cosignature/v1\\ntime <T>\\n`` || the checkpoint body.
- tlog-witness add-checkpoint: ``old <size>``, up to 63 base64 proof lines, an empty line,
  the checkpoint; 404 unknown origin, 403 no trusted signature, 400 old above size, 409
  ``text/x.tlog.size`` "<size>\\n" when old is stale or a same-size root differs, 422 bad
  proof (and a non-empty proof from old size 0), 200 with cosignature lines.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import httpx
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from sqlalchemy.ext.asyncio import AsyncEngine

from service.audit import cosignatures as cosignature_repository
from service.audit import tiles
from service.audit.checkpoint import CheckpointError
from service.audit.errors import TileNotFound
from service.audit.witnessing import (
    WitnessConfig,
    WitnessConfigInvalid,
    WitnessEndpoint,
    WitnessSubmitter,
    parse_witnesses,
)
from service.audit.writer import append_many_in_transaction
from service.db import create_engine
from service.witness.cosignature import CosignatureError, CosignatureSigner, CosignatureVerifier
from service.witness.server import create_witness_app
from service.witness.state import TrustedLog, WitnessState
from tests.fixtures import rfc9162
from tests.fixtures.audit import make_entry, make_sequencer, make_signer, sequence_all
from tests.fixtures.databases import create_scratch_database, drop_scratch_database
from tests.fixtures.rfc9162 import leaf_hash, mth, verify_consistency

DASH = "\u2014"
WITNESS_NAME = "witness.example/letter"
ORIGIN = "log.example/letter"


# --- signed notes and cosignatures, from C2SP ---------------------------------------------


def key_id(name: str, kind: int, public_key: bytes) -> bytes:
    return hashlib.sha256(name.encode() + b"\n" + bytes([kind]) + public_key).digest()[:4]


def raw_public(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


class Log:
    """A log: leaves, an Ed25519 note key of type 0x01, checkpoints and requests."""

    def __init__(self, origin: str = ORIGIN, key_name: str | None = None, size: int = 0) -> None:
        self.origin = origin
        self.key_name = key_name or origin
        self.key = Ed25519PrivateKey.generate()
        self.leaves: list[bytes] = []
        self.grow(size)

    def grow(self, count: int, tag: bytes = b"leaf") -> None:
        start = len(self.leaves)
        self.leaves += [leaf_hash(tag + b" %d" % (start + i)) for i in range(count)]

    def fork(self, index: int) -> Log:
        other = Log(self.origin, self.key_name)
        other.key = self.key
        other.leaves = list(self.leaves)
        other.leaves[index] = leaf_hash(b"another history")
        return other

    def vkey(self) -> str:
        public = raw_public(self.key)
        encoded = base64.b64encode(b"\x01" + public).decode()
        return f"{self.key_name}+{key_id(self.key_name, 1, public).hex()}+{encoded}"

    def body(self, size: int | None = None, extensions: tuple[str, ...] = ()) -> str:
        size = len(self.leaves) if size is None else size
        root = base64.b64encode(mth(self.leaves[:size])).decode()
        return f"{self.origin}\n{size}\n{root}\n" + "".join(f"{e}\n" for e in extensions)

    def signature_line(self, text: str, key: Ed25519PrivateKey | None = None, name: str | None = None) -> str:
        key = key or self.key
        name = name or self.key_name
        raw = key_id(name, 1, raw_public(key)) + key.sign(text.encode())
        return f"{DASH} {name} {base64.b64encode(raw).decode()}\n"

    def note(self, size: int | None = None) -> str:
        text = self.body(size)
        return text + "\n" + self.signature_line(text)

    def request(self, old: int, size: int | None = None, note: str | None = None) -> bytes:
        size = len(self.leaves) if size is None else size
        proof = rfc9162.proof(old, self.leaves[:size]) if old <= size else []
        lines = [f"old {old}\n", *(base64.b64encode(h).decode() + "\n" for h in proof)]
        return ("".join(lines) + "\n" + (note if note is not None else self.note(size))).encode()


def parse_vkey(vkey: str, kind: int) -> tuple[str, bytes, bytes]:
    name, id_hex, encoded = vkey.split("+", 2)
    material = base64.b64decode(encoded, validate=True)
    assert material[0] == kind
    assert len(material) == 33
    assert bytes.fromhex(id_hex) == key_id(name, kind, material[1:])
    return name, bytes.fromhex(id_hex), material[1:]


def cosignatures_in(response: str, vkey: str, body: str) -> list[int]:
    """The timestamps of the cosignatures by ``vkey`` in a 200 response body, each verified;
    the body must be signature lines only, each ending in a newline."""
    name, wanted_id, public = parse_vkey(vkey, 4)
    assert response.endswith("\n")
    found = []
    for line in response[:-1].split("\n"):
        assert line.startswith(f"{DASH} "), line
        line_name, encoded = line[2:].split(" ")
        raw = base64.b64decode(encoded, validate=True)
        if (line_name, raw[:4]) != (name, wanted_id):
            continue
        assert len(raw) == 4 + 8 + 64
        timestamp = int.from_bytes(raw[4:12], "big")
        assert timestamp <= 2**63 - 1
        message = b"cosignature/v1\n" + b"time %d\n" % timestamp + body.encode()
        Ed25519PublicKey.from_public_bytes(public).verify(raw[12:], message)
        found.append(timestamp)
    return found


def forged_cosignature(name: str, key: Ed25519PrivateKey, body: str, timestamp: int) -> str:
    message = b"cosignature/v1\n" + b"time %d\n" % timestamp + body.encode()
    raw = key_id(name, 4, raw_public(key)) + timestamp.to_bytes(8, "big") + key.sign(message)
    return f"{DASH} {name} {base64.b64encode(raw).decode()}\n"


# --- the witness under test ---------------------------------------------------------------


@pytest.fixture
def log() -> Log:
    return Log(size=13)


@pytest.fixture
def signer() -> CosignatureSigner:
    return CosignatureSigner.generate(WITNESS_NAME)


@pytest.fixture
def state(tmp_path: Path, signer: CosignatureSigner, log: Log) -> Iterator[WitnessState]:
    state = WitnessState(tmp_path / "witness.db", signer, [TrustedLog.parse(log.vkey())])
    yield state
    state.close()


@pytest.fixture
async def witness(state: WitnessState) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_witness_app(state))
    async with httpx.AsyncClient(transport=transport, base_url="http://witness.test") as client:
        yield client


async def post(witness: httpx.AsyncClient, body: bytes) -> httpx.Response:
    return await witness.post("/add-checkpoint", content=body)


def assert_cosigned(response: httpx.Response, signer: CosignatureSigner, body: str) -> int:
    assert response.status_code == 200, response.text
    stamps = cosignatures_in(response.text, signer.verifier_key(), body)
    assert len(stamps) == 1
    assert abs(stamps[0] - time.time()) < 60
    return stamps[0]


def assert_size_conflict(response: httpx.Response, size: int) -> None:
    assert response.status_code == 409
    assert response.headers["content-type"] == "text/x.tlog.size"
    assert response.content == b"%d\n" % size


class TestKeys:
    def test_witness_key_id_is_sha256_of_name_newline_0x04_key(self, signer: CosignatureSigner) -> None:
        name, wanted_id, public = parse_vkey(signer.verifier_key(), 4)
        assert name == WITNESS_NAME
        assert wanted_id == hashlib.sha256(WITNESS_NAME.encode() + b"\x0a\x04" + public).digest()[:4]
        # The same key as a note key (type 0x01) would have another id: domain separation.
        assert wanted_id != key_id(WITNESS_NAME, 1, public)

    def test_private_key_file_round_trips_to_the_same_vkey(self, signer: CosignatureSigner) -> None:
        text = signer.private_key_text()
        assert text.startswith(f"PRIVATE+KEY+{WITNESS_NAME}+{signer.key_id.hex()}+")
        again = CosignatureSigner.from_private_key_text(text)
        assert again.verifier_key() == signer.verifier_key()

    def test_log_vkey_written_here_is_accepted(self, log: Log) -> None:
        trusted = TrustedLog.parse(log.vkey())
        assert trusted.origin == ORIGIN

    @pytest.mark.parametrize("inserted", ["\t", "\n", "\x0b", "\x0c", "\r"])
    def test_a_log_key_id_with_whitespace_in_it_is_refused(self, log: Log, inserted: str) -> None:
        """A log's vkey from the witness's configuration: the key id is eight hex digits,
        not the same digits with whitespace among them (``bytes.fromhex`` read those)."""
        name, key_id, key = log.vkey().split("+", 2)
        with pytest.raises(CheckpointError, match="eight hex digits"):
            TrustedLog.parse(f"{name}+{key_id[:4]}{inserted}{key_id[4:]}+{key}")

    @pytest.mark.parametrize("key_id", ["{0} ", "{0}0", "{0:.7}", "{0:.4} {0:.4}"])
    def test_a_witness_key_id_not_of_eight_hex_digits_is_refused(
        self, signer: CosignatureSigner, key_id: str
    ) -> None:
        name, real_id, key = signer.verifier_key().split("+", 2)
        with pytest.raises(CosignatureError, match="eight hex digits"):
            CosignatureVerifier.parse(f"{name}+{key_id.format(real_id)}+{key}")


class TestCosignatureMessage:
    async def test_signed_message_is_header_time_then_body(
        self, witness: httpx.AsyncClient, log: Log, signer: CosignatureSigner
    ) -> None:
        body = log.body()
        response = await post(witness, log.request(0))
        stamp = assert_cosigned(response, signer, body)
        # Byte for byte: the line decodes to id || u64 time || signature over the message.
        line = response.text
        raw = base64.b64decode(line.split(" ")[2])
        public = parse_vkey(signer.verifier_key(), 4)[2]
        message = f"cosignature/v1\ntime {stamp}\n{body}".encode()
        Ed25519PublicKey.from_public_bytes(public).verify(raw[12:], message)
        with pytest.raises(InvalidSignature):  # not over the bare body (that is a note signature)
            Ed25519PublicKey.from_public_bytes(public).verify(raw[12:], body.encode())

    async def test_extension_lines_are_in_the_signed_message(
        self, witness: httpx.AsyncClient, log: Log, signer: CosignatureSigner
    ) -> None:
        body = log.body(extensions=("extension one", "ext two"))
        note = body + "\n" + log.signature_line(body)
        response = await post(witness, log.request(0, note=note))
        assert_cosigned(response, signer, body)


class TestStatusCodes:
    async def test_200_first_then_growth_then_same_checkpoint_again(
        self, witness: httpx.AsyncClient, log: Log, signer: CosignatureSigner
    ) -> None:
        assert_cosigned(await post(witness, log.request(0)), signer, log.body())
        for grow in (1, 2, 7, 100):
            old = len(log.leaves)
            log.grow(grow)
            assert_cosigned(await post(witness, log.request(old)), signer, log.body())
        size = len(log.leaves)
        assert_cosigned(await post(witness, log.request(size)), signer, log.body())

    async def test_404_unknown_origin(self, witness: httpx.AsyncClient) -> None:
        stranger = Log("other.example/log", size=3)
        assert (await post(witness, stranger.request(0))).status_code == 404

    async def test_403_only_untrusted_signatures(self, witness: httpx.AsyncClient, log: Log) -> None:
        # The trusted key's name with another key (so another id): an unknown key, ignored.
        body = log.body()
        impostor = log.signature_line(body, key=Ed25519PrivateKey.generate())
        response = await post(witness, log.request(0, note=body + "\n" + impostor))
        assert response.status_code == 403

    async def test_403_trusted_key_bad_signature(self, witness: httpx.AsyncClient, log: Log) -> None:
        body = log.body()
        good = log.signature_line(body)
        raw = bytearray(base64.b64decode(good.split(" ")[2]))
        raw[-1] ^= 1
        bad = f"{DASH} {log.key_name} {base64.b64encode(bytes(raw)).decode()}\n"
        assert (await post(witness, log.request(0, note=body + "\n" + bad))).status_code == 403

    async def test_400_old_above_checkpoint_size(self, witness: httpx.AsyncClient, log: Log) -> None:
        body = b"old 14\n\n" + log.note().encode()
        assert (await post(witness, body)).status_code == 400

    async def test_409_stale_old_size_names_the_latest(
        self, witness: httpx.AsyncClient, log: Log, signer: CosignatureSigner
    ) -> None:
        # Never cosigned: the latest size is zero.
        assert_size_conflict(await post(witness, log.request(5)), 0)
        assert_cosigned(await post(witness, log.request(0)), signer, log.body())
        log.grow(4)
        assert_size_conflict(await post(witness, log.request(0)), 13)
        assert_size_conflict(await post(witness, log.request(12)), 13)

    async def test_409_same_size_other_root(
        self, witness: httpx.AsyncClient, log: Log, signer: CosignatureSigner
    ) -> None:
        assert_cosigned(await post(witness, log.request(0)), signer, log.body())
        assert_size_conflict(await post(witness, log.fork(4).request(13)), 13)

    async def test_422_proof_that_does_not_verify(
        self, witness: httpx.AsyncClient, log: Log, signer: CosignatureSigner
    ) -> None:
        assert_cosigned(await post(witness, log.request(0)), signer, log.body())
        fork = log.fork(2)
        fork.grow(5)
        assert (await post(witness, fork.request(13))).status_code == 422
        # A proof of the right shape but one hash short, one too many, or from another size.
        log.grow(5)
        proof = rfc9162.proof(13, log.leaves)
        for hashes in (proof[:-1], [*proof, proof[0]], rfc9162.proof(12, log.leaves)):
            lines = "".join(base64.b64encode(h).decode() + "\n" for h in hashes)
            body = f"old 13\n{lines}\n{log.note()}".encode()
            assert (await post(witness, body)).status_code == 422

    async def test_422_proof_from_old_size_zero(self, witness: httpx.AsyncClient, log: Log) -> None:
        line = base64.b64encode(log.leaves[0]).decode()
        body = f"old 0\n{line}\n\n{log.note()}".encode()
        assert (await post(witness, body)).status_code == 422

    async def test_422_proof_from_old_size_zero_after_an_empty_checkpoint(
        self, witness: httpx.AsyncClient, signer: CosignatureSigner, log: Log
    ) -> None:
        empty = Log()
        empty.key = log.key
        assert_cosigned(await post(witness, empty.request(0)), signer, empty.body())
        line = base64.b64encode(log.leaves[0]).decode()
        body = f"old 0\n{line}\n\n{log.note()}".encode()
        assert (await post(witness, body)).status_code == 422
        assert_cosigned(await post(witness, log.request(0)), signer, log.body())


class TestRollback:
    async def test_a_smaller_checkpoint_is_never_cosigned(
        self, witness: httpx.AsyncClient, log: Log, signer: CosignatureSigner
    ) -> None:
        assert_cosigned(await post(witness, log.request(0)), signer, log.body())
        # old = the witness's size, above the checkpoint's: 400.
        assert (await post(witness, b"old 13\n\n" + log.note(8).encode())).status_code == 400
        # old = the smaller size: stale, 409 naming 13.
        assert_size_conflict(await post(witness, log.request(8, size=8)), 13)
        # The witness still holds 13.
        log.grow(1)
        assert_cosigned(await post(witness, log.request(13)), signer, log.body())


class TestMalformed:
    @pytest.mark.parametrize(
        "make",
        [
            pytest.param(lambda note: note.encode(), id="no-old-line"),
            pytest.param(lambda note: b"old 0\n" + note.encode(), id="no-blank-line"),
            pytest.param(lambda note: b"old 0\n\n\n" + note.encode(), id="two-blank-lines"),
            pytest.param(lambda note: b"old 0\nold 0\n\n" + note.encode(), id="two-old-lines"),
            pytest.param(lambda note: b"old 0\r\n\r\n" + note.encode(), id="crlf-head"),
            pytest.param(lambda note: b"old 0\n\n" + note.replace("\n", "\r\n").encode(), id="crlf-note"),
            pytest.param(lambda note: b"old 0\n\n" + note.encode()[:-1], id="note-without-final-newline"),
            pytest.param(lambda note: b"old 0\n\n" + note.encode() + b"trailing", id="text-after-note"),
            pytest.param(lambda note: b"old 0\n\n" + note.encode() + b"\n", id="blank-after-note"),
            pytest.param(lambda note: b"old 0\n\n" + note.encode() + b"\xff\n", id="not-utf8"),
            pytest.param(lambda note: b"\xef\xbb\xbfold 0\n\n" + note.encode(), id="byte-order-mark"),
            pytest.param(lambda note: b"old 00\n\n" + note.encode(), id="leading-zero"),
            pytest.param(lambda note: b"old -0\n\n" + note.encode(), id="minus-zero"),
            pytest.param(lambda note: b"old +0\n\n" + note.encode(), id="plus-zero"),
            pytest.param(lambda note: b"old 0 \n\n" + note.encode(), id="trailing-space"),
            pytest.param(lambda note: b"old  0\n\n" + note.encode(), id="two-spaces"),
            pytest.param(lambda note: b"old\t0\n\n" + note.encode(), id="tab"),
            pytest.param(lambda note: b"OLD 0\n\n" + note.encode(), id="upper-case"),
            pytest.param(lambda note: "old \u0660\n\n".encode() + note.encode(), id="arabic-indic-zero"),
            pytest.param(lambda note: b"old 9223372036854775808\n\n" + note.encode(), id="old-2^63"),
            pytest.param(lambda note: b"old " + b"9" * 5000 + b"\n\n" + note.encode(), id="old-5000-digits"),
            pytest.param(lambda note: b"old 0\nnot base64!\n\n" + note.encode(), id="proof-not-base64"),
            pytest.param(
                lambda note: b"old 0\n" + base64.b64encode(b"x" * 31) + b"\n\n" + note.encode(),
                id="proof-31-bytes",
            ),
            pytest.param(
                lambda note: b"old 0\n" + base64.b64encode(b"x" * 33) + b"\n\n" + note.encode(),
                id="proof-33-bytes",
            ),
            pytest.param(
                lambda note: b"old 0\n" + base64.b64encode(b"x" * 32).rstrip(b"=") + b"\n\n" + note.encode(),
                id="proof-unpadded",
            ),
            pytest.param(
                lambda note: b"old 0\n" + base64.urlsafe_b64encode(b"\xff" * 32) + b"\n\n" + note.encode(),
                id="proof-url-safe-alphabet",
            ),
            pytest.param(
                lambda note: b"old 0\n" + (base64.b64encode(b"x" * 32) + b"\n") * 64 + b"\n" + note.encode(),
                id="64-proof-lines",
            ),
            pytest.param(lambda _note: b"", id="empty"),
            pytest.param(lambda _note: b"old 0\n\n", id="no-note"),
            pytest.param(
                lambda note: b"old 0\n\n" + note.split("\n\n")[0].encode() + b"\n", id="unsigned-note"
            ),
        ],
    )
    async def test_400(self, witness: httpx.AsyncClient, log: Log, make: Callable[[str], bytes]) -> None:
        response = await post(witness, make(log.note()))
        assert response.status_code == 400, response.text
        assert response.headers["content-type"] == "application/problem+json"

    async def test_63_proof_lines_are_read_not_refused_as_malformed(
        self, witness: httpx.AsyncClient, log: Log
    ) -> None:
        body = b"old 0\n" + (base64.b64encode(b"x" * 32) + b"\n") * 63 + b"\n" + log.note().encode()
        # Parsed (63 is allowed); refused only because a proof from 0 must be empty.
        assert (await post(witness, body)).status_code == 422

    @pytest.mark.parametrize(
        "line",
        [
            pytest.param(f"{DASH} {WITNESS_NAME}\n", id="no-signature"),
            pytest.param(f"{DASH}  name AAAAAAAA\n", id="empty-name"),
            pytest.param(f"{DASH} na+me AAAAAAAA\n", id="plus-in-name"),
            pytest.param(f"{DASH} na\u00a0me AAAAAAAA\n", id="unicode-space-in-name"),
            pytest.param(f"{DASH} name AAA\n", id="shorter-than-key-id"),
            pytest.param(f"{DASH} name not-base64\n", id="not-base64"),
            pytest.param("- name AAAAAAAA\n", id="hyphen-not-em-dash"),
            pytest.param(f"{DASH}name AAAAAAAA\n", id="no-space-after-dash"),
            pytest.param(f"{DASH} name AAAAAAAA \n", id="trailing-space"),
        ],
    )
    async def test_a_malformed_unknown_signature_line_is_400(
        self, witness: httpx.AsyncClient, log: Log, line: str
    ) -> None:
        response = await post(witness, log.request(0, note=log.note() + line))
        assert response.status_code == 400, response.text


class TestSignatureLines:
    async def test_lines_by_unknown_keys_are_ignored(
        self, witness: httpx.AsyncClient, log: Log, signer: CosignatureSigner
    ) -> None:
        body = log.body()
        other = Ed25519PrivateKey.generate()
        strangers = (
            log.signature_line(body, key=other, name="stranger.example/key")
            + log.signature_line(body, key=other)  # the log's name, another id
            + f"{DASH} {log.key_name} {base64.b64encode(b'xxxx' + b'y' * 64).decode()}\n"
        )
        note = body + "\n" + strangers + log.signature_line(body)
        assert_cosigned(await post(witness, log.request(0, note=note)), signer, body)

    async def test_a_duplicated_signature_line_is_cosigned(
        self, witness: httpx.AsyncClient, log: Log, signer: CosignatureSigner
    ) -> None:
        note = log.note() + log.signature_line(log.body())
        assert_cosigned(await post(witness, log.request(0, note=note)), signer, log.body())

    async def test_an_existing_cosignature_in_the_note_is_not_a_log_signature(
        self, witness: httpx.AsyncClient, log: Log, signer: CosignatureSigner
    ) -> None:
        # The witness's own cosignature on the note does not make it signed by the log.
        body = log.body()
        cosigned = signer.cosign(body, int(time.time()))
        response = await post(witness, log.request(0, note=body + "\n" + cosigned))
        assert response.status_code == 403

    async def test_a_note_text_with_inner_blank_line_is_split_at_the_last(
        self, witness: httpx.AsyncClient, log: Log
    ) -> None:
        # A checkpoint forbids empty extension lines: this text reads, but as a bad checkpoint.
        body = log.body() + "\nafter blank\n"
        response = await post(witness, log.request(0, note=body + "\n" + log.signature_line(body)))
        assert response.status_code == 400


class TestOrigin:
    async def test_key_name_need_not_be_origin(self, tmp_path: Path, signer: CosignatureSigner) -> None:
        log = Log(origin="log.example/origin", key_name="log.example/key", size=2)
        state = WitnessState(tmp_path / "w.db", signer, [TrustedLog.parse(f"{log.origin} {log.vkey()}")])
        try:
            transport = httpx.ASGITransport(app=create_witness_app(state))
            async with httpx.AsyncClient(transport=transport, base_url="http://w.test") as client:
                assert_cosigned(await post(client, log.request(0)), signer, log.body())
                # The key's name as an origin is another log, not followed.
                other = Log(origin="log.example/key", size=2)
                other.key = log.key
                assert (await post(client, other.request(0))).status_code == 404
        finally:
            state.close()


# --- the log's side: hostile witnesses --------------------------------------------------


@pytest.fixture
async def sequenced_engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    url = await create_scratch_database(database_url)
    engine = create_engine(url)
    async with engine.begin() as conn:
        await append_many_in_transaction(conn, [make_entry() for _ in range(3)])
    await sequence_all(make_sequencer(engine, make_signer(), every=1))
    yield engine
    await engine.dispose()
    await drop_scratch_database(url)


def _config(endpoints: list[WitnessEndpoint], quorum: int, timeout: float = 5) -> WitnessConfig:
    return WitnessConfig(
        witnesses=tuple(endpoints),
        quorum=quorum,
        grace_seconds=None,
        refresh_seconds=3600,
        timeout_seconds=timeout,
        poll_seconds=0.02,
    )


def _body_of(request: httpx.Request) -> str:
    """The checkpoint body of an add-checkpoint request, read here from the spec."""
    _head, _blank, note = request.content.decode().partition("\n\n")
    return note[: note.rfind("\n\n") + 1]


class Witnesses:
    """A good witness at http://good.example and hostile ones answering ``answers[host]``."""

    def __init__(self) -> None:
        self.keys = {host: CosignatureSigner.generate(host) for host in ("good.example", "bad.example")}
        self.answer: Callable[[httpx.Request], httpx.Response] = lambda _request: httpx.Response(500)

    def endpoint(self, host: str, url: str | None = None) -> WitnessEndpoint:
        verifier = CosignatureVerifier.parse(self.keys[host].verifier_key())
        return WitnessEndpoint(url or f"http://{host}", verifier)

    def handler(self, request: httpx.Request) -> httpx.Response:
        if request.url.host == "good.example":
            cosignature = self.keys["good.example"].cosign(_body_of(request), int(time.time()))
            return httpx.Response(200, text=cosignature)
        return self.answer(request)


async def _stored(engine: AsyncEngine) -> dict[str, str]:
    async with engine.connect() as conn:
        newest = await cosignature_repository.newest_checkpoint(conn)
        assert newest is not None
        return await cosignature_repository.cosignatures_for(conn, newest.id)


def _bad_key_cosignature(request: httpx.Request) -> httpx.Response:
    # The right name and key id, another key: a forgery.
    return httpx.Response(
        200, text=forged_cosignature("bad.example", Ed25519PrivateKey.generate(), _body_of(request), 1)
    )


class TestHostileWitness:
    @pytest.mark.parametrize(
        "answer",
        [
            pytest.param(lambda _r: httpx.Response(200, text="<html>hello</html>"), id="html"),
            pytest.param(lambda _r: httpx.Response(200, content=b""), id="empty"),
            pytest.param(lambda _r: httpx.Response(200, content=b"\xff\xfe\x00\n"), id="binary"),
            pytest.param(lambda _r: httpx.Response(200, text=f"{DASH} bad.example AAAA\n"), id="short-line"),
            pytest.param(lambda _r: httpx.Response(200, text=f"{DASH} bad.example !!!!\n"), id="not-base64"),
            pytest.param(_bad_key_cosignature, id="wrong-key"),
            pytest.param(
                lambda _r: httpx.Response(
                    200, text=forged_cosignature("bad.example", Ed25519PrivateKey.generate(), "x\n", 1)
                ),
                id="other-body",
            ),
            pytest.param(lambda _r: httpx.Response(409, text="banana\n"), id="409-garbage"),
            pytest.param(lambda _r: httpx.Response(409, text="-1\n"), id="409-negative"),
            pytest.param(lambda _r: httpx.Response(409, text="9" * 5000 + "\n"), id="409-huge"),
            pytest.param(lambda _r: httpx.Response(409, text="99999\n"), id="409-above-the-log"),
            pytest.param(
                lambda _r: httpx.Response(302, headers={"Location": "http://good.example/"}), id="302"
            ),
            pytest.param(lambda _r: httpx.Response(500, text="oops"), id="500"),
            pytest.param(
                lambda _r: httpx.Response(
                    200, headers={"Content-Type": "text/plain; charset=nonsense"}, content=b"\xff"
                ),
                id="unknown-charset",
            ),
        ],
    )
    async def test_is_not_counted_and_the_good_witness_still_is(
        self, sequenced_engine: AsyncEngine, answer: Callable[[httpx.Request], httpx.Response]
    ) -> None:
        witnesses = Witnesses()
        witnesses.answer = answer
        config = _config([witnesses.endpoint("good.example"), witnesses.endpoint("bad.example")], quorum=1)
        async with httpx.AsyncClient(transport=httpx.MockTransport(witnesses.handler)) as http:
            assert await WitnessSubmitter(sequenced_engine, config, http).run_once()
        assert set(await _stored(sequenced_engine)) == {"good.example"}

    async def test_a_forged_cosignature_never_makes_the_quorum(self, sequenced_engine: AsyncEngine) -> None:
        witnesses = Witnesses()
        witnesses.answer = _bad_key_cosignature
        config = _config([witnesses.endpoint("bad.example")], quorum=1)
        async with httpx.AsyncClient(transport=httpx.MockTransport(witnesses.handler)) as http:
            assert not await WitnessSubmitter(sequenced_engine, config, http).run_once()
        assert await _stored(sequenced_engine) == {}

    async def test_an_endless_answer_is_not_read_to_its_end(self, sequenced_engine: AsyncEngine) -> None:
        """A witness streaming megabytes is cut off: a cosignature is a line of some 120 bytes."""
        pulled = 0
        chunks = 256  # 16 MiB in all

        async def stream() -> AsyncIterator[bytes]:
            nonlocal pulled
            for _ in range(chunks):
                pulled += 1
                yield b"A" * 65536

        witnesses = Witnesses()
        witnesses.answer = lambda _request: httpx.Response(200, content=stream())
        config = _config([witnesses.endpoint("good.example"), witnesses.endpoint("bad.example")], quorum=1)
        async with httpx.AsyncClient(transport=httpx.MockTransport(witnesses.handler)) as http:
            assert await WitnessSubmitter(sequenced_engine, config, http).run_once()
        assert set(await _stored(sequenced_engine)) == {"good.example"}
        assert pulled < chunks

    async def test_a_slow_witness_does_not_hold_the_round(self, sequenced_engine: AsyncEngine) -> None:
        """A witness that drips its answer a byte at a time, each within the read timeout,
        is given up after the request timeout in all; the good witness's cosignature is kept."""

        async def drip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                await reader.readuntil(b"\r\n\r\n")
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 10000\r\n\r\n")
                for _ in range(10000):
                    writer.write(b"A")
                    await writer.drain()
                    await asyncio.sleep(0.05)
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            finally:
                writer.close()

        server = await asyncio.start_server(drip, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        witnesses = Witnesses()
        config = _config(
            [
                witnesses.endpoint("good.example"),
                witnesses.endpoint("bad.example", f"http://127.0.0.1:{port}"),
            ],
            quorum=1,
            timeout=0.5,
        )
        mounts = {"http://good.example": httpx.MockTransport(witnesses.handler)}
        try:
            async with httpx.AsyncClient(mounts=mounts, timeout=0.5) as http:
                started = time.monotonic()
                assert await asyncio.wait_for(WitnessSubmitter(sequenced_engine, config, http).run_once(), 10)
                assert time.monotonic() - started < 5
        finally:
            server.close()
            await server.wait_closed()
        assert set(await _stored(sequenced_engine)) == {"good.example"}


class SpecWitness:
    """A witness written from tlog-witness: it reads each request to the letter, checks the
    proof against the last root it cosigned and cosigns with a key of its own."""

    def __init__(self) -> None:
        self.key = Ed25519PrivateKey.generate()
        self.size = 0
        self.root: bytes | None = None
        self.requests: list[tuple[int, list[bytes], str]] = []

    def vkey(self) -> str:
        public = raw_public(self.key)
        return (
            f"spec.example+{key_id('spec.example', 4, public).hex()}+"
            + base64.b64encode(b"\x04" + public).decode()
        )

    def handler(self, request: httpx.Request) -> httpx.Response:
        assert request.method == "POST"
        assert request.url.path == "/add-checkpoint"
        text = request.content.decode("utf-8")
        head, blank, note = text.partition("\n\n")
        assert blank
        lines = head.split("\n")
        assert lines[0].startswith("old ")
        old_text = lines[0][4:]
        assert old_text.isascii()
        assert old_text.isdigit()
        assert old_text == "0" or not old_text.startswith("0")
        old = int(old_text)
        proof = [base64.b64decode(line, validate=True) for line in lines[1:]]
        assert all(len(h) == 32 for h in proof)
        assert len(proof) <= 63
        assert note.endswith("\n")
        body = note[: note.rfind("\n\n") + 1]
        _origin, size_text, root_text = body.split("\n")[:3]
        size, root = int(size_text), base64.b64decode(root_text)
        self.requests.append((old, proof, body))
        if old != self.size:
            return httpx.Response(
                409, headers={"Content-Type": "text/x.tlog.size"}, content=b"%d\n" % self.size
            )
        if self.root is None:
            assert not proof
        else:
            assert verify_consistency(old, size, proof, self.root, root)
        self.size, self.root = size, root
        return httpx.Response(200, text=forged_cosignature("spec.example", self.key, body, int(time.time())))


class TestSubmitterRequests:
    async def test_requests_read_to_the_letter_and_proofs_verify(self, sequenced_engine: AsyncEngine) -> None:
        spec = SpecWitness()
        endpoint = WitnessEndpoint("http://spec.example", CosignatureVerifier.parse(spec.vkey()))
        config = _config([endpoint], quorum=1)
        sequencer = make_sequencer(sequenced_engine, make_signer(), every=1)
        async with httpx.AsyncClient(transport=httpx.MockTransport(spec.handler)) as http:
            submitter = WitnessSubmitter(sequenced_engine, config, http)
            assert await submitter.run_once()
            for grow in (1, 4, 9):
                async with sequenced_engine.begin() as conn:
                    await append_many_in_transaction(conn, [make_entry() for _ in range(grow)])
                await sequence_all(sequencer)
                assert await submitter.run_once()
        sizes = [(old, int(body.split("\n")[1])) for old, _proof, body in spec.requests]
        assert sizes == [(0, 3), (3, 4), (4, 8), (8, 17)]
        assert all(proof for old, proof, _body in spec.requests if old)
        stored = await _stored(sequenced_engine)
        assert cosignatures_in(stored["spec.example"], spec.vkey(), spec.requests[-1][2])


class TestRelayedCosignature:
    async def test_a_witness_relaying_anothers_cosignature_is_not_counted(
        self, sequenced_engine: AsyncEngine
    ) -> None:
        witnesses = Witnesses()

        def relay(request: httpx.Request) -> httpx.Response:
            return httpx.Response(
                200, text=witnesses.keys["good.example"].cosign(_body_of(request), int(time.time()))
            )

        witnesses.answer = relay
        config = _config([witnesses.endpoint("good.example"), witnesses.endpoint("bad.example")], quorum=2)
        async with httpx.AsyncClient(transport=httpx.MockTransport(witnesses.handler)) as http:
            assert not await WitnessSubmitter(sequenced_engine, config, http).run_once()
        assert set(await _stored(sequenced_engine)) == {"good.example"}


class TestTiles:
    """tlog-tiles as a monitor reads it: an entry bundle is uint16 big-endian length-prefixed
    entries; a level-0 hash tile is their RFC 6962 leaf hashes; partial tiles are .p/<W>."""

    async def test_bundle_and_tile_rebuild_the_signed_root(self, sequenced_engine: AsyncEngine) -> None:
        async with sequenced_engine.connect() as conn:
            newest = await cosignature_repository.newest_checkpoint(conn)
            assert newest is not None
            assert newest.tree_size == 3
            bundle = await tiles.read_tile(conn, tiles.parse_tile_path("entries/000.p/3"))
            hashes = await tiles.read_tile(conn, tiles.parse_tile_path("0/000.p/3"))
            for unavailable in (
                "0/000",
                "entries/000",
                "0/000.p/4",
                "entries/000.p/4",
                "1/000.p/1",
                "0/001.p/1",
            ):
                with pytest.raises(TileNotFound):
                    await tiles.read_tile(conn, tiles.parse_tile_path(unavailable))
        entries, position = [], 0
        while position < len(bundle):
            length = int.from_bytes(bundle[position : position + 2], "big")
            entries.append(bundle[position + 2 : position + 2 + length])
            position += 2 + length
        assert position == len(bundle)
        leaves = [leaf_hash(entry) for entry in entries]
        assert len(leaves) == 3
        assert hashes == b"".join(leaves)
        signed_root = base64.b64decode(newest.note.split("\n")[2])
        assert mth(leaves) == signed_root


class TestAnswerShiftingTheBody:
    async def test_a_leading_blank_line_does_not_make_the_log_check_another_text(
        self, sequenced_engine: AsyncEngine
    ) -> None:
        """An answer starting with a blank line, concatenated to the note, moves the note's last
        blank line: read that way, the signed text would be the whole note, signature line
        included. A cosignature over that text is not one over the checkpoint."""
        witnesses = Witnesses()

        def shifted(request: httpx.Request) -> httpx.Response:
            note = request.content.decode().partition("\n\n")[2]
            return httpx.Response(
                200, text="\n" + witnesses.keys["bad.example"].cosign(note, int(time.time()))
            )

        witnesses.answer = shifted
        config = _config([witnesses.endpoint("bad.example")], quorum=1)
        async with httpx.AsyncClient(transport=httpx.MockTransport(witnesses.handler)) as http:
            assert not await WitnessSubmitter(sequenced_engine, config, http).run_once()
        assert await _stored(sequenced_engine) == {}


class TestSizes:
    async def test_sixteen_post_quantum_sized_signatures_are_accepted(
        self, witness: httpx.AsyncClient, log: Log, signer: CosignatureSigner
    ) -> None:
        """signed-note: a verifier MUST accept at least 16 signatures, and post-quantum ones
        are "nearly 5kB": 15 such lines by unknown keys beside the log's own."""
        body = log.body()
        big = "".join(
            f"{DASH} pq{i}.example {base64.b64encode(bytes([i]) * 4 + b'q' * 4900).decode()}\n"
            for i in range(15)
        )
        request = log.request(0, note=body + "\n" + big + log.signature_line(body))
        assert len(request) > 96 * 1024
        assert_cosigned(await post(witness, request), signer, body)

    async def test_a_body_far_over_the_limit_is_413(self, witness: httpx.AsyncClient, log: Log) -> None:
        body = log.body()
        filler = "".join(
            f"{DASH} pq{i}.example {base64.b64encode(b'q' * 5000).decode()}\n" for i in range(100)
        )
        response = await post(witness, log.request(0, note=body + "\n" + filler + log.signature_line(body)))
        assert response.status_code == 413

    async def test_other_methods_are_405(self, witness: httpx.AsyncClient) -> None:
        assert (await witness.get("/add-checkpoint")).status_code == 405


class TestBrokenWitnessUrl:
    @pytest.mark.parametrize("url", ["http://127.0.0.1:99999", "http://host:port", "http://"])
    def test_is_refused_in_the_configuration(self, url: str) -> None:
        vkey = CosignatureSigner.generate("w.example").verifier_key()
        with pytest.raises(WitnessConfigInvalid):
            parse_witnesses(f"{url}={vkey}")

    async def test_does_not_cost_the_other_witnesses_their_cosignatures(
        self, sequenced_engine: AsyncEngine
    ) -> None:
        witnesses = Witnesses()
        config = _config(
            [witnesses.endpoint("good.example"), witnesses.endpoint("bad.example", "http://127.0.0.1:99999")],
            quorum=1,
        )
        mounts = {"http://good.example": httpx.MockTransport(witnesses.handler)}
        async with httpx.AsyncClient(mounts=mounts, timeout=2) as http:
            assert await WitnessSubmitter(sequenced_engine, config, http).run_once()
        assert set(await _stored(sequenced_engine)) == {"good.example"}


class TestMonitorView:
    async def test_latest_checkpoint_is_the_note_with_the_cosignature(
        self, witness: httpx.AsyncClient, log: Log, signer: CosignatureSigner
    ) -> None:
        assert (await witness.get("/checkpoint", params={"origin": ORIGIN})).status_code == 404
        assert_cosigned(await post(witness, log.request(0)), signer, log.body())
        response = await witness.get("/checkpoint", params={"origin": ORIGIN})
        assert response.status_code == 200
        note = response.text
        separator = note.rfind("\n\n")
        text, signatures = note[: separator + 1], note[separator + 2 :]
        assert text == log.body()
        assert signatures.startswith(log.signature_line(text))
        assert len(cosignatures_in(signatures, signer.verifier_key(), text)) == 1


class TestLongRefusal:
    async def test_a_long_error_page_is_a_refusal_not_read(
        self, sequenced_engine: AsyncEngine, caplog: pytest.LogCaptureFixture
    ) -> None:
        witnesses = Witnesses()
        witnesses.answer = lambda _r: httpx.Response(502, text="<html>" + "x" * 200_000 + "</html>")
        config = _config([witnesses.endpoint("good.example"), witnesses.endpoint("bad.example")], quorum=1)
        async with httpx.AsyncClient(transport=httpx.MockTransport(witnesses.handler)) as http:
            assert await WitnessSubmitter(sequenced_engine, config, http).run_once()
        assert "refused checkpoint 3 with 502" in caplog.text
