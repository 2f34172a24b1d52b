"""Who is running an operator command: ``--actor``, else ``TELLONCE_ACTOR``, else the OS user.

Every audit entry an operator command writes (policy changes, key operations, client
registration and disabling, signing-key rotation) names this actor as its client, prefixed
``operator:`` so that it can never be mistaken for an OAuth client id.
"""

from __future__ import annotations

import getpass
import os

_chosen: str | None = None

PREFIX = "operator:"
# The audit entries' client column holds 200 characters, the prefix included.
MAX_ACTOR_LENGTH = 200 - len(PREFIX)


def refusal(actor: str) -> str | None:
    """Why ``actor`` cannot name an operator in the audit log, or None if it can: at most
    ``MAX_ACTOR_LENGTH`` characters (a longer one failed the audit insert on PostgreSQL,
    after the command had begun), printable ones only (it is shown on terminals)."""
    if len(actor) > MAX_ACTOR_LENGTH:
        return f"the actor is at most {MAX_ACTOR_LENGTH} characters"
    if not actor.isprintable():
        return "the actor has a control character"
    return None


def choose(actor: str | None) -> None:
    """Set by the ``tellonce`` command's ``--actor`` option for the rest of the process
    (already checked with ``refusal``)."""
    global _chosen
    _chosen = actor.strip() if actor and actor.strip() else None


def current() -> str:
    return _chosen or os.environ.get("TELLONCE_ACTOR", "").strip() or getpass.getuser()


def audit_client_id() -> str:
    return f"{PREFIX}{current()}"
