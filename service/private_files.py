"""Files the service writes for its operator that hold what only they should read."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TextIO


def open_owner_only(path: Path, *, newline: str | None = None) -> TextIO:
    """``path`` opened for writing as UTF-8 text, made or emptied, readable and writable by
    its owner only (0600): a file already there keeps its mode under ``open``, so it is set
    on the open descriptor as well."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(descriptor, 0o600)
        return os.fdopen(descriptor, "w", newline=newline, encoding="utf-8")
    except BaseException:
        os.close(descriptor)
        raise
