"""YAML files whose errors point at a line.

Policy and catalog files are written by people, so every problem is reported as
``FILE:LINE: message``. The loader walks PyYAML's node tree and remembers the line of
every mapping key and sequence item, keyed by the same path tuple that pydantic uses
in an error's ``loc``.
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


@dataclass(frozen=True, order=True)
class SourceError:
    """One problem in one file, on one line (1-based; 0 when no line applies)."""

    file: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.message}"


@dataclass
class SourceDocument:
    """A parsed YAML document with the line of every path in it."""

    file: str
    data: Any
    lines: dict[PathKey, int] = field(default_factory=dict)

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
        """Each schema refusal at its line, as ``path.to.part: pydantic's message``."""
        errors = []
        for item in items:
            loc = tuple(item["loc"])
            where = ".".join(str(part) for part in (*prefix, *loc)) or "document"
            errors.append(self.error((*prefix, *loc), f"{where}: {item['msg']}"))
        return errors


class SourceFileError(Exception):
    """Raised with every problem found; ``errors`` is never empty."""

    def __init__(self, errors: Iterable[SourceError]) -> None:
        self.errors = sorted(errors)
        super().__init__("\n".join(str(e) for e in self.errors))


def _refuse_anchors(text: str, file: str) -> None:
    """Anchors and aliases (``&a``, ``*a``) are refused before anything is built: an alias
    is expanded wherever it appears, so nested aliases grow exponentially (a "billion
    laughs" bomb), and policy files have no need of them. The scan is one linear pass."""
    problems: list[SourceError] = []
    try:
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            anchor = getattr(event, "anchor", None)
            if anchor is None:
                continue
            kind = "alias" if isinstance(event, yaml.AliasEvent) else "anchor"
            line = event.start_mark.line + 1 if event.start_mark is not None else 1
            problems.append(
                SourceError(
                    file, line, f"YAML anchors and aliases (&, *) are not supported (found {kind} {anchor!r})"
                )
            )
    except yaml.YAMLError:
        return  # reported, with its line, by the parse that follows
    if problems:
        raise SourceFileError(problems)


def parse_yaml(text: str, file: str) -> SourceDocument:
    """Parse one YAML document, refusing duplicate keys, merge keys, anchors and aliases,
    and text over ``MAX_SOURCE_BYTES``."""
    if len(text.encode("utf-8")) > MAX_SOURCE_BYTES:
        raise SourceFileError([SourceError(file, 1, f"file is larger than {MAX_SOURCE_BYTES} bytes")])
    _refuse_anchors(text, file)
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
        document.data = _walk(loader, node, (), document.lines, problems, file)
        if problems:
            raise SourceFileError(problems)
        return document
    finally:
        loader.dispose()


def read_yaml(path: Path) -> SourceDocument:
    try:
        if path.stat().st_size > MAX_SOURCE_BYTES:
            raise SourceFileError(
                [SourceError(str(path), 1, f"file is larger than {MAX_SOURCE_BYTES} bytes")]
            )
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SourceFileError([SourceError(str(path), 0, f"cannot read file: {exc}")]) from None
    return parse_yaml(text, str(path))


def _walk(
    loader: yaml.SafeLoader,
    node: yaml.Node,
    path: PathKey,
    lines: dict[PathKey, int],
    problems: list[SourceError],
    file: str,
) -> Any:
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
            key = _construct(loader, key_node, problems, file)
            if key is _UNREADABLE:
                continue
            if not isinstance(key, str | int):
                key = str(key)
            if key in mapping:
                problems.append(SourceError(file, line, f"duplicate key {key!r}"))
                continue
            lines[(*path, key)] = line
            mapping[key] = _walk(loader, value_node, (*path, key), lines, problems, file)
        return mapping
    if isinstance(node, yaml.SequenceNode):
        return [
            _walk(loader, item, (*path, index), lines, problems, file)
            for index, item in enumerate(node.value)
        ]
    value = _construct(loader, node, problems, file)
    return None if value is _UNREADABLE else value


# What ``_construct`` returns for a scalar it could not build (its problem is recorded).
_UNREADABLE = object()


def _construct(loader: yaml.SafeLoader, node: yaml.Node, problems: list[SourceError], file: str) -> Any:
    """The value of a scalar node; a value YAML recognises but cannot build (a date that
    does not exist such as 2027-02-30, ``!!int abc``, a tag the safe loader does not know)
    is a problem on its line, not an exception that would end the load without one."""
    try:
        return loader.construct_object(node, deep=True)
    except (yaml.YAMLError, ValueError, TypeError, OverflowError) as exc:
        problem = exc.problem if isinstance(exc, yaml.MarkedYAMLError) else str(exc)
        problems.append(SourceError(file, node.start_mark.line + 1, f"invalid value: {problem}"))
        return _UNREADABLE
