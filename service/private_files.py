"""Files that hold what only their owner should read: those the service writes for its
operator, and the secrets it reads from files (the root key, the PKCS#11 PIN, the audit
checkpoint key, the access-token signing keys, owner and witness keys)."""

from __future__ import annotations

import contextlib
import errno
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


def _not_a_folder(path: Path) -> NotADirectoryError:
    return NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(path))


def make_private_dir(path: Path) -> None:
    """Create the folder ``path`` readable by its owner only (0700) if it is missing; its
    missing parents are made as ``mkdir -p`` makes them. A folder already there keeps its
    mode: the secret files in it are held to ``check_owner_only`` one by one. Something
    other than a folder at ``path`` or one of its parents is ``NotADirectoryError`` naming it."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except FileExistsError as exc:  # a parent is there, and is not a folder
        raise _not_a_folder(Path(exc.filename or path.parent)) from None
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o700)
    if not path.is_dir():
        raise _not_a_folder(path)


def check_usable_dir(path: Path, *, write: bool) -> None:
    """Raise the ``OSError`` that using the folder ``path`` would meet, making nothing: its
    nearest part already there is not a folder (``NotADirectoryError``), or this account
    cannot read and enter it, or write in it when ``write`` or when ``path`` is still to be
    made there (``PermissionError``)."""
    there = path
    while not there.exists() and there != there.parent:
        there = there.parent
    if not there.is_dir():
        raise _not_a_folder(there)
    needed = os.R_OK | os.X_OK | (os.W_OK if write or there != path else 0)
    if not os.access(there, needed):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(there))


def os_refusal(exc: OSError) -> str:
    """``PATH: reason`` for an OS call that failed on a file or folder (its first path)."""
    reason = exc.strerror or type(exc).__name__
    return f"{exc.filename}: {reason}" if exc.filename else reason


def open_owner_only(path: Path, *, newline: str | None = None, follow_symlinks: bool = True) -> TextIO:
    """``path`` opened for writing as UTF-8 text, made or emptied, readable and writable by
    its owner only (0600): a file already there keeps its mode under ``open``, so it is set
    on the open descriptor as well. Without ``follow_symlinks``, a symbolic link at
    ``path`` is ``OSError`` (ELOOP) and its target is left as it is."""
    descriptor = _owner_only_descriptor(path, os.O_TRUNC | (0 if follow_symlinks else os.O_NOFOLLOW))
    try:
        return os.fdopen(descriptor, "w", newline=newline, encoding="utf-8")
    except BaseException:
        os.close(descriptor)
        raise


def append_owner_only(path: Path) -> int:
    """A descriptor of ``path`` opened for appending, made if missing, readable and
    writable by its owner only (0600), as ``open_owner_only`` makes it; the caller closes it."""
    return _owner_only_descriptor(path, os.O_APPEND)


def _owner_only_descriptor(path: Path, flags: int) -> int:
    # Made 0600 (the umask can only take from that), and set on the descriptor for a file
    # already there, which ``os.open`` leaves with its mode.
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | flags, 0o600)
    try:
        os.fchmod(descriptor, 0o600)
    except BaseException:
        os.close(descriptor)
        raise
    return descriptor
