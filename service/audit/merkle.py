"""RFC 9162 Merkle trees: hashes, inclusion and consistency proofs, and their checks.

Pure: no I/O. Proof construction reads subtree hashes through a ``NodeReader`` so that a
store holding every complete subtree (by level and index) answers a proof with
O(log n) reads instead of a rebuild. A node at ``(level, index)`` covers leaves
``[index * 2**level, (index + 1) * 2**level)`` and exists once all of them do.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence

LEAF_PREFIX = b"\x00"
NODE_PREFIX = b"\x01"
EMPTY_ROOT = hashlib.sha256(b"").digest()

NodeReader = Callable[[int, int], bytes]
NodeKey = tuple[int, int]


def leaf_hash(entry: bytes) -> bytes:
    return hashlib.sha256(LEAF_PREFIX + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(NODE_PREFIX + left + right).digest()


def _largest_power_of_two_below(n: int) -> int:
    """The k of RFC 9162: the largest power of two smaller than ``n`` (n > 1)."""
    return 1 << ((n - 1).bit_length() - 1)


def subtree_hash(read: NodeReader, start: int, end: int) -> bytes:
    """MTH(D[start:end]) for a range whose start is aligned as RFC 9162's recursion keeps it."""
    size = end - start
    if size <= 0:
        return EMPTY_ROOT
    if size & (size - 1) == 0 and start % size == 0:
        return read(size.bit_length() - 1, start // size)
    k = _largest_power_of_two_below(size)
    return node_hash(subtree_hash(read, start, start + k), subtree_hash(read, start + k, end))


def root_hash(read: NodeReader, size: int) -> bytes:
    return subtree_hash(read, 0, size)


def inclusion_proof(read: NodeReader, index: int, size: int) -> list[bytes]:
    """PATH(m, D[n]) of RFC 9162 section 2.1.3.1, leaf-side first."""
    if not 0 <= index < size:
        raise ValueError("leaf index out of range")
    path: list[bytes] = []
    start, end, m = 0, size, index
    # Walk down from the root, remembering the sibling at each level; reversed at the end.
    while end - start > 1:
        k = _largest_power_of_two_below(end - start)
        if m < k:
            path.append(subtree_hash(read, start + k, end))
            end = start + k
        else:
            path.append(subtree_hash(read, start, start + k))
            start, m = start + k, m - k
    path.reverse()
    return path


def consistency_proof(read: NodeReader, first: int, second: int) -> list[bytes]:
    """PROOF(m, D[n]) of RFC 9162 section 2.1.4.1."""
    if not 0 <= first <= second:
        raise ValueError("first must not exceed second")
    if first == 0 or first == second:
        return []
    proof: list[bytes] = []
    start, end, m, complete = 0, second, first, True
    while True:
        n = end - start
        if m == n:
            if not complete:
                proof.append(subtree_hash(read, start, end))
            break
        k = _largest_power_of_two_below(n)
        if m <= k:
            proof.append(subtree_hash(read, start + k, end))
            end = start + k
        else:
            proof.append(subtree_hash(read, start, start + k))
            start, m, complete = start + k, m - k, False
    proof.reverse()
    return proof


def nodes_needed(build: Callable[[NodeReader], object]) -> set[NodeKey]:
    """The node keys a proof or root computation will read, found by a dry run.

    A store fetches exactly these in one query, then runs the computation for real.
    """
    keys: set[NodeKey] = set()

    def record(level: int, index: int) -> bytes:
        keys.add((level, index))
        return EMPTY_ROOT

    build(record)
    return keys


def verify_inclusion(leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes) -> bool:
    """RFC 9162 section 2.1.3.2."""
    if index >= size or index < 0:
        return False
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn & 1 == 0 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


def verify_consistency(
    first: int, second: int, proof: Sequence[bytes], first_root: bytes, second_root: bytes
) -> bool:
    """RFC 9162 section 2.1.4.2.

    The RFC defines proofs for 0 < first < second. At the edges: equal sizes need equal roots
    and an empty proof; a first size of 0 needs an empty proof and the empty tree's root as
    the first root (every tree extends the empty tree, and only that one has size 0).
    """
    if first < 0 or first > second:
        return False
    if first == second:
        return not proof and first_root == second_root
    if first == 0:
        return not proof and first_root == EMPTY_ROOT
    path = list(proof)
    if first & (first - 1) == 0:
        path.insert(0, first_root)
    if not path:
        return False
    fn, sn = first - 1, second - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn & 1 == 0 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return sn == 0 and fr == first_root and sr == second_root


class CompactRange:
    """The right edge of a growing tree: one complete subtree hash per set bit of its size.

    Appending a leaf returns every node that became complete, so a store can keep all
    complete subtrees; the root is the fold of the range from right to left.
    """

    def __init__(self, size: int = 0, hashes: Iterable[bytes] = ()) -> None:
        self.size = size
        # Largest subtree first, as the bits of ``size`` from high to low.
        self.hashes = list(hashes)
        if len(self.hashes) != bin(size).count("1"):
            raise ValueError("a compact range needs one hash per set bit of its size")

    @staticmethod
    def keys_for(size: int) -> list[NodeKey]:
        """The (level, index) of each subtree in the compact range of a tree of ``size``."""
        keys: list[NodeKey] = []
        start = 0
        for level in range(size.bit_length() - 1, -1, -1):
            if size >> level & 1:
                keys.append((level, start >> level))
                start += 1 << level
        return keys

    def append(self, leaf: bytes) -> list[tuple[int, int, bytes]]:
        """Add one leaf hash; return the new complete nodes as (level, index, hash)."""
        index = self.size
        created = [(0, index, leaf)]
        current, level = leaf, 0
        while index >> level & 1:
            current = node_hash(self.hashes.pop(), current)
            level += 1
            created.append((level, index >> level, current))
        self.hashes.append(current)
        self.size += 1
        return created

    def push(self, leaf: bytes) -> None:
        """``append`` without reporting the new nodes: the verifier's fast path."""
        index, current, hashes = self.size, leaf, self.hashes
        while index & 1:
            current = hashlib.sha256(NODE_PREFIX + hashes.pop() + current).digest()
            index >>= 1
        hashes.append(current)
        self.size += 1

    def extend(self, leaves: Sequence[bytes]) -> None:
        """``push`` each of ``leaves`` in order, a level at a time: the verifier's bulk path.

        At each level the row of new nodes is paired off in one pass; a row starting at an
        odd index first takes its left sibling from the range, and a row of odd length
        leaves its last node in the range at that level.
        """
        hashes, row, start = self.hashes, list(leaves), self.size
        kept: list[bytes] = []  # the range's new nodes, lowest level first
        sha256, prefix = hashlib.sha256, NODE_PREFIX
        while row:
            if start & 1:
                row.insert(0, hashes.pop())
                start -= 1
            if len(row) & 1:
                kept.append(row.pop())
            pairs = zip(row[::2], row[1::2], strict=True)
            row = [sha256(prefix + left + right).digest() for left, right in pairs]
            start >>= 1
        hashes.extend(reversed(kept))
        self.size += len(leaves)

    def followed_by(self, size: int, hashes: Sequence[bytes]) -> CompactRange:
        """The range of this tree followed by ``size`` more leaves, given as the compact
        range (``hashes``) of a tree of those leaves alone: each of its subtrees is pushed
        whole, as ``push`` pushes a leaf a level up. The new leaves must start where their
        largest subtree is aligned (this size a multiple of the largest power of two not
        above ``size``), as they do on a page of a power-of-two size that starts on a
        multiple of it; else ``ValueError``."""
        if len(hashes) != size.bit_count():
            raise ValueError("a compact range needs one hash per set bit of its size")
        if size and self.size % (1 << (size.bit_length() - 1)):
            raise ValueError(f"leaves {self.size}.. do not start on their largest subtree's boundary")
        grown = CompactRange(self.size, self.hashes)
        stack = grown.hashes
        levels = [level for level in range(size.bit_length() - 1, -1, -1) if size >> level & 1]
        for level, subtree in zip(levels, hashes, strict=True):
            index, current = grown.size >> level, subtree
            while index & 1:
                current = hashlib.sha256(NODE_PREFIX + stack.pop() + current).digest()
                index >>= 1
            stack.append(current)
            grown.size += 1 << level
        return grown

    def root(self) -> bytes:
        if not self.hashes:
            return EMPTY_ROOT
        current = self.hashes[-1]
        for left in reversed(self.hashes[:-1]):
            current = node_hash(left, current)
        return current
