"""Files that hold what only their owner should read: those the service writes for its
operator, and the secrets it reads from files (the root key, the PKCS#11 PIN, the audit
checkpoint key, the access-token signing keys, owner and witness keys)."""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path
from typing import TextIO


class SharedSecretFile(Exception):
    """A file holding a secret grants some access to its group or to other accounts. The
    message is the one-line remedy; ``secret`` says what the file holds ("root key")."""

    def __init__(self, path: Path, secret: str, mode: int) -> None:
        super().__init__(
            f"the {secret} in {path} is open to other accounts (mode {mode:o}): "
            f"run chmod 600 {path}, and replace the {secret} if anyone else may have read it"
        )
        self.path = path
        self.secret = secret


def check_owner_only(path: Path, secret: str) -> None:
    """Fail closed on a file holding ``secret`` (the root key, a token PIN, the audit
    checkpoint key, an access-token signing key, an owner or witness key) that another
    account may read or replace: a secret others could read is no longer secret. Raises
    ``SharedSecretFile`` with the one-line remedy (and ``OSError`` if the file cannot be
    looked at). The file is left as it is, so the exposure is seen and the secret replaced,
    not quietly tightened."""
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise SharedSecretFile(path, secret, mode)


def make_private_dir(path: Path) -> None:
    """Create the folder ``path`` readable by its owner only (0700) if it is missing; its
    missing parents are made as ``mkdir -p`` makes them. A folder already there keeps its
    mode: the secret files in it are held to ``check_owner_only`` one by one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o700)


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
