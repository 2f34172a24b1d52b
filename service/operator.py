"""Who is running an operator command: ``--actor``, else ``TELLONCE_ACTOR``, else the OS user.

Every audit entry an operator command writes (policy changes, key operations, client
registration and disabling, signing-key rotation) names this actor as its client, prefixed
``operator:`` so that it can never be mistaken for an OAuth client id.
"""

from __future__ import annotations

import getpass
import os

_chosen: str | None = None


def choose(actor: str | None) -> None:
    """Set by the ``tellonce`` command's ``--actor`` option for the rest of the process."""
    global _chosen
    _chosen = actor.strip() if actor and actor.strip() else None


def current() -> str:
    return _chosen or os.environ.get("TELLONCE_ACTOR", "").strip() or getpass.getuser()


def audit_client_id() -> str:
    return f"operator:{current()}"
