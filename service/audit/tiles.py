"""C2SP tlog-tiles: tile paths, and tiles built from the stored complete subtrees.

A tile at level L, index N holds the hashes of the subtrees of height 8·L numbered
N·256 .. N·256+W-1 (W = 256 for a full tile), so every hash in it is a node the
sequencer already stored. An entry bundle holds leaves N·256 .. N·256+W-1, each as a
big-endian uint16 length and the entry's canonical bytes, so a bundle holding an entry
over 65,535 bytes cannot be written and is refused (501). Tiles are immutable: once the
tree is large enough for one, its bytes never change.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

from service.audit import repository as audit_repository
from service.audit.errors import EntryBundleUnrepresentable, TileNotFound
from service.audit.repository import Executor
from service.digits import ascii_digits, bounded_decimal

TILE_HEIGHT = 8
TILE_WIDTH = 1 << TILE_HEIGHT
MAX_ENTRY_BYTES = 0xFFFF


# Every path ``parse_tile_path`` reads, for the OpenAPI document: a level of 0 to 63 or
# "entries"; the index in 3-digit groups, all but the last prefixed x and the first not
# x000; then, for a partial tile, ".p/" and a width of 1 to 255. Without leading zeroes.
TILE_PATH_PATTERN = (
    r"^(?:entries|[0-9]|[1-5][0-9]|6[0-3])/"
    r"(?:x(?:00[1-9]|0[1-9][0-9]|[1-9][0-9]{2})/(?:x[0-9]{3}/)*)?[0-9]{3}"
    r"(?:\.p/(?:[1-9]|[1-9][0-9]|1[0-9]{2}|2[0-4][0-9]|25[0-5]))?$"
)


class TilePathInvalid(ValueError):
    """Not a tile path of the form <L>/<N>[.p/<W>] or entries/<N>[.p/<W>]."""


@dataclass(frozen=True)
class TileRequest:
    level: int | None  # None: an entry bundle
    index: int
    width: int | None  # None: a full tile

    @property
    def count(self) -> int:
        return TILE_WIDTH if self.width is None else self.width

    @property
    def first(self) -> int:
        """The index, at tree level 8·L, of the tile's first hash (or its first leaf)."""
        return self.index * TILE_WIDTH

    def leaves_needed(self) -> int:
        """The tree size the tile needs: every hash in it must cover complete subtrees."""
        level = self.level or 0
        return (self.first + self.count) << (TILE_HEIGHT * level)


def _decimal(text: str, *, low: int, high: int) -> int:
    value = bounded_decimal(text, high)
    if value is None or value < low:
        raise TilePathInvalid(
            f"a level or width is a decimal number from {low} to {high} without leading zeroes"
        )
    return value


def parse_tile_path(path: str) -> TileRequest:
    parts = path.split("/")
    if len(parts) < 2:
        raise TilePathInvalid("a tile path is <L>/<N>[.p/<W>]")
    level = None if parts[0] == "entries" else _decimal(parts[0], low=0, high=63)
    elements = parts[1:]
    width: int | None = None
    if len(elements) >= 2 and elements[-2].endswith(".p"):
        width = _decimal(elements[-1], low=1, high=TILE_WIDTH - 1)
        elements = [*elements[:-2], elements[-2][:-2]]
    index = 0
    for position, element in enumerate(elements):
        last = position == len(elements) - 1
        digits = element if last else element[1:]
        if (not last and not element.startswith("x")) or len(digits) != 3 or not ascii_digits(digits):
            raise TilePathInvalid("the index is zero-padded 3-digit elements, all but the last prefixed x")
        index = index * 1000 + int(digits)
    if len(elements) > 1 and elements[0] == "x000":
        raise TilePathInvalid("the index has a leading zero element")
    return TileRequest(level=level, index=index, width=width)


def tile_path(level: int | None, index: int, width: int | None = None) -> str:
    """The path of a tile: the inverse of ``parse_tile_path``."""
    groups = [f"{index % 1000:03d}"]
    index //= 1000
    while index:
        groups.append(f"x{index % 1000:03d}")
        index //= 1000
    path = f"{'entries' if level is None else level}/" + "/".join(reversed(groups))
    return path if width is None else f"{path}.p/{width}"


def hash_tile(hashes: Sequence[bytes]) -> bytes:
    return b"".join(hashes)


class EntryTooLong(ValueError):
    """An entry longer than the 65,535 bytes an entry bundle's uint16 length prefix allows."""

    def __init__(self, position: int, length: int) -> None:
        super().__init__(f"entry {position} of the bundle is {length} bytes, over {MAX_ENTRY_BYTES}")
        self.position = position
        self.length = length


def entry_bundle(entries: Sequence[bytes]) -> bytes:
    out = bytearray()
    for position, entry in enumerate(entries):
        if len(entry) > MAX_ENTRY_BYTES:
            raise EntryTooLong(position, len(entry))
        out += struct.pack(">H", len(entry)) + entry
    return bytes(out)


async def read_tile(db: Executor, request: TileRequest) -> bytes:
    """The tile's bytes, or ``TileNotFound`` while the tree is too small for it."""
    size = await audit_repository.tree_size(db)
    if request.leaves_needed() > size:
        raise TileNotFound(f"The tree has {size} leaves; this tile needs {request.leaves_needed()}.")
    if request.level is None:
        entries = await audit_repository.canonical_range(db, request.first, request.count)
        if len(entries) != request.count:
            raise TileNotFound("Entries of this bundle are missing from the log.")
        try:
            return entry_bundle([entry.encode() for entry in entries])
        except EntryTooLong as exc:
            raise EntryBundleUnrepresentable(
                f"Leaf {request.first + exc.position} is {exc.length} bytes; a C2SP tlog-tiles entry "
                f"bundle holds entries of at most {MAX_ENTRY_BYTES} bytes, so this bundle cannot be "
                "served (501: the leaves exist, but not in a form this format can carry). Read the "
                "entry with its inclusion proof from /v1/audit/entries/{index}/proof instead."
            ) from None
    hashes = await audit_repository.node_range(db, TILE_HEIGHT * request.level, request.first, request.count)
    if len(hashes) != request.count:
        raise TileNotFound("Hashes of this tile are missing from the log.")
    return hash_tile(hashes)
