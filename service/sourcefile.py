"""YAML files whose errors point at a line.

Policy and catalog files are written by people, so every problem is reported as
``FILE:LINE: message``. The loader walks PyYAML's node tree and remembers the line of
every mapping key and sequence item, keyed by the same path tuple that pydantic uses
in an error's ``loc``.

A scalar YAML recognises but cannot build (an unquoted ``2027-13-01`` is a timestamp in
month 13) is a problem on its line. A reader that judges the document's parts on their own
(the policy loader) may keep going past it: the value is then left in place as an
``Unreadable``, which no typed schema accepts, so only the part holding it is refused.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from pydantic_core import ErrorDetails

PathKey = tuple[str | int, ...]

# Policy and catalog files are small; a larger file is refused before it is parsed.
MAX_SOURCE_BYTES = 1024 * 1024
# Nor are they deep (an agreement's condition sits at about six levels): deeper nesting is
# refused before it is built, since PyYAML's composer, like the walk below, recurses once
# per level, and a few thousand ``[`` would exhaust Python's stack.
MAX_DEPTH = 64


@dataclass(frozen=True, order=True)
class SourceError:
    """One problem in one file, on one line (1-based; 0 when no line applies)."""

    file: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.message}"


@dataclass(frozen=True)
class Unreadable:
    """Where a scalar YAML could not build stood: its text as written, and why not."""

    text: str
    problem: str


@dataclass
class SourceDocument:
    """A parsed YAML document with the line of every path in it. ``unreadable``: the path of
    each value left as an ``Unreadable`` (or, for a mapping key, of its mapping), with its
    problem; only a document read with ``keep_unreadable`` has any."""

    file: str
    data: Any
    lines: dict[PathKey, int] = field(default_factory=dict)
    unreadable: list[tuple[PathKey, SourceError]] = field(default_factory=list)

    def line_of(self, loc: Sequence[str | int]) -> int:
        """The line of the deepest known prefix of ``loc``."""
        path: PathKey = tuple(loc)
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return self.lines.get((), 1)

    def error(self, loc: Sequence[str | int], message: str) -> SourceError:
        return SourceError(self.file, self.line_of(loc), message)

    def pydantic_errors(self, exc: ValidationError, prefix: PathKey = ()) -> list[SourceError]:
        return self.schema_errors(exc.errors(include_url=False), prefix)

    def schema_errors(self, items: Iterable[ErrorDetails], prefix: PathKey = ()) -> list[SourceError]:
        """Each schema refusal at its line, as ``path.to.part: pydantic's message``; the
        refusal of an ``Unreadable`` is left out (its own problem says more)."""
        errors = []
        for item in items:
            if isinstance(item.get("input"), Unreadable):
                continue
            loc = tuple(item["loc"])
            where = ".".join(str(part) for part in (*prefix, *loc)) or "document"
            errors.append(self.error((*prefix, *loc), f"{where}: {item['msg']}"))
        return errors


class SourceFileError(Exception):
    """Raised with every problem found; ``errors`` is never empty."""

    def __init__(self, errors: Iterable[SourceError]) -> None:
        self.errors = sorted(errors)
        super().__init__("\n".join(str(e) for e in self.errors))


def _scan(text: str, file: str) -> None:
    """Refuse, before anything is built, what building would make dangerous. Anchors and
    aliases (``&a``, ``*a``): an alias is expanded wherever it appears, so nested aliases
    grow exponentially (a "billion laughs" bomb), and policy files have no need of them.
    Nesting deeper than ``MAX_DEPTH``. The scan is one linear pass of the parser's events,
    which keeps no stack of Python calls."""
    problems: list[SourceError] = []
    depth = 0
    try:
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            line = event.start_mark.line + 1 if event.start_mark is not None else 1
            if isinstance(event, yaml.CollectionStartEvent):
                depth += 1
                if depth > MAX_DEPTH:
                    problems.append(SourceError(file, line, f"nested deeper than {MAX_DEPTH} levels"))
                    break
            elif isinstance(event, yaml.CollectionEndEvent):
                depth -= 1
            anchor = getattr(event, "anchor", None)
            if anchor is None:
                continue
            kind = "alias" if isinstance(event, yaml.AliasEvent) else "anchor"
            problems.append(
                SourceError(
                    file, line, f"YAML anchors and aliases (&, *) are not supported (found {kind} {anchor!r})"
                )
            )
    except yaml.MarkedYAMLError:
        pass  # reported, with its line, by the parse that follows
    except yaml.YAMLError as exc:
        raise SourceFileError([_unreadable_text(text, file, exc)]) from None
    if problems:
        raise SourceFileError(problems)


def _unreadable_text(text: str, file: str, exc: yaml.YAMLError) -> SourceError:
    """A character YAML does not allow in a document (a control character such as U+0007,
    U+FFFF), which PyYAML's reader refuses before it parses: the problem on its line, the
    character named by its code point only."""
    if isinstance(exc, yaml.reader.ReaderError):
        line = text.count("\n", 0, exc.position) + 1
        return SourceError(file, line, f"invalid YAML: character #x{exc.character:04x} is not allowed")
    return SourceError(file, 1, f"invalid YAML: {exc}")


def parse_yaml(text: str, file: str, *, keep_unreadable: bool = False) -> SourceDocument:
    """Parse one YAML document, refusing duplicate keys, merge keys, anchors and aliases,
    and text over ``MAX_SOURCE_BYTES``. A value YAML cannot build is refused too, unless
    ``keep_unreadable``: it is then left in place as an ``Unreadable`` and listed in the
    document's ``unreadable``, for the caller to report."""
    if len(text.encode("utf-8")) > MAX_SOURCE_BYTES:
        raise SourceFileError([SourceError(file, 1, f"file is larger than {MAX_SOURCE_BYTES} bytes")])
    _scan(text, file)
    loader = yaml.SafeLoader(text)
    try:
        try:
            node = loader.get_single_node()
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line = mark.line + 1 if mark is not None else 1
            raise SourceFileError([SourceError(file, line, f"invalid YAML: {exc.problem}")]) from None
        except yaml.YAMLError as exc:
            raise SourceFileError([SourceError(file, 1, f"invalid YAML: {exc}")]) from None
        document = SourceDocument(file=file, data=None)
        if node is None:
            return document
        problems: list[SourceError] = []
        document.data = _walk(loader, node, (), document, problems)
        if problems or (document.unreadable and not keep_unreadable):
            raise SourceFileError([*problems, *(error for _path, error in document.unreadable)])
        return document
    finally:
        loader.dispose()


def read_source_text(path: Path) -> str:
    """The text of ``path``; ``SourceFileError`` if it is over ``MAX_SOURCE_BYTES``, cannot
    be read (a folder, a symlink loop) or is not UTF-8."""
    try:
        if path.stat().st_size > MAX_SOURCE_BYTES:
            raise SourceFileError(
                [SourceError(str(path), 1, f"file is larger than {MAX_SOURCE_BYTES} bytes")]
            )
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SourceFileError([SourceError(str(path), 0, f"cannot read file: {exc}")]) from None


def read_yaml(path: Path, *, keep_unreadable: bool = False) -> SourceDocument:
    """``path`` (read by ``read_source_text``) parsed as ``parse_yaml`` parses text."""
    return parse_yaml(read_source_text(path), str(path), keep_unreadable=keep_unreadable)


def _walk(
    loader: yaml.SafeLoader,
    node: yaml.Node,
    path: PathKey,
    document: SourceDocument,
    problems: list[SourceError],
) -> Any:
    lines, file = document.lines, document.file
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        mapping: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            line = key_node.start_mark.line + 1
            if key_node.tag == "tag:yaml.org,2002:merge":
                problems.append(SourceError(file, line, "YAML merge keys (<<) are not supported"))
                continue
            if not isinstance(key_node, yaml.ScalarNode):
                problems.append(SourceError(file, line, "mapping keys must be plain scalars"))
                continue
            key = _construct(loader, key_node, path, document)
            if isinstance(key, Unreadable):
                continue
            if not isinstance(key, str | int):
                key = str(key)
            if key in mapping:
                problems.append(SourceError(file, line, f"duplicate key {key!r}"))
                continue
            lines[(*path, key)] = line
            mapping[key] = _walk(loader, value_node, (*path, key), document, problems)
        return mapping
    if isinstance(node, yaml.SequenceNode):
        return [
            _walk(loader, item, (*path, index), document, problems) for index, item in enumerate(node.value)
        ]
    return _construct(loader, node, path, document)


def _construct(loader: yaml.SafeLoader, node: yaml.Node, path: PathKey, document: SourceDocument) -> Any:
    """The value of a scalar node at ``path``; a value YAML recognises but cannot build (a
    date that does not exist such as 2027-02-30, ``!!int abc``, a tag the safe loader does
    not know) is an ``Unreadable``, its problem recorded on its line in the document's
    ``unreadable``, not an exception that would end the load without one."""
    try:
        return loader.construct_object(node, deep=True)
    except (yaml.YAMLError, ValueError, TypeError, OverflowError) as exc:
        problem = exc.problem if isinstance(exc, yaml.MarkedYAMLError) else str(exc)
        text = node.value if isinstance(node.value, str) else ""
        line = node.start_mark.line + 1
        document.unreadable.append((path, SourceError(document.file, line, f"invalid value: {problem}")))
        return Unreadable(text, str(problem))
