"""Merkle proofs against an independent verifier written from RFC 9162 (``tests.fixtures.rfc9162``)."""

from __future__ import annotations

import hashlib

from hypothesis import given, settings
from hypothesis import strategies as st

from service.audit import merkle
from tests.fixtures import rfc9162


def _mth(data: list[bytes]) -> bytes:
    """MTH(D[n]) of the entries ``data``, by the RFC's definition (``tests.fixtures.rfc9162``)."""
    return rfc9162.mth([rfc9162.leaf_hash(item) for item in data])


def rfc_verify_consistency(
    first: int, second: int, first_hash: bytes, second_hash: bytes, proof: list[bytes]
) -> bool:
    """Section 2.1.4.2, step by step (``tests.fixtures.rfc9162``)."""
    return rfc9162.verify_consistency(first, second, proof, first_hash, second_hash)


# --- The tree under test, built the way the sequencer builds it.


def _build(n: int) -> tuple[list[bytes], merkle.NodeReader, merkle.CompactRange]:
    data = [f"entry-{i}".encode() for i in range(n)]
    compact = merkle.CompactRange()
    nodes: dict[merkle.NodeKey, bytes] = {}
    for item in data:
        for level, index, digest in compact.append(merkle.leaf_hash(item)):
            nodes[(level, index)] = digest
    return data, (lambda level, index: nodes[(level, index)]), compact


def _flip(digest: bytes) -> bytes:
    return bytes([digest[0] ^ 1]) + digest[1:]


class TestTreeHash:
    @given(st.integers(min_value=0, max_value=300))
    @settings(max_examples=60, deadline=None)
    def test_root_matches_the_definition(self, n: int) -> None:
        data, read, compact = _build(n)
        assert merkle.root_hash(read, n) == _mth(data) == compact.root()

    def test_hash_prefixes(self) -> None:
        assert merkle.leaf_hash(b"x") == hashlib.sha256(b"\x00x").digest()
        assert merkle.node_hash(b"a", b"b") == hashlib.sha256(b"\x01ab").digest()


class TestInclusionProof:
    @given(st.data(), st.integers(min_value=1, max_value=300))
    @settings(max_examples=80, deadline=None)
    def test_every_proof_verifies_and_altered_proofs_fail(self, data: st.DataObject, n: int) -> None:
        leaves, read, _compact = _build(n)
        root = _mth(leaves)
        index = data.draw(st.integers(min_value=0, max_value=n - 1))
        size = data.draw(st.integers(min_value=index + 1, max_value=n))
        sub_root = _mth(leaves[:size])
        proof = merkle.inclusion_proof(read, index, size)
        leaf = rfc9162.leaf_hash(leaves[index])
        assert rfc9162.verify_inclusion(index, size, leaf, proof, sub_root)
        assert merkle.verify_inclusion(leaf, index, size, proof, sub_root)
        assert size < n or sub_root == root
        # Altered: a flipped hash, a dropped hash, an extra hash, another leaf, another index.
        if proof:
            which = data.draw(st.integers(min_value=0, max_value=len(proof) - 1))
            bad = [*proof]
            bad[which] = _flip(bad[which])
            assert not rfc9162.verify_inclusion(index, size, leaf, bad, sub_root)
            assert not rfc9162.verify_inclusion(index, size, leaf, proof[:-1], sub_root)
        assert not rfc9162.verify_inclusion(index, size, leaf, [*proof, leaf], sub_root)
        assert not rfc9162.verify_inclusion(index, size, _flip(leaf), proof, sub_root)
        if size > 1:
            other = (index + 1) % size
            assert not rfc9162.verify_inclusion(other, size, leaf, proof, sub_root)

    def test_out_of_range_index_is_refused(self) -> None:
        _leaves, read, _compact = _build(4)
        for index in (-1, 4):
            try:
                merkle.inclusion_proof(read, index, 4)
            except ValueError:
                continue
            raise AssertionError("an out-of-range index made a proof")


class TestConsistencyProof:
    @given(st.data(), st.integers(min_value=2, max_value=300))
    @settings(max_examples=80, deadline=None)
    def test_every_proof_verifies_and_altered_proofs_fail(self, data: st.DataObject, n: int) -> None:
        leaves, read, _compact = _build(n)
        first = data.draw(st.integers(min_value=1, max_value=n - 1))
        second = data.draw(st.integers(min_value=first + 1, max_value=n))
        first_root, second_root = _mth(leaves[:first]), _mth(leaves[:second])
        proof = merkle.consistency_proof(read, first, second)
        assert rfc_verify_consistency(first, second, first_root, second_root, proof)
        assert merkle.verify_consistency(first, second, proof, first_root, second_root)
        if proof:
            which = data.draw(st.integers(min_value=0, max_value=len(proof) - 1))
            bad = [*proof]
            bad[which] = _flip(bad[which])
            assert not rfc_verify_consistency(first, second, first_root, second_root, bad)
            assert not merkle.verify_consistency(first, second, bad, first_root, second_root)
        assert not rfc_verify_consistency(first, second, _flip(first_root), second_root, proof)
        assert not rfc_verify_consistency(first, second, first_root, _flip(second_root), proof)

    def test_exhaustive_small_trees(self) -> None:
        leaves, read, _compact = _build(40)
        for second in range(1, 41):
            for first in range(1, second):
                proof = merkle.consistency_proof(read, first, second)
                assert rfc_verify_consistency(
                    first, second, _mth(leaves[:first]), _mth(leaves[:second]), proof
                )

    def test_trivial_sizes(self) -> None:
        _leaves, read, compact = _build(5)
        assert merkle.consistency_proof(read, 0, 5) == []
        assert merkle.consistency_proof(read, 5, 5) == []
        assert merkle.verify_consistency(5, 5, [], compact.root(), compact.root())

    def test_from_the_empty_tree_needs_the_empty_root(self) -> None:
        _leaves, _read, compact = _build(5)
        assert merkle.verify_consistency(0, 5, [], merkle.EMPTY_ROOT, compact.root())
        assert not merkle.verify_consistency(0, 5, [], compact.root(), compact.root())
        assert not merkle.verify_consistency(0, 5, [merkle.EMPTY_ROOT], merkle.EMPTY_ROOT, compact.root())
        assert not merkle.verify_consistency(3, 2, [], compact.root(), compact.root())


class TestNodesNeeded:
    def test_a_proof_reads_logarithmically_many_nodes(self) -> None:
        _leaves, read, _compact = _build(300)
        keys = merkle.nodes_needed(lambda r: merkle.inclusion_proof(r, 123, 300))
        # Sizes up to 512 have at most 9 levels; the ragged right edge adds a few more.
        assert len(keys) <= 2 * 9
        assert merkle.inclusion_proof(lambda lv, ix: read(lv, ix), 123, 300)
