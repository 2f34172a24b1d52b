"""Audit settings (``TELLONCE_AUDIT_*``) and the checkpoint signing key under the data dir."""

from __future__ import annotations

import base64
import binascii
import os
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from service.audit.checkpoint import NoteSigner
from service.audit.errors import SigningKeyMissing
from service.config import Settings
from service.private_files import check_owner_only, make_private_dir

SIGNING_KEY_FILE = "audit-checkpoint.key"
# What the key is called in a refusal ("the audit checkpoint key in FILE is open to ...").
SIGNING_KEY_NAME = "audit checkpoint key"


class AuditSettings(BaseSettings):
    # hide_input_in_errors: a refused witness list is not echoed (a witness URL may carry
    # a credential), as the service's and the console's settings are not.
    model_config = SettingsConfigDict(env_prefix="TELLONCE_AUDIT_", extra="ignore", hide_input_in_errors=True)

    # The checkpoint origin line, also the signing key's name: no spaces, no '+'.
    origin: str = Field(default="tellonce.example/audit", pattern=r"^[^\s+]+$")
    # Sign a checkpoint once this many entries are new, or this long after the last one.
    checkpoint_every: int = Field(default=1000, ge=1)
    checkpoint_interval_ms: int = Field(default=1000, ge=1)
    sequencer_poll_ms: int = Field(default=50, ge=1)
    sequencer_batch: int = Field(default=5000, ge=1)
    writer_max_batch: int = Field(default=2000, ge=1)
    # Witnesses (C2SP tlog-witness): whitespace-separated URL=VKEY pairs, how many must
    # cosign a checkpoint (default: all), and how long the log may go unwitnessed before
    # reads and writes that release data are refused (unset: never).
    witnesses: str = ""
    witness_quorum: int | None = Field(default=None, ge=1)
    witness_grace_seconds: float | None = Field(default=None, gt=0)
    # Re-submit the newest checkpoint this often while the log is idle, so an idle log
    # stays freshly witnessed; capped at a third of the grace period.
    witness_refresh_seconds: float = Field(default=60.0, gt=0)
    witness_timeout_seconds: float = Field(default=5.0, gt=0)
    witness_poll_ms: int = Field(default=50, ge=1)
    # Serve GET /v1/audit/checkpoint without a token (for monitors and witnesses).
    public_checkpoint: bool = False


def signing_key_path(settings: Settings) -> Path:
    return settings.data_dir / SIGNING_KEY_FILE


def create_signing_key(path: Path) -> bool:
    """Write a new Ed25519 seed (base64 of 32 raw bytes, one line, mode 0600) unless the file
    exists; True if this call wrote it. Used by ``tellonce init`` and, outside production,
    by the first process that needs the key. The data dir, if this makes it, is 0700."""
    make_private_dir(path.parent)
    seed = Ed25519PrivateKey.generate().private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    try:
        # O_EXCL: two processes starting together must not overwrite each other's key.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as handle:
        handle.write(base64.b64encode(seed) + b"\n")
    return True


def read_signing_key(path: Path) -> Ed25519PrivateKey:
    """The Ed25519 key whose seed ``path`` holds. Raises ``SharedSecretFile``, reading
    nothing, if the file is open to other accounts (``check_owner_only``, in every
    environment), and ``SigningKeyMissing`` if it cannot be read (a folder, a symlink loop)
    or does not hold a base64 32-byte seed."""
    try:
        check_owner_only(path, SIGNING_KEY_NAME)
        data = path.read_bytes()
    except OSError as exc:
        raise SigningKeyMissing(f"{path} cannot be read: {exc.strerror or type(exc).__name__}") from None
    try:
        raw = base64.b64decode(data.strip(), validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 32:
        raise SigningKeyMissing(f"{path} does not hold a base64 32-byte Ed25519 seed")
    return Ed25519PrivateKey.from_private_bytes(raw)


def load_signer(settings: Settings, origin: str) -> NoteSigner:
    """Read the Ed25519 seed (``read_signing_key``: a file open to other accounts is
    refused); development and test make one (mode 0600), production refuses.

    With ``TELLONCE_KEY_PROVIDER=pkcs11`` the key pair is in the token instead and never
    leaves it; a missing pair is made there by the same rule: development and test make
    one, production refuses (``tellonce init`` makes it, and will not replace a lost one
    unasked while the database holds checkpoints it signed)."""
    if settings.key_provider == "pkcs11":
        from pkcs11.exceptions import NoSuchKey

        from service.crypto.hsm import AUDIT_SIGNING_LABEL, TokenEd25519Key, open_token

        try:
            key = TokenEd25519Key(open_token(settings), create=settings.allows_generated_keys)
        except NoSuchKey:
            raise SigningKeyMissing(
                f"no audit checkpoint key pair {AUDIT_SIGNING_LABEL!r} in the PKCS#11 token "
                f"{settings.pkcs11_token_label!r}; production does not generate one: run `tellonce init`"
            ) from None
        return NoteSigner(origin, key)
    path = signing_key_path(settings)
    if not path.exists():
        if not settings.allows_generated_keys:
            raise SigningKeyMissing(
                f"no audit checkpoint signing key at {path}; production does not generate one: "
                "run `tellonce init`"
            )
        create_signing_key(path)
    return NoteSigner(origin, read_signing_key(path))
