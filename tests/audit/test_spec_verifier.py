"""An outside auditor's verifier, written from the specifications alone, run against a live
log and a live witness.

The verifier half of this file imports nothing of the service's Merkle, checkpoint or
cosignature code: hashes and proofs are checked as RFC 9162 section 2.1 writes them,
notes, keys and checkpoints as C2SP signed-note and tlog-checkpoint, cosignatures as
tlog-cosignature, tiles as tlog-tiles, and the witness's answers as tlog-witness. The
entry bytes are DESIGN.md's canonical JSON. So a deviation in the service fails here even
where the service's own checks agree with the service.
"""

from __future__ import annotations

import base64
import hashlib
import json
import struct
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from fastapi import FastAPI

from tests.audit.conftest import poll
from tests.fixtures.audit import make_entry
from tests.fixtures.auth import act_as
from tests.fixtures.rfc9162 import leaf_hash, mth, subproof, verify_consistency, verify_inclusion


def canonical(entry: dict[str, Any]) -> bytes:
    """DESIGN.md: the bytes an audit leaf hashes."""
    return json.dumps(entry, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


# --- C2SP signed-note, tlog-checkpoint, tlog-cosignature ---------------------------------

EM_DASH = "\u2014"


def spec_key_id(name: str, key_type: bytes, public_key: bytes) -> bytes:
    return hashlib.sha256(name.encode() + b"\x0a" + key_type + public_key).digest()[:4]


@dataclass(frozen=True)
class VerifierKey:
    name: str
    key_id: bytes
    key_type: bytes
    public_key: bytes


def parse_vkey_text(vkey: str) -> VerifierKey:
    """``<name>+<hex key id>+<base64(type || public key)>``: every part checked."""
    name, id_hex, encoded = vkey.split("+", 2)  # base64 may hold "+" too
    assert name
    assert not any(ch.isspace() for ch in name)
    assert len(id_hex) == 8
    assert all(ch in "0123456789abcdef" for ch in id_hex)
    raw = base64.b64decode(encoded, validate=True)
    assert base64.b64encode(raw).decode() == encoded  # standard, padded base64
    key = VerifierKey(name, bytes.fromhex(id_hex), raw[:1], raw[1:])
    assert len(key.public_key) == 32
    assert key.key_id == spec_key_id(name, key.key_type, key.public_key)
    return key


def split_signed_note(note: str) -> tuple[str, list[tuple[str, bytes]]]:
    """(text with its final newline, [(key name, base64-decoded signature)])."""
    assert not any(ord(ch) < 0x20 and ch != "\n" for ch in note)
    cut = note.rindex("\n\n")
    text, block = note[: cut + 1], note[cut + 2 :]
    assert text.endswith("\n")
    assert block.endswith("\n")
    signatures = []
    for line in block[:-1].split("\n"):
        assert line.startswith(EM_DASH + " ")
        name, encoded = line[2:].split(" ")
        signatures.append((name, base64.b64decode(encoded, validate=True)))
    assert signatures
    return text, signatures


def verified_text(note: str, key: VerifierKey) -> str:
    """The note's text once an Ed25519 (type 0x01) signature by ``key`` verifies over it."""
    assert key.key_type == b"\x01"
    text, signatures = split_signed_note(note)
    mine = [raw for name, raw in signatures if name == key.name and raw[:4] == key.key_id]
    assert mine, "no signature by the log's key"
    for raw in mine:
        assert len(raw) == 4 + 64
        Ed25519PublicKey.from_public_bytes(key.public_key).verify(raw[4:], text.encode())
    return text


@dataclass(frozen=True)
class SpecCheckpoint:
    origin: str
    size: int
    root: bytes


def parse_checkpoint_text(text: str) -> SpecCheckpoint:
    lines = text.split("\n")
    assert lines[-1] == ""
    assert len(lines) >= 4
    assert all(lines[:-1])
    origin, size, root = lines[:3]
    assert size.isascii()
    assert size.isdigit()
    assert size == "0" or not size.startswith("0")
    digest = base64.b64decode(root, validate=True)
    assert len(digest) == 32
    return SpecCheckpoint(origin, int(size), digest)


def verify_cosignature(text: str, line: str, key: VerifierKey) -> int:
    """The timestamp of ``line``, a tlog-cosignature/v1 Ed25519 cosignature over ``text``."""
    assert key.key_type == b"\x04"
    assert line.startswith(f"{EM_DASH} {key.name} ")
    assert line.endswith("\n")
    raw = base64.b64decode(line[len(f"{EM_DASH} {key.name} ") : -1], validate=True)
    assert len(raw) == 4 + 8 + 64
    assert raw[:4] == key.key_id
    timestamp: int = struct.unpack(">Q", raw[4:12])[0]
    assert timestamp <= 2**63 - 1
    message = f"cosignature/v1\ntime {timestamp}\n".encode() + text.encode()
    Ed25519PublicKey.from_public_bytes(key.public_key).verify(raw[12:], message)
    return timestamp


# --- the log, as an auditor sees it -------------------------------------------------------

PROBLEM = "application/problem+json"
# Characters JSON encoders disagree on: Python writes all of these raw (UTF-8) or with the
# short and lowercase escapes below; other encoders escape U+2028/9, '<', '>', '&' or '/'.
AWKWARD = (
    "Zo\u00eb \u00c5ngstr\u00f6m \u5c71\u7530 \U0001f642 \u2028\u2029 \x7f </b>&'\" \\ \x00\x1f\t\n\u00e9"
)
AWKWARD_JSON = (
    '"Zo\u00eb \u00c5ngstr\u00f6m \u5c71\u7530 \U0001f642 \u2028\u2029 \x7f </b>&\'\\" \\\\ '
    '\\u0000\\u001f\\t\\n\u00e9"'
).encode()


def _problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["title"]
    assert body["detail"]
    return body


def _b64(values: Sequence[str]) -> list[bytes]:
    return [base64.b64decode(value, validate=True) for value in values]


class TestAnAuditorsVerifier:
    async def test_every_proof_checkpoint_and_tile_verifies_from_the_specs(
        self, audit_app: FastAPI, audit_client: httpx.AsyncClient
    ) -> None:
        act_as(audit_app, "audit-office", "auditor")
        citizen = str(uuid.uuid4())
        entries = [
            make_entry(
                citizen_id=citizen,
                on_behalf_of=AWKWARD if i == 3 else f"officer-{i}",
                case_ref=f"CASE-\u00e9-{i}",
                legal_basis=[AWKWARD] if i == 5 else [],
            )
            for i in range(20)
        ]
        for start in range(0, 20, 5):  # a few batches, so the tree grows in steps
            await audit_app.state.audit_writer.append_many(entries[start : start + 5])
        vkey = parse_vkey_text((await audit_client.get("/v1/audit/verifier-key")).text.strip())

        async def signed_twenty() -> SpecCheckpoint | None:
            response = await audit_client.get("/v1/audit/checkpoint")
            if response.status_code != 200:
                return None
            assert response.headers["content-type"] == "text/plain; charset=utf-8"
            checkpoint = parse_checkpoint_text(verified_text(response.text, vkey))
            return checkpoint if checkpoint.size >= 20 else None

        checkpoint = await poll(signed_twenty)
        assert checkpoint.origin == vkey.name  # tlog-checkpoint: the key's name SHOULD be the origin

        # Every leaf of the signed tree: its entry, its leaf hash, its inclusion proof.
        leaves: list[bytes] = []
        raw_entries: list[bytes] = []
        for index in range(checkpoint.size):
            response = await audit_client.get(
                f"/v1/audit/entries/{index}/proof", params={"tree_size": checkpoint.size}
            )
            proof = response.json()
            assert (proof["leaf_index"], proof["tree_size"]) == (index, checkpoint.size)
            entry_bytes = canonical(proof["entry"])
            leaf = leaf_hash(entry_bytes)
            assert base64.b64decode(proof["leaf_hash"]) == leaf
            assert verify_inclusion(index, checkpoint.size, leaf, _b64(proof["hashes"]), checkpoint.root)
            leaves.append(leaf)
            raw_entries.append(entry_bytes)
        assert mth(leaves) == checkpoint.root

        # The awkward characters are hashed as DESIGN.md's canonical JSON writes them.
        officers = [b for b in raw_entries if b'"citizen_id":"' + citizen.encode() in b]
        assert len(officers) == 20
        assert b'"on_behalf_of":' + AWKWARD_JSON in officers[3]
        assert b'"legal_basis":[' + AWKWARD_JSON + b"]" in officers[5]
        assert "\u00e9".encode() in officers[0]
        assert b"\\u00e9" not in officers[0]

        # Inclusion at smaller tree sizes, every leaf of each.
        for size in (1, 2, 3, 4, 7, 8, 13, 16, 20):
            root = mth(leaves[:size])
            for index in range(size):
                response = await audit_client.get(
                    f"/v1/audit/entries/{index}/proof", params={"tree_size": size}
                )
                proof = response.json()
                assert proof["tree_size"] == size
                hashes = _b64(proof["hashes"])
                assert verify_inclusion(index, size, leaves[index], hashes, root), (index, size)
                assert not verify_inclusion(index, size, leaves[index], hashes, leaf_hash(b"other"))

        # Consistency for every pair 0 < m <= n <= 20.
        for second in range(1, 21):
            for first in range(1, second + 1):
                response = await audit_client.get(
                    "/v1/audit/consistency", params={"first": first, "second": second}
                )
                body = response.json()
                assert (body["first"], body["second"]) == (first, second)
                hashes = _b64(body["hashes"])
                assert hashes == subproof(first, leaves[:second], True), (first, second)
                if first == second:
                    assert hashes == []
                else:
                    assert verify_consistency(
                        first, second, hashes, mth(leaves[:first]), mth(leaves[:second])
                    )

        # tlog-tiles: the partial level-0 tile and entry bundle of the signed size.
        width = checkpoint.size
        tile = await audit_client.get(f"/v1/audit/tile/0/000.p/{width}")
        assert tile.status_code == 200
        assert tile.headers["content-type"] == "application/octet-stream"
        assert tile.content == b"".join(leaves)
        bundle = await audit_client.get(f"/v1/audit/tile/entries/000.p/{width}")
        assert bundle.status_code == 200
        assert bundle.headers["content-type"] == "application/octet-stream"
        unpacked, data = [], bundle.content
        while data:
            (length,) = struct.unpack(">H", data[:2])
            unpacked.append(data[2 : 2 + length])
            data = data[2 + length :]
        assert unpacked == raw_entries
        # Empty tiles are not served: a tree under 256 leaves has no level-1 tile.
        assert (await audit_client.get("/v1/audit/tile/1/000.p/1")).status_code == 404
        assert (await audit_client.get("/v1/audit/tile/0/000")).status_code == 404

    async def test_bad_proof_queries_are_4xx_problems(
        self, audit_app: FastAPI, audit_client: httpx.AsyncClient
    ) -> None:
        act_as(audit_app, "audit-office", "auditor")
        await audit_app.state.audit_writer.append_many([make_entry() for _ in range(3)])

        async def sequenced() -> int | None:
            response = await audit_client.get("/v1/audit/consistency", params={"first": 3, "second": 3})
            return 3 if response.status_code == 200 else None

        await poll(sequenced)
        # From the empty tree there is nothing to prove (RFC 9162 defines proofs for m > 0):
        # an empty proof, as tlog-witness's "old 0" carries.
        empty = await audit_client.get("/v1/audit/consistency", params={"first": 0, "second": 3})
        assert empty.json() == {"first": 0, "second": 3, "hashes": []}
        huge = str(10**30)
        consistency: list[tuple[dict[str, str | int], int]] = [
            ({"first": 3, "second": 2}, 400),
            ({"first": 1, "second": str(2**63 - 1)}, 400),
            # Past 2^63-1 (no checkpoint carries such a size) and not plain decimal: 422.
            ({"first": 1, "second": huge}, 422),
            ({"first": huge, "second": huge}, 422),
            ({"first": "3_0", "second": 30}, 422),
            ({"first": "+1", "second": 3}, 422),
            ({"first": "01", "second": 3}, 422),
            ({"first": "1.5", "second": 3}, 422),
            ({"first": "abc", "second": 3}, 422),
            ({"first": "1e2", "second": 3}, 422),
            ({"first": -1, "second": 3}, 422),
            ({"first": 1}, 422),
            ({"first": "", "second": 3}, 422),
        ]
        for params, status in consistency:
            _problem(await audit_client.get("/v1/audit/consistency", params=params), status)
        proofs_and_tiles: list[tuple[str, dict[str, str | int], int]] = [
            ("/v1/audit/entries/0/proof", {"tree_size": 0}, 422),
            ("/v1/audit/entries/0/proof", {"tree_size": str(2**63 - 1)}, 400),
            ("/v1/audit/entries/0/proof", {"tree_size": huge}, 422),
            ("/v1/audit/entries/0/proof", {"tree_size": "x"}, 422),
            (f"/v1/audit/entries/{2**63 - 1}/proof", {}, 404),
            (f"/v1/audit/entries/{2**63 - 1}/proof", {"tree_size": 2}, 404),
            (f"/v1/audit/entries/{huge}/proof", {}, 422),
            ("/v1/audit/entries/-1/proof", {}, 422),
            ("/v1/audit/entries/1.5/proof", {}, 422),
            ("/v1/audit/tile/0/x999/x999/x999/x999/x999/x999/x999/x999/999", {}, 404),
            ("/v1/audit/tile/63/000.p/255", {}, 404),
            ("/v1/audit/tile/0/000.p/256", {}, 400),
            ("/v1/audit/tile/" + "9" * 5000 + "/000", {}, 400),
            ("/v1/audit/tile/0/000.p/" + "9" * 5000, {}, 400),
        ]
        for path, params, status in proofs_and_tiles:
            _problem(await audit_client.get(path, params=params), status)


# --- a witness, as a log submitting to it sees it (C2SP tlog-witness) -----------------------

WITNESS_NAME = "audit-office.example/witness"


class SpecLog:
    """A log written from the specs: leaves, RFC 9162 proofs, Ed25519-signed checkpoints."""

    def __init__(self, origin: str, key_name: str | None = None) -> None:
        self.origin = origin
        self.key_name = key_name or origin
        self.private_key = Ed25519PrivateKey.generate()
        public = self.private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.key_id = spec_key_id(self.key_name, b"\x01", public)
        encoded = base64.b64encode(b"\x01" + public).decode()
        self.vkey = f"{self.key_name}+{self.key_id.hex()}+{encoded}"
        self.leaves: list[bytes] = []

    def grow(self, count: int) -> None:
        self.leaves += [leaf_hash(f"{self.origin} {len(self.leaves) + i}".encode()) for i in range(count)]

    def text(self, size: int | None = None, root: bytes | None = None) -> str:
        size = len(self.leaves) if size is None else size
        root = mth(self.leaves[:size]) if root is None else root
        return f"{self.origin}\n{size}\n{base64.b64encode(root).decode()}\n"

    def signature_line(self, text: str) -> str:
        raw = self.key_id + self.private_key.sign(text.encode())
        return f"{EM_DASH} {self.key_name} {base64.b64encode(raw).decode()}\n"

    def note(self, size: int | None = None, root: bytes | None = None) -> str:
        text = self.text(size, root)
        return f"{text}\n{self.signature_line(text)}"

    def proof(self, old: int, size: int | None = None) -> list[bytes]:
        size = len(self.leaves) if size is None else size
        return [] if old in (0, size) else subproof(old, self.leaves[:size], True)

    def request(self, old: int, note: str | None = None, proof: Sequence[bytes] | None = None) -> bytes:
        proof = self.proof(old) if proof is None else proof
        lines = [f"old {old}\n", *(base64.b64encode(h).decode() + "\n" for h in proof), "\n"]
        return ("".join(lines) + (self.note() if note is None else note)).encode()


@dataclass
class Witness:
    client: httpx.AsyncClient
    vkey: VerifierKey

    async def add(self, body: bytes) -> httpx.Response:
        return await self.client.post("/add-checkpoint", content=body)


@pytest.fixture
def spec_log() -> SpecLog:
    log = SpecLog("tellonce.example/spec log with spaces", key_name="tellonce.example/spec-log")
    log.grow(13)
    return log


@pytest.fixture
async def spec_witness(tmp_path: Path, spec_log: SpecLog) -> AsyncIterator[Witness]:
    """The witness server, following ``spec_log`` by its origin line (which holds spaces)."""
    from service.witness.cosignature import CosignatureSigner
    from service.witness.server import create_witness_app
    from service.witness.state import TrustedLog, WitnessState

    signer = CosignatureSigner.generate(WITNESS_NAME)
    state = WitnessState(
        tmp_path / "witness.db", signer, [TrustedLog.parse(f"{spec_log.origin} {spec_log.vkey}")]
    )
    transport = httpx.ASGITransport(app=create_witness_app(state))
    async with httpx.AsyncClient(transport=transport, base_url="http://witness.test") as client:
        yield Witness(client, parse_vkey_text(signer.verifier_key()))
    state.close()


def _size_conflict(response: httpx.Response, size: int) -> None:
    assert response.status_code == 409, response.text
    assert response.headers["content-type"] == "text/x.tlog.size"
    assert response.text == f"{size}\n"


def _cosigned(response: httpx.Response, text: str, witness: Witness) -> None:
    assert response.status_code == 200, response.text
    lines = response.text.splitlines(keepends=True)
    assert lines
    assert all(line.startswith(EM_DASH) and line.endswith("\n") for line in lines)
    timestamp = verify_cosignature(text, lines[0], witness.vkey)
    assert abs(timestamp - time.time()) < 300


class TestAWitnessFromTheSpec:
    async def test_cosigns_a_growing_log_whose_origin_holds_spaces(
        self, spec_witness: Witness, spec_log: SpecLog
    ) -> None:
        _cosigned(await spec_witness.add(spec_log.request(0)), spec_log.text(), spec_witness)
        for grow in (1, 3, 16):  # 13 -> 14 -> 17 -> 33: proofs from a power of two and not
            old = len(spec_log.leaves)
            spec_log.grow(grow)
            assert spec_log.proof(old)
            _cosigned(await spec_witness.add(spec_log.request(old)), spec_log.text(), spec_witness)
        # The same checkpoint again, with its (empty) proof: cosigned again.
        _cosigned(await spec_witness.add(spec_log.request(33)), spec_log.text(), spec_witness)
        served = await spec_witness.client.get("/checkpoint", params={"origin": spec_log.origin})
        text, signatures = split_signed_note(served.text)
        assert text == spec_log.text()
        assert {name for name, _ in signatures} == {spec_log.key_name, WITNESS_NAME}

    async def test_refusals_carry_the_specs_status(self, spec_witness: Witness, spec_log: SpecLog) -> None:
        stranger = SpecLog("elsewhere.example/log")
        stranger.grow(3)
        assert (await spec_witness.add(stranger.request(0))).status_code == 404
        # A note by an unknown key under the trusted key's name: ignored, so no trusted signature.
        impostor = SpecLog(spec_log.origin, key_name=spec_log.key_name)
        impostor.leaves = list(spec_log.leaves)
        assert (await spec_witness.add(spec_log.request(0, note=impostor.note()))).status_code == 403
        assert (await spec_witness.add(spec_log.request(14, proof=[]))).status_code == 400
        # Never cosigned: the known size is 0, so any other old size is a conflict.
        _size_conflict(await spec_witness.add(spec_log.request(5)), 0)
        # Old 0 carries an empty proof.
        assert (await spec_witness.add(spec_log.request(0, proof=[spec_log.leaves[0]]))).status_code == 422
        _cosigned(await spec_witness.add(spec_log.request(0)), spec_log.text(), spec_witness)
        _size_conflict(await spec_witness.add(spec_log.request(0)), 13)
        _size_conflict(await spec_witness.add(spec_log.request(12, proof=[])), 13)
        # The same size with another root: a fork, 409.
        fork = spec_log.note(root=leaf_hash(b"rewritten"))
        assert (await spec_witness.add(spec_log.request(13, note=fork))).status_code == 409
        # A proof that does not verify.
        spec_log.grow(4)
        wrong = [leaf_hash(b"wrong")] * len(spec_log.proof(13))
        assert (await spec_witness.add(spec_log.request(13, proof=wrong))).status_code == 422
        _cosigned(await spec_witness.add(spec_log.request(13)), spec_log.text(), spec_witness)

    @pytest.mark.parametrize(
        "old_line",
        [
            "old 00",
            "old +0",
            "old -0",
            "old 0x0",
            "old  0",
            "old 0 ",
            "OLD 0",
            "old",
            "old \u0660",
            "old 0\r",
            "old " + "9" * 5000,
        ],
    )
    async def test_a_malformed_old_line_is_400(
        self, spec_witness: Witness, spec_log: SpecLog, old_line: str
    ) -> None:
        body = spec_log.request(0).replace(b"old 0\n", old_line.encode() + b"\n", 1)
        _problem(await spec_witness.add(body), 400)

    async def test_malformed_bodies_are_4xx(self, spec_witness: Witness, spec_log: SpecLog) -> None:
        note = spec_log.note()
        for body in [
            spec_log.request(0) + b"trailing\n",
            spec_log.request(0) + b"\n",
            spec_log.request(0)[:-1],
            b"old 0\n" + note.encode(),  # no empty line before the checkpoint
            spec_log.request(0, proof=[b"short"]),
            spec_log.request(13, proof=[leaf_hash(b"x")] * 64),
        ]:
            _problem(await spec_witness.add(body), 400)
        oversize = spec_log.request(0) + b"\xe2\x80\x94 x " + b"A" * (1 << 20) + b"\n"
        _problem(await spec_witness.add(oversize), 413)

    async def test_duplicate_and_foreign_signatures(self, spec_witness: Witness, spec_log: SpecLog) -> None:
        text = spec_log.text()
        mine = spec_log.signature_line(text)
        foreign = []
        for i in range(16):  # signed-note: a verifier accepts at least 16 signatures
            other = SpecLog(f"other{i}.example/log")
            foreign.append(other.signature_line(text))
        note = text + "\n" + mine + "".join(foreign) + mine
        _cosigned(await spec_witness.add(spec_log.request(0, note=note)), text, spec_witness)

    @pytest.mark.parametrize("size", [str(2**63), str(2**64), "9" * 5000])
    async def test_a_tree_size_beyond_63_bits_is_400(
        self, spec_witness: Witness, spec_log: SpecLog, size: str
    ) -> None:
        """Signed by the trusted key, but no tree has that many leaves (the reference
        implementations read the size as a signed 64-bit integer): refused, nothing stored."""
        text = f"{spec_log.origin}\n{size}\n{base64.b64encode(leaf_hash(b'x')).decode()}\n"
        note = f"{text}\n{spec_log.signature_line(text)}"
        _problem(await spec_witness.add(spec_log.request(0, note=note, proof=[])), 400)
        _cosigned(await spec_witness.add(spec_log.request(0)), spec_log.text(), spec_witness)

    async def test_a_note_with_16_signatures_of_post_quantum_size_is_accepted(
        self, spec_witness: Witness, spec_log: SpecLog
    ) -> None:
        """signed-note: a verifier MUST accept at least 16 signatures, "post-quantum signatures
        can be up to nearly 5kB in size"; tlog-witness: the note MAY carry several."""
        text = spec_log.text()
        foreign = "".join(
            f"{EM_DASH} pq{i}.example/witness {base64.b64encode(bytes(5000)).decode()}\n" for i in range(15)
        )
        body = spec_log.request(0, note=f"{text}\n{spec_log.signature_line(text)}{foreign}")
        assert len(body) > 100_000
        _cosigned(await spec_witness.add(body), text, spec_witness)
