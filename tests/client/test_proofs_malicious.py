"""The client's proof checks against a log server that lies.

A real HTTP server on 127.0.0.1 answers ``/v1/audit/checkpoint``, the inclusion proof and
the consistency proof for an honest tree, or with one lie at a time; the client fetches
them with ``TellonceClient`` and checks them with ``verify_entry`` and
``verify_checkpoints``. Every lie is a ``ProofError`` with a message saying what is wrong,
quickly even for a checkpoint claiming 2**63-1 leaves. The checks themselves are compared,
for random trees, indices and tampered proofs, with an RFC 9162 implementation written
here from the RFC's definitions (MTH, PATH, PROOF), independent of the service's.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st
from tellonce_client import ProofError, TellonceClient
from tellonce_client.models import ConsistencyProof, InclusionProof
from tellonce_client.proofs import (
    canonical_entry,
    open_checkpoint,
    verify_checkpoints,
    verify_consistency,
    verify_entry,
    verify_inclusion,
)

from service.audit import merkle
from service.audit.checkpoint import NoteSigner
from tests.fixtures import rfc9162
from tests.fixtures.rfc9162 import leaf_hash, mth


def ref_inclusion_holds(
    leaves: list[bytes], leaf: bytes, index: int, size: int, path: list[bytes], root: bytes
) -> bool:
    """Whether (leaf, index, size, path, root) is true of the tree ``leaves``: barring a
    SHA-256 collision, the one path a verifier may accept is the tree's own."""
    if not 0 <= index < size <= len(leaves):
        return False
    tree = leaves[:size]
    return leaf == tree[index] and root == mth(tree) and path == rfc9162.path(index, tree)


def ref_consistency_holds(
    leaves: list[bytes], first: int, second: int, first_root: bytes, second_root: bytes, path: list[bytes]
) -> bool:
    """Whether some tree has ``first_root`` at ``first`` and ``second_root`` at ``second``,
    shown by ``path``: the empty tree (whose root is fixed) is extended by any tree, a tree
    by itself, and otherwise, barring a collision, only the tree's own proof shows it."""
    if not 0 <= first <= second <= len(leaves):
        return False
    if first == 0 and first_root != mth([]):
        return False
    if first == second:
        return first_root == second_root and not path
    if first == 0:
        return not path
    return (
        first_root == mth(leaves[:first])
        and second_root == mth(leaves[:second])
        and path == rfc9162.proof(first, leaves[:second])
    )


def accepts(check: Callable[[], Any]) -> bool:
    """Whether the client check passes (``ProofError`` is its only way to refuse)."""
    try:
        check()
    except ProofError:
        return False
    return True


def tree(size: int) -> list[bytes]:
    return [leaf_hash(f"leaf {n}".encode()) for n in range(size)]


def tampered(how: str, path: list[bytes], n: int) -> list[bytes]:
    """``path`` changed as ``how`` says, at a place ``n`` picks."""
    at = n % max(len(path), 1)
    if how == "drop":
        return path[:at] + path[at + 1 :]
    if how == "extra":
        return [*path[:at], bytes(32), *path[at:]]
    if how == "extra-at-end":
        return [*path, hashlib.sha256(b"extra").digest()]
    if how in ("flip", "short-hash", "long-hash"):
        changed = list(path)
        if changed:
            h = changed[at]
            flipped = bytes([h[0] ^ 1]) + h[1:]
            changed[at] = {"flip": flipped, "short-hash": h[:31], "long-hash": h + b"\x00"}[how]
        return changed
    if how == "swap" and len(path) > 1:
        at = n % (len(path) - 1)
        return [*path[:at], path[at + 1], path[at], *path[at + 2 :]]
    if how == "reversed":
        return path[::-1]
    if how == "empty":
        return []
    return path


TAMPER = [
    "none",
    "drop",
    "extra",
    "extra-at-end",
    "flip",
    "short-hash",
    "long-hash",
    "swap",
    "reversed",
    "empty",
]


class TestAgainstTheRfc:
    @settings(max_examples=250, deadline=None)
    @given(
        st.integers(1, 130),
        st.data(),
        st.sampled_from(TAMPER),
        st.integers(0, 1000),
        st.sampled_from(["honest", "other-index", "other-size", "other-leaf", "other-root"]),
    )
    def test_inclusion_verdicts_match_the_rfc(
        self, size: int, data: st.DataObject, tamper: str, n: int, claim: str
    ) -> None:
        leaves = tree(size + 2)
        index = data.draw(st.integers(0, size - 1))
        path = tampered(tamper, rfc9162.path(index, leaves[:size]), n)
        leaf, claimed_index, claimed_size, root = leaves[index], index, size, mth(leaves[:size])
        if claim == "other-index":
            claimed_index = data.draw(st.integers(-1, size + 1))
        elif claim == "other-size":
            # Another tree of the same log, as a checkpoint states it: a size with its root.
            # (A root with a size not its own is no statement at all: RFC 9162's check takes
            # the size on trust, and the path of leaf 0 of 66 leaves leads to their root as
            # if for 65; so a proof's size must be the signed checkpoint's.)
            claimed_size = data.draw(st.integers(0, size + 2))
            root = mth(leaves[:claimed_size])
        elif claim == "other-leaf":
            leaf = leaves[(index + 1) % (size + 2)]
        elif claim == "other-root":
            root = mth(leaves[: data.draw(st.integers(0, size + 2))])
        expected = ref_inclusion_holds(leaves, leaf, claimed_index, claimed_size, path, root)
        client = accepts(lambda: verify_inclusion(leaf, claimed_index, claimed_size, path, root))
        service = merkle.verify_inclusion(leaf, claimed_index, claimed_size, path, root)
        assert client == service == expected

    @settings(max_examples=250, deadline=None)
    @given(
        st.integers(0, 130),
        st.data(),
        st.sampled_from(TAMPER),
        st.integers(0, 1000),
        st.sampled_from(["honest", "other-first", "other-second", "other-first-root", "other-second-root"]),
    )
    def test_consistency_verdicts_match_the_rfc(
        self, second: int, data: st.DataObject, tamper: str, n: int, claim: str
    ) -> None:
        leaves = tree(second + 2)
        first = data.draw(st.integers(0, second))
        path = tampered(tamper, rfc9162.proof(first, leaves[:second]), n)
        m, k = first, second
        first_root, second_root = mth(leaves[:first]), mth(leaves[:second])
        if claim == "other-first":
            # Sizes come with their roots, as checkpoints sign them (see above).
            m = data.draw(st.integers(0, second + 1))
            first_root = mth(leaves[:m])
        elif claim == "other-second":
            k = data.draw(st.integers(0, second + 2))
            second_root = mth(leaves[:k])
        elif claim == "other-first-root":
            first_root = mth(leaves[: data.draw(st.integers(0, second + 2))])
        elif claim == "other-second-root":
            second_root = mth(leaves[: data.draw(st.integers(0, second + 2))])
        expected = ref_consistency_holds(leaves, m, k, first_root, second_root, path)
        client = accepts(lambda: verify_consistency(m, k, first_root, second_root, path))
        service = merkle.verify_consistency(m, k, path, first_root, second_root)
        assert client == expected
        # The service's check is the witness's; it takes the empty tree under any root.
        assert service == expected or (m == 0 and not path and m < k and not client)

    def test_the_service_builds_the_rfc_proofs(self) -> None:
        for size in range(1, 40):
            leaves = tree(size)

            def read(level: int, index: int, leaves: list[bytes] = leaves) -> bytes:
                return mth(leaves[index << level : (index + 1) << level])

            assert merkle.root_hash(read, size) == mth(leaves)
            for index in range(size):
                assert merkle.inclusion_proof(read, index, size) == rfc9162.path(index, leaves)
            for first in range(size + 1):
                assert merkle.consistency_proof(read, first, size) == rfc9162.proof(first, leaves)


# --- a log server that lies ---------------------------------------------------------------

ORIGIN = "liar.example/log"


class Log:
    """An honest log of ``size`` entries and what its server answers, with one lie at a time."""

    def __init__(self, size: int) -> None:
        self.signer = NoteSigner(ORIGIN, Ed25519PrivateKey.generate())
        self.entries = [{"n": n, "action": "read"} for n in range(size)]
        self.leaves = [leaf_hash(canonical_entry(e)) for e in self.entries]
        # Each answer the server gives, by path: replaced by a test to make it lie.
        self.checkpoint: Callable[[], str] = self.note
        self.inclusion: Callable[[int, int], dict[str, Any]] = self.inclusion_answer
        self.consistency: Callable[[int, int], dict[str, Any]] = self.consistency_answer

    @property
    def vkey(self) -> str:
        return self.signer.verifier_key()

    def note(
        self, size: int | None = None, root: bytes | None = None, signer: NoteSigner | None = None
    ) -> str:
        size = len(self.leaves) if size is None else size
        root = mth(self.leaves[:size]) if root is None else root
        body = f"{ORIGIN}\n{size}\n{base64.b64encode(root).decode()}\n"
        return (signer or self.signer).sign(body)

    def inclusion_answer(self, index: int, size: int) -> dict[str, Any]:
        return {
            "leaf_index": index,
            "tree_size": size,
            "leaf_hash": b64(self.leaves[index]),
            "hashes": [b64(h) for h in rfc9162.path(index, self.leaves[:size])],
            "entry": self.entries[index],
        }

    def consistency_answer(self, first: int, second: int) -> dict[str, Any]:
        return {
            "first": first,
            "second": second,
            "hashes": [b64(h) for h in rfc9162.proof(first, self.leaves[:second])],
        }


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def serve(log: Log) -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            url = urlsplit(self.path)
            query = {name: int(values[0]) for name, values in parse_qs(url.query).items()}
            parts = url.path.strip("/").split("/")
            if url.path == "/v1/audit/checkpoint":
                self.answer(log.checkpoint().encode(), "text/plain; charset=utf-8")
            elif parts[:3] == ["v1", "audit", "entries"] and parts[4:] == ["proof"]:
                body = log.inclusion(int(parts[3]), query.get("tree_size", len(log.leaves)))
                self.answer(json.dumps(body).encode(), "application/json")
            elif url.path == "/v1/audit/consistency":
                body = log.consistency(query["first"], query["second"])
                self.answer(json.dumps(body).encode(), "application/json")
            else:
                self.send_error(404)

        def answer(self, body: bytes, kind: str) -> None:
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture
def log() -> Log:
    return Log(13)


@pytest.fixture
def url(log: Log) -> Iterator[str]:
    yield from serve(log)


async def fetch_and_verify_entry(url: str, vkey: str, index: int) -> None:
    """What a citizen's or auditor's tool does: the latest checkpoint, then a proof for it."""
    async with TellonceClient(url, None) as client:
        note = await client.checkpoint()
        checkpoint = open_checkpoint(note, vkey)
        proof = await client.inclusion_proof(index, tree_size=checkpoint.size)
        verify_entry(proof, note, vkey)


async def fetch_and_verify_growth(url: str, vkey: str, older: str) -> None:
    """What a monitor does: a checkpoint kept from before, the latest, a proof between them."""
    async with TellonceClient(url, None) as client:
        newer = await client.checkpoint()
        first = open_checkpoint(older, vkey).size
        second = open_checkpoint(newer, vkey).size
        proof = await client.consistency_proof(first, second)
        verify_checkpoints(older, newer, proof, vkey)


def refused(run: Callable[[], Any], why: str) -> None:
    started = time.monotonic()
    with pytest.raises(ProofError, match=why):
        asyncio.run(run())
    assert time.monotonic() - started < 5, "a lie was refused, but slowly"


class TestAnHonestServer:
    @pytest.mark.parametrize("size", [1, 2, 3, 7, 8, 13])
    def test_every_entry_and_every_growth_verifies(self, size: int) -> None:
        log = Log(size)
        for url in serve(log):
            for index in range(size):
                asyncio.run(fetch_and_verify_entry(url, log.vkey, index))
            for first in range(size + 1):
                asyncio.run(fetch_and_verify_growth(url, log.vkey, log.note(first)))

    def test_a_checkpoint_of_the_empty_tree_opens_and_proves_no_entry(self) -> None:
        log = Log(0)
        assert open_checkpoint(log.note(), log.vkey).size == 0
        leaf = b64(leaf_hash(canonical_entry({})))
        proof = InclusionProof(leaf_index=0, tree_size=0, leaf_hash=leaf, hashes=[], entry={})
        with pytest.raises(ProofError, match="outside the tree"):
            verify_entry(proof, log.note(), log.vkey)


def lie_inclusion(log: Log, change: Callable[[dict[str, Any]], None]) -> None:
    honest = log.inclusion_answer

    def lying(index: int, size: int) -> dict[str, Any]:
        answer = honest(index, size)
        change(answer)
        return answer

    log.inclusion = lying


INCLUSION_LIES: dict[str, tuple[Callable[[dict[str, Any]], None], str]] = {
    "an extra hash": (lambda a: a["hashes"].append(b64(bytes(32))), "too long|does not lead"),
    "a missing hash": (lambda a: a["hashes"].pop(), "does not lead"),
    "a hash of 31 bytes": (lambda a: a["hashes"].__setitem__(0, b64(bytes(31))), "31 bytes, not 32"),
    "a hash of 33 bytes": (lambda a: a["hashes"].__setitem__(1, b64(bytes(33))), "33 bytes, not 32"),
    "a hash that is not base64": (lambda a: a["hashes"].__setitem__(0, "not base64!"), "not base64"),
    "the path of another index": (lambda a: a.update(leaf_index=a["leaf_index"] + 1), "does not lead"),
    "a changed entry": (lambda a: a["entry"].update(action="write"), "does not hash"),
    "a leaf hash of another entry": (lambda a: a.update(leaf_hash=b64(bytes(32))), "does not hash"),
    "another tree size": (lambda a: a.update(tree_size=a["tree_size"] - 1), "size 12, the checkpoint 13"),
    "an index past the tree": (lambda a: a.update(leaf_index=13), "outside the tree"),
    "a negative index": (lambda a: a.update(leaf_index=-1), "outside the tree"),
    "ten thousand hashes": (lambda a: a.update(hashes=[b64(bytes(32))] * 10_000), "too long"),
}


class TestALyingServer:
    @pytest.mark.parametrize("lie", sorted(INCLUSION_LIES))
    def test_a_lying_inclusion_proof_is_refused(self, log: Log, url: str, lie: str) -> None:
        change, why = INCLUSION_LIES[lie]
        lie_inclusion(log, change)
        refused(lambda: fetch_and_verify_entry(url, log.vkey, 5), why)

    def test_another_leaf_with_its_path_claimed_at_this_index_is_refused(self, log: Log, url: str) -> None:
        honest = log.inclusion_answer
        log.inclusion = lambda _index, size: {**honest(12, size), "leaf_index": 4}
        refused(lambda: fetch_and_verify_entry(url, log.vkey, 4), "does not lead")

    @pytest.mark.parametrize(
        ("checkpoint", "why"),
        [
            ("root-not-of-the-tree", "does not lead"),
            ("absurd-size", "does not lead|too long"),
            ("beyond-63-bits", "larger than"),
            ("five-thousand-digits", "larger than"),
            ("leading-zero", "not a decimal number"),
            ("unknown-key", "no signature by"),
            ("empty-with-a-root", "size 0 has the empty tree's root"),
            ("changed-after-signing", "does not verify"),
        ],
    )
    def test_a_lying_checkpoint_is_refused(self, log: Log, url: str, checkpoint: str, why: str) -> None:
        stranger = NoteSigner(ORIGIN, Ed25519PrivateKey.generate())
        root = b64(mth(log.leaves))
        notes: dict[str, Callable[[], str]] = {
            "root-not-of-the-tree": lambda: log.note(root=hashlib.sha256(b"other").digest()),
            "absurd-size": lambda: log.note(size=2**63 - 1, root=mth(log.leaves)),
            "beyond-63-bits": lambda: log.signer.sign(f"{ORIGIN}\n{2**64}\n{root}\n"),
            "five-thousand-digits": lambda: log.signer.sign(f"{ORIGIN}\n{'9' * 5000}\n{root}\n"),
            "leading-zero": lambda: log.signer.sign(f"{ORIGIN}\n013\n{root}\n"),
            "unknown-key": lambda: log.note(signer=stranger),
            "empty-with-a-root": lambda: log.note(size=0, root=mth(log.leaves)),
            "changed-after-signing": lambda: log.note().replace("\n13\n", "\n14\n"),
        }
        log.checkpoint = notes[checkpoint]
        refused(lambda: fetch_and_verify_entry(url, log.vkey, 5), why)

    def test_an_absurd_tree_size_is_checked_in_bounded_time(self, log: Log) -> None:
        """A path for a tree of 2**63-1 leaves is at most 63 hashes long; a longer one is
        refused after 63 steps, whatever its length."""
        started = time.monotonic()
        for index in (0, 2**62, 2**63 - 2):
            with pytest.raises(ProofError):
                verify_inclusion(log.leaves[0], index, 2**63 - 1, [bytes(32)] * 100_000, bytes(32))
            with pytest.raises(ProofError):
                verify_consistency(5, 2**63 - 1, bytes(32), bytes(32), [bytes(32)] * 100_000)
        assert time.monotonic() - started < 2

    @pytest.mark.parametrize(
        ("lie", "why"),
        [
            ("valid-for-other-sizes", "does not join"),
            ("valid-for-a-smaller-second", "not between these checkpoints' sizes|does not join"),
            ("an-extra-hash", "too long|does not join"),
            ("a-missing-hash", "does not join"),
            ("empty", "is empty"),
            ("a-hash-of-the-wrong-length", "31 bytes, not 32"),
            ("rollback", "larger than the second"),
            ("fork", "equal sizes need an empty proof and equal roots"),
            ("fork-after-growth", "does not join"),
            ("absurd-size", "too long|does not join"),
            ("unknown-key", "no signature by"),
        ],
    )
    def test_a_lying_consistency_proof_is_refused(self, log: Log, url: str, lie: str, why: str) -> None:
        older = log.note(5)
        honest = log.consistency_answer
        stranger = NoteSigner(ORIGIN, Ed25519PrivateKey.generate())
        forked = [*log.leaves[:3], leaf_hash(b"rewritten"), *log.leaves[4:]]
        if lie == "valid-for-other-sizes":
            # A true proof, for 4 -> 13: served for 5 -> 13.
            log.consistency = lambda first, second: {**honest(4, second), "first": first}
        elif lie == "valid-for-a-smaller-second":
            log.consistency = lambda first, second: {**honest(first, second - 1), "second": second}
        elif lie == "an-extra-hash":
            extra = b64(bytes(32))
            log.consistency = lambda f, s: {**honest(f, s), "hashes": [*honest(f, s)["hashes"], extra]}
        elif lie == "a-missing-hash":
            log.consistency = lambda f, s: {**honest(f, s), "hashes": honest(f, s)["hashes"][:-1]}
        elif lie == "empty":
            log.consistency = lambda f, s: {**honest(f, s), "hashes": []}
        elif lie == "a-hash-of-the-wrong-length":
            short = b64(bytes(31))
            log.consistency = lambda f, s: {**honest(f, s), "hashes": [short, *honest(f, s)["hashes"]]}
        elif lie == "rollback":
            older = log.note(9)
            log.checkpoint = lambda: log.note(5)
            log.consistency = lambda f, s: {"first": f, "second": s, "hashes": []}
        elif lie == "fork":
            older = log.note(13)
            log.checkpoint = lambda: log.note(13, mth(forked))
        elif lie == "fork-after-growth":
            log.checkpoint = lambda: log.note(13, mth(forked))
        elif lie == "absurd-size":
            log.checkpoint = lambda: log.note(2**63 - 1, bytes(32))
            log.consistency = lambda f, s: {"first": f, "second": s, "hashes": [b64(bytes(32))] * 5000}
        elif lie == "unknown-key":
            log.checkpoint = lambda: log.note(signer=stranger)
        refused(lambda: fetch_and_verify_growth(url, log.vkey, older), why)

    def test_checkpoints_of_another_log_are_refused(self, log: Log) -> None:
        other = NoteSigner("other.example/log", Ed25519PrivateKey.generate())
        # The same key under two names would be two keys; here one key signs two origins.
        mixed = log.signer.sign(f"other.example/log\n13\n{b64(mth(log.leaves))}\n")
        proof = ConsistencyProof(first=5, second=13, hashes=[b64(h) for h in rfc9162.proof(5, log.leaves)])
        with pytest.raises(ProofError, match="origin is not"):
            verify_checkpoints(log.note(5), mixed, proof, log.vkey)
        with pytest.raises(ProofError, match="origin is not"):
            open_checkpoint(mixed, log.vkey)
        stranger = other.sign(f"other.example/log\n13\n{b64(bytes(32))}\n")
        with pytest.raises(ProofError, match="no signature by"):
            verify_checkpoints(log.note(5), stranger, proof, log.vkey)
