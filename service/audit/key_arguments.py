"""Keys given on the command line: inline, or in the file a value names.

``audit verify``, ``audit check-releases`` and ``witness serve`` take a verifier key as
text or as a file holding it. A key that does not parse is refused in one line that
names the file it was read from (the problem, never the key's text).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from service.audit.checkpoint import CheckpointError
from service.policy.signing import SigningKeyError

Key = TypeVar("Key")


def read_text_file(path: Path) -> str:
    """The file's text; ``CheckpointError`` (a usage error) if it cannot be read as UTF-8."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise CheckpointError(f"cannot read {path}: not UTF-8 text") from None
    except OSError as exc:
        raise CheckpointError(f"cannot read {path}: {exc.strerror or type(exc).__name__}") from None


def parse_key_argument(value: str, parse: Callable[[str], Key]) -> Key:
    """``parse`` of a key given inline, or of the text of the file ``value`` names. A key
    read from a file that does not parse raises the parser's error (``CheckpointError``
    or ``SigningKeyError``) with the file's name in front of its message."""
    path = Path(value)
    if not path.is_file():
        return parse(value)
    text = read_text_file(path)
    try:
        return parse(text)
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    except SigningKeyError as exc:
        raise SigningKeyError(f"{path}: {exc}") from None
