"""The files ``tellonce import`` reads: CSV with a header row, or JSON Lines.

``scan`` reads a file once before anything is written: its SHA-256 (the file's identity
for ``--resume``), its columns (the CSV header, or every key any JSON line uses), how many
rows it holds, and whether it is UTF-8. ``rows`` then yields each row with its line number.

A CSV cell is text; it becomes the JSON value the API would receive by its field's
catalog type: an integer field's cell is read as a decimal integer and a boolean field's
``true`` or ``false`` as a boolean (anything else stays text, which the catalog
validation then refuses by type). An empty cell means "no value" and is left out, as
the API has no way to write null. A JSON line is passed on as it is.

A file cut short (a truncated copy) never imports half a value: a CSV file that ends
inside a quoted cell refuses the row that opens it, and a JSON line cut short is not
valid JSON, refused as such.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import re
import stat
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import orjson

from service.catalog.schemas import Catalog
from service.errors import KEY_END, repeated_json_key

ImportFormat = Literal["csv", "jsonl"]

_CHUNK = 1 << 20
# The readers hold a whole line at once: a longer one (far past any row the catalog's
# limits let through) stops the import while the file is scanned, before it is read whole.
MAX_LINE_CHARACTERS = 64 << 20
_INTEGER = re.compile(r"[+-]?[0-9]+")
# An integer field's values are within +-(2**53 - 1), at most 16 digits (records.values).
_INTEGER_LIMIT = 2**53
_MAX_INTEGER_DIGITS = 16
# Cells longer than any field's limit are refused by validation; the csv module's own
# limit (128 KiB) would otherwise stop the whole file at one oversized cell.
csv.field_size_limit(1 << 24)


class ImportFileError(Exception):
    """The file cannot be imported at all (not UTF-8, no header): nothing is written.
    The message names the problem and never a value from the file."""


@dataclass(frozen=True)
class ScannedFile:
    sha256: str
    columns: tuple[str, ...]
    rows: int


@dataclass(frozen=True)
class SourceRow:
    """One row: its first line in the file, and its values (absent: no value), or the
    reason it could not be read at all."""

    line: int
    values: Mapping[str, Any]
    unreadable: str | None = None


def scan(path: Path, file_format: ImportFormat) -> ScannedFile:
    """Hash the file, check it is UTF-8, and read its columns and row count."""
    if not stat.S_ISREG(path.stat().st_mode):
        # A pipe's rows would be gone by the second reading (or it would wait for a writer).
        raise ImportFileError("the file is not a regular file (a pipe?): it is read more than once")
    sha256 = check_line_lengths(path, file_format)
    if file_format == "csv":
        columns, count = _csv_shape(path)
    else:
        columns, count = _jsonl_shape(path)
    return ScannedFile(sha256, columns, count)


def check_line_lengths(path: Path, file_format: ImportFormat) -> str:
    """The file's SHA-256, once it is read in chunks and found UTF-8 with no line longer
    than ``MAX_LINE_CHARACTERS``; ``ImportFileError`` otherwise. Lines end as the format's
    reader ends them: at a line feed in JSON Lines, at CR, LF or CRLF in CSV."""
    digest = hashlib.sha256()
    # CSV: CR and CRLF become LF, a CR at a chunk's end held back until the next is seen.
    decoder = io.IncrementalNewlineDecoder(
        codecs.getincrementaldecoder("utf-8")(), translate=file_format == "csv"
    )
    offset = 0
    line, length = 1, 0
    with path.open("rb") as handle:
        while True:
            chunk = handle.read(_CHUNK)
            try:
                text = decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as exc:
                if not chunk:
                    raise ImportFileError("the file is not UTF-8 (it ends inside a character)") from None
                raise ImportFileError(f"the file is not UTF-8 (byte {offset + exc.start})") from None
            first_end = text.find("\n")
            if length + (len(text) if first_end < 0 else first_end) > MAX_LINE_CHARACTERS:
                raise ImportFileError(
                    f"line {line} of the file is longer than {MAX_LINE_CHARACTERS:,} characters "
                    f"({MAX_LINE_CHARACTERS >> 20} Mi); no row can be that long"
                )
            if first_end < 0:
                length += len(text)
            else:
                # A line begun and ended inside the chunk is shorter than a chunk, so than
                # the limit: only the line running on from the chunk before is counted.
                line += text.count("\n")
                length = len(text) - text.rfind("\n") - 1
            if not chunk:
                return digest.hexdigest()
            digest.update(chunk)
            offset += len(chunk)


def _csv_shape(path: Path) -> tuple[tuple[str, ...], int]:
    with path.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle)
        try:
            header = next(reader, None)
            if not header:
                raise ImportFileError("the CSV file has no header row")
            count = sum(1 for record in reader if any(record))
        except csv.Error as exc:
            # The reader's message names the rule (a cell over the limit), never the cell.
            raise ImportFileError(f"the CSV file cannot be read at line {reader.line_num}: {exc}") from None
    return tuple(name.strip() for name in header), count


def _jsonl_shape(path: Path) -> tuple[tuple[str, ...], int]:
    keys: set[str] = set()
    shapes: set[frozenset[str]] = set()
    count = 0
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, 1):
            line = _without_bom(number, raw)
            if not line.strip():
                continue
            count += 1
            try:
                parsed = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue  # refused as a row, with its line number, when it is reached
            if isinstance(parsed, dict):
                shape = frozenset(parsed)
                if shape not in shapes:
                    shapes.add(shape)
                    keys.update(shape)
    return tuple(sorted(keys)), count


def rows(
    path: Path, file_format: ImportFormat, catalog: Catalog, *, after_line: int = 0
) -> Iterator[SourceRow]:
    """Every row after ``after_line``, with the line it starts on."""
    if file_format == "csv":
        yield from _csv_rows(path, catalog, after_line)
    else:
        yield from _jsonl_rows(path, after_line)


class _Lines:
    """A file's lines for the CSV reader, noting when they run out. A record the reader
    hands back after that ended with the file, not a line: it is inside a quoted cell
    the file never closes (the reader, not being strict, keeps the half it read)."""

    def __init__(self, handle: Iterator[str]) -> None:
        self.handle = handle
        self.ended = False

    def __iter__(self) -> Iterator[str]:
        yield from self.handle
        self.ended = True


def _csv_rows(path: Path, catalog: Catalog, after_line: int) -> Iterator[SourceRow]:
    with path.open(encoding="utf-8-sig", newline="") as handle:
        lines = _Lines(handle)
        reader = csv.reader(lines)
        header = [name.strip() for name in next(reader)]
        types = [spec.type if (spec := catalog.field(name)) else "string" for name in header]
        width = len(header)
        line = reader.line_num + 1
        for record in reader:
            first, line = line, reader.line_num + 1
            if first <= after_line or not any(record):
                continue
            if lines.ended:
                # A truncated copy: the cell's value is half written. Never imported.
                # The rest of the file is in that cell: the lines it swallowed are named.
                span = f" (lines {first} to {reader.line_num})" if reader.line_num > first else ""
                yield SourceRow(
                    first, {}, f"the file ends inside a quoted cell this row opens{span}: is it cut short?"
                )
                continue
            if len(record) != width:
                cells = f"{len(record)} cell" if len(record) == 1 else f"{len(record)} cells"
                yield SourceRow(first, {}, f"the row has {cells}; the header has {width}")
                continue
            yield SourceRow(
                first,
                {
                    name: _typed(kind, cell)
                    for name, kind, cell in zip(header, types, record, strict=True)
                    if cell != ""
                },
            )


def _typed(kind: str, cell: str) -> Any:
    """A CSV cell as the JSON value of its field's type, where it reads as one."""
    if kind == "integer" and _INTEGER.fullmatch(cell):  # "$" would let a final line break in
        if len(cell.lstrip("+-").lstrip("0")) > _MAX_INTEGER_DIGITS:
            # No integer in range has more digits, and int() refuses thousands of them
            # (Python's conversion limit): the nearest value out of range, refused as such.
            return -_INTEGER_LIMIT if cell.startswith("-") else _INTEGER_LIMIT
        return int(cell)
    if kind == "boolean" and cell in ("true", "false"):
        return cell == "true"
    return cell


def _jsonl_rows(path: Path, after_line: int) -> Iterator[SourceRow]:
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, 1):
            line = _without_bom(number, raw)
            if number <= after_line or not line.strip():
                continue
            try:
                parsed = orjson.loads(line)
            except orjson.JSONDecodeError:
                yield SourceRow(number, {}, "the line is not valid JSON")
                continue
            if not isinstance(parsed, dict):
                yield SourceRow(number, {}, "the line is not a JSON object")
                continue
            if len(KEY_END.findall(line)) > len(parsed) and repeated_json_key(line) is not None:
                # The parser keeps the last value: which one was meant is not for us to guess.
                yield SourceRow(number, {}, "the line names a column more than once")
                continue
            yield SourceRow(number, parsed)


def _without_bom(number: int, line: bytes) -> bytes:
    """The line without the byte order mark a file may start with, as the CSV reader's
    ``utf-8-sig`` drops it."""
    return line.removeprefix(codecs.BOM_UTF8) if number == 1 else line
