"""The access-token signing keys: ES256 keys in ``$TELLONCE_DATA_DIR/signing-keys``.

The folder (0700 when this makes it) holds one PEM file per key (mode 0600) and
``manifest.json``, which names the active key and when each key was created and retired.
A PEM file other accounts may read or write is refused wherever it is read
(``check_owner_only``), in every environment. Rotation makes a new key
active and stamps the old one retired; a retired key stays in the JWKS until every
token it signed has expired. Every process (each uvicorn worker, the CLI) reads the
folder itself, and re-reads it when the manifest changes, so a rotation done by the
CLI reaches running servers without a restart. Creation and rotation hold an
exclusive ``flock`` so that workers starting together make one key, not several.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from joserfc.errors import JoseError
from joserfc.jwk import ECKey

from service.auth.errors import SigningKeysUnusable
from service.db import utcnow
from service.private_files import SharedSecretFile, check_owner_only, make_private_dir

logger = logging.getLogger("tellonce.auth")

ALGORITHM = "ES256"
MANIFEST = "manifest.json"
# What a key is called in a refusal ("the access-token signing key in FILE is open to ...").
KEY_NAME = "access-token signing key"


class SigningKeyMissing(RuntimeError):
    """Production found no signing key and may not make one."""


class SigningKeyCorrupt(RuntimeError):
    """A signing-key file (the manifest or a PEM file it names) is there but cannot be
    parsed. The message names the file and the remedy, never its content."""

    def __init__(self, path: Path, what: str) -> None:
        super().__init__(
            f"the {what} in {path} cannot be parsed: restore the {path.parent} folder from a backup"
        )
        self.path = path


@dataclass(frozen=True)
class KeyEntry:
    kid: str
    created_at: datetime
    retired_at: datetime | None


def _key_folder(data_dir: Path) -> Path:
    return data_dir / "signing-keys"


def manifest_path(data_dir: Path) -> Path:
    """The file whose presence means the signing keys exist."""
    return _key_folder(data_dir) / MANIFEST


def check_key_files(data_dir: Path) -> None:
    """Refuse (``SharedSecretFile``) if any private key file in the folder is open to
    other accounts: what ``serve``, ``worker`` and ``init`` check before they start."""
    folder = _key_folder(data_dir)
    for path in sorted(folder.glob("*.pem")):
        check_owner_only(path, KEY_NAME)


def _read_private_pem(path: Path) -> bytes:
    check_owner_only(path, KEY_NAME)
    return path.read_bytes()


def _import_key(folder: Path, kid: str) -> ECKey:
    """The private key ``kid`` from its PEM file. Raises ``SigningKeyCorrupt`` if it is not
    a P-256 private key (``ES256`` signs with nothing else)."""
    path = folder / f"{kid}.pem"
    pem = _read_private_pem(path)
    try:
        key = ECKey.import_key(pem, parameters={"kid": kid, "alg": ALGORITHM, "use": "sig"})
    except (ValueError, JoseError):
        # ValueError: not a key (cryptography); JoseError: a key, but not an EC one.
        raise SigningKeyCorrupt(path, KEY_NAME) from None
    if not key.is_private or key.curve_name != "P-256":
        raise SigningKeyCorrupt(path, KEY_NAME)
    return key


@contextmanager
def _locked(folder: Path) -> Iterator[None]:
    # The data dir and the key folder are made 0700 (a folder already there is left as it is).
    make_private_dir(folder.parent)
    make_private_dir(folder)
    with (folder / ".lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _write_private(path: Path, content: bytes) -> None:
    # Created 0600 from the start: the key is never readable by others, not even briefly.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(content)


def _read_manifest(folder: Path) -> tuple[str, list[KeyEntry]] | None:
    """The active kid and every key's entry, or None if there is no manifest. Raises
    ``SigningKeyCorrupt`` if it is not the JSON ``_write_manifest`` writes."""
    path = folder / MANIFEST
    if not path.exists():
        return None
    try:
        # ValueError: not UTF-8 or not JSON, or a time fromisoformat refuses; KeyError: a
        # member missing; TypeError: a member of the wrong type; RecursionError: JSON
        # nested past the parser's stack.
        raw = json.loads(path.read_text())
        entries = [
            KeyEntry(
                kid=_text(item["kid"]),
                created_at=_aware(datetime.fromisoformat(item["created_at"])),
                retired_at=_aware(datetime.fromisoformat(item["retired_at"]))
                if item.get("retired_at")
                else None,
            )
            for item in raw["keys"]
        ]
        active = _text(raw["active"])
        if active not in {entry.kid for entry in entries}:
            raise KeyError(active)
    except (ValueError, KeyError, TypeError, RecursionError):
        raise SigningKeyCorrupt(path, "access-token signing-key manifest") from None
    return active, entries


def _text(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise TypeError("not a non-empty string")
    return value


def _aware(value: datetime) -> datetime:
    # A time without its offset cannot be compared with ``utcnow()``.
    if value.tzinfo is None:
        raise ValueError("no UTC offset")
    return value


def _write_manifest(folder: Path, active: str, entries: list[KeyEntry]) -> None:
    document: dict[str, Any] = {
        "active": active,
        "keys": [
            {
                "kid": e.kid,
                "created_at": e.created_at.isoformat(),
                "retired_at": e.retired_at.isoformat() if e.retired_at else None,
            }
            for e in entries
        ],
    }
    temporary = folder / f".{MANIFEST}.{secrets.token_hex(4)}"
    temporary.write_text(json.dumps(document, indent=2))
    # Atomic: a reader sees the old manifest or the new one, never half of one.
    temporary.replace(folder / MANIFEST)


def _new_key(folder: Path) -> KeyEntry:
    kid = utcnow().strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(4)
    key = ECKey.generate_key("P-256", parameters={"kid": kid, "alg": ALGORITHM, "use": "sig"}, private=True)
    _write_private(folder / f"{kid}.pem", key.as_pem(private=True))
    return KeyEntry(kid=kid, created_at=utcnow(), retired_at=None)


def ensure_signing_key(data_dir: Path, *, may_generate: bool) -> None:
    """Make the first key if there is none and this environment may generate keys."""
    folder = _key_folder(data_dir)
    if (folder / MANIFEST).exists():
        return
    if not may_generate:
        raise SigningKeyMissing(
            f"no access-token signing key in {folder}; production does not generate one. "
            "Create it with `tellonce init`."
        )
    with _locked(folder):
        if (folder / MANIFEST).exists():
            return
        entry = _new_key(folder)
        _write_manifest(folder, entry.kid, [entry])


def rotate_signing_key(data_dir: Path) -> str:
    """Make a new active key; the previous active key is stamped retired now.

    Raises ``SharedSecretFile``, changing nothing, if a key file already there is open to
    other accounts: ``serve`` and ``worker`` refuse such a folder (``check_key_files``), so
    a rotation must not leave one behind. The file is not quietly tightened either; the
    refusal names it and says ``chmod 600``, and to replace the key (rotate again) if
    anyone else may have read it."""
    folder = _key_folder(data_dir)
    with _locked(folder):
        check_key_files(data_dir)
        current = _read_manifest(folder)
        entries = [] if current is None else current[1]
        now = utcnow()
        entries = [e if e.retired_at else KeyEntry(e.kid, e.created_at, now) for e in entries]
        entry = _new_key(folder)
        entries.append(entry)
        _write_manifest(folder, entry.kid, entries)
        return entry.kid


@contextmanager
def _served(folder: Path) -> Iterator[None]:
    """Re-read key files for a request of a running server. A key file open to other
    accounts (``SharedSecretFile``), missing or unreadable (``OSError``,
    ``SigningKeyMissing``), or a manifest or key file that cannot be parsed
    (``SigningKeyCorrupt``) is the operator's key setup failing closed: the request is
    refused with ``SigningKeysUnusable`` (503), logged with the path, until it is fixed."""
    try:
        yield
    except SharedSecretFile as exc:
        # The message names the file and the remedy (``chmod 600``), never the key.
        logger.error("refusing to serve: %s", exc)
        raise SigningKeysUnusable(
            "An access-token signing key file is open to other accounts, so the service will not "
            "use it until the operator fixes its permissions."
        ) from None
    except (OSError, SigningKeyMissing) as exc:
        path = exc.filename if isinstance(exc, OSError) and exc.filename else folder
        logger.error("refusing to serve: cannot read the %s in %s (%s)", KEY_NAME, path, type(exc).__name__)
        raise SigningKeysUnusable(
            "An access-token signing key file is missing or cannot be read; the operator must restore it."
        ) from None
    except SigningKeyCorrupt as exc:
        # The message names the file and that it cannot be parsed, never what it holds.
        logger.error("refusing to serve: %s", exc)
        raise SigningKeysUnusable(
            "An access-token signing key file or its manifest cannot be parsed; the operator must restore it."
        ) from None


class SigningKeys:
    """The keys one process signs and verifies with, re-read when the manifest changes.

    At startup a key file open to other accounts raises ``SharedSecretFile`` (a missing one
    ``SigningKeyMissing`` or ``OSError``, one that cannot be parsed ``SigningKeyCorrupt``),
    which the command reports; what a request
    re-reads later (``refresh``, ``verification_key``, ``jwks``, ``evidence_jwks``) is
    refused as ``SigningKeysUnusable`` (503) instead (``_served``)."""

    def __init__(self, data_dir: Path, token_ttl_seconds: int) -> None:
        self.folder = _key_folder(data_dir)
        self.token_ttl = timedelta(seconds=token_ttl_seconds)
        self._mtime_ns = -1
        self._active: ECKey | None = None
        self._by_kid: dict[str, ECKey] = {}
        self._retired_at: dict[str, datetime] = {}
        self._reload()

    def refresh(self) -> bool:
        """Re-read the folder if the manifest changed; True if it did. Raises
        ``SigningKeysUnusable`` if a key file is open to other accounts, missing,
        unreadable or cannot be parsed."""
        with _served(self.folder):
            return self._reload()

    def _reload(self) -> bool:
        try:
            mtime = (self.folder / MANIFEST).stat().st_mtime_ns
        except FileNotFoundError:
            raise SigningKeyMissing(f"no access-token signing key in {self.folder}") from None
        if mtime == self._mtime_ns:
            return False
        manifest = _read_manifest(self.folder)
        if manifest is None:  # pragma: no cover - removed between stat and read
            raise SigningKeyMissing(f"no access-token signing key in {self.folder}")
        active, entries = manifest
        by_kid: dict[str, ECKey] = {}
        retired_at: dict[str, datetime] = {}
        for entry in entries:
            if entry.kid != active and entry.retired_at is not None:
                if not self._still_verifies(entry.retired_at):
                    continue
                retired_at[entry.kid] = entry.retired_at
            by_kid[entry.kid] = _import_key(self.folder, entry.kid)
        self._by_kid = by_kid
        self._retired_at = retired_at
        self._active = by_kid[active]
        self._mtime_ns = mtime
        return True

    def _still_verifies(self, retired_at: datetime) -> bool:
        # A retired key still verifies the tokens it signed until they have all expired.
        # The margin covers clock skew between the signer and the verifier.
        return retired_at > utcnow() - self.token_ttl - timedelta(seconds=60)

    def _usable(self) -> list[ECKey]:
        return [
            key
            for kid, key in self._by_kid.items()
            if kid not in self._retired_at or self._still_verifies(self._retired_at[kid])
        ]

    @property
    def active(self) -> ECKey:
        assert self._active is not None  # noqa: S101 - set by refresh() in __init__
        return self._active

    @property
    def active_kid(self) -> str:
        return str(self.active.kid)

    def verification_key(self, kid: str) -> ECKey | None:
        if kid not in self._by_kid:
            # Perhaps another process rotated: one stat() tells, and only a change re-reads.
            self.refresh()
        key = self._by_kid.get(kid)
        if key is None or (kid in self._retired_at and not self._still_verifies(self._retired_at[kid])):
            return None
        return key

    def jwks(self) -> dict[str, Any]:
        """The public keys, as ``/.well-known/jwks.json`` serves them."""
        self.refresh()
        return {"keys": [key.as_dict(private=False) for key in self._usable()]}

    def evidence_jwks(self) -> dict[str, Any]:
        """Every public key this service has signed with, retired ones included, as
        ``/.well-known/evidence-keys.json`` serves them: a consent artefact is kept as
        evidence for years, long after its key stopped verifying access tokens. Public
        halves only, read from the folder on each call (rare), never dropped. Raises
        ``SigningKeysUnusable`` as ``refresh`` does."""
        with _served(self.folder):
            manifest = _read_manifest(self.folder)
            if manifest is None:
                raise SigningKeyMissing(f"no access-token signing key in {self.folder}")
            _active, entries = manifest
            keys = [_import_key(self.folder, entry.kid).as_dict(private=False) for entry in entries]
        return {"keys": keys}
