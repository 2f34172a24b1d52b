"""Plain-language sentences for a citizen's access log, and dates the GOV.UK way.

"On 3 March 2026, the Department for Work and Pensions read your address for the
purpose of deciding eligibility for a benefit." Department and purpose names come from
the catalog; catalog purposes are written as gerunds ("Deciding eligibility for a
benefit"), which is why "for the purpose of" reads naturally before them.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime

from service.catalog.schemas import Catalog
from service.console.views import AccessProof

# Names that read as a body ("the Home Office") take the article; "HM Passport Office",
# "Welfare" or "Licensing" read better without it.
_BODY_WORDS = ("office", "department", "agency", "council", "service", "portal", "authority", "ministry")
_FIELD_WORDS = {"national_id": "national identity number"}


def long_date(value: date | datetime) -> str:
    """``3 March 2026``: no leading zero, month in full."""
    return f"{value.day} {value:%B %Y}"


def short_date_time(value: datetime) -> str:
    """``3 Mar 2026, 14:05 UTC`` for tables."""
    return f"{value.day} {value:%b %Y, %H:%M} UTC"


def department_phrase(catalog: Catalog | None, department_id: str) -> str:
    department = catalog.department(department_id) if catalog else None
    name = department.name if department else department_id
    lowered = name.lower()
    if lowered.startswith(("the ", "hm ", "his majesty", "her majesty")):
        return name
    if any(word in lowered.split() for word in _BODY_WORDS):
        return f"the {name}"
    return name


def field_phrase(name: str) -> str:
    if name in _FIELD_WORDS:
        return _FIELD_WORDS[name]
    return name.replace("_", " ")


def join_words(words: Sequence[str]) -> str:
    if not words:
        return ""
    if len(words) == 1:
        return words[0]
    return ", ".join(words[:-1]) + " and " + words[-1]


def purpose_phrase(catalog: Catalog | None, purpose_id: str | None) -> str:
    if not purpose_id:
        return ""
    purpose = catalog.purpose(purpose_id) if catalog else None
    name = purpose.name if purpose else purpose_id.replace("-", " ")
    return name[:1].lower() + name[1:]


def _your(fields: Sequence[str]) -> str:
    names = [field_phrase(f) for f in fields]
    return "your " + join_words(names) if names else "your record"


def access_sentence(
    catalog: Catalog | None,
    *,
    when: datetime,
    department: str,
    action: str,
    fields: Sequence[str],
    purpose: str | None,
    decision: str,
    disclosed_at: datetime | None = None,
    disclosed_by: str | None = None,
) -> str:
    """One line of the citizen view, e.g. 'On 3 March 2026, the Home Office read your address …'.
    An access kept from the citizen during an investigation says when it was disclosed."""
    who = department_phrase(catalog, department)
    what = _your(fields)
    refused = decision in ("deny", "error")
    verbs = {
        "read": ("read", "asked to read"),
        "batch-get": ("read", "asked to read"),
        "history": ("read earlier versions of", "asked to read earlier versions of"),
        "lookup": ("looked up your record using", "tried to look up your record using"),
        "verify": ("checked a fact about", "asked to check a fact about"),
        "write": ("updated", "tried to update"),
        "register": ("registered", "tried to register"),
        "erase": ("erased", "tried to erase"),
        "subscribe": ("asked to be told of changes to", "asked to be told of changes to"),
        "deliver": ("was told of a change to", "was not told of a change to"),
        "feed": ("was told of a change to", "was not told of a change to"),
    }
    done, attempted = verbs.get(action, (action, f"tried to {action}"))
    verb = attempted if refused else done
    if action in ("register", "erase"):
        what = "your record"
    sentence = f"On {long_date(when)}, {who} {verb} {what}"
    reason = purpose_phrase(catalog, purpose)
    if reason:
        sentence += f" for the purpose of {reason}"
    if refused:
        sentence += ". It was refused: no agreement allowed it"
    elif decision == "partial":
        sentence += ". Only what an agreement allowed was shared"
    if action == "verify" and not refused:
        sentence += ". The value itself was not shown to them"
    if disclosed_at is not None:
        sentence += ". This was kept from you during an investigation"
        if disclosed_by == "case-closed":
            sentence += f" and disclosed when the investigation closed on {long_date(disclosed_at)}"
        else:
            sentence += (
                f" and disclosed on {long_date(disclosed_at)}, when the longest time it could be kept "
                "from you had passed"
            )
    return sentence + "."


def proof_sentence(proof: AccessProof) -> str:
    """How the citizen view's lines were proven, in plain words."""
    if proof.problem is not None:
        return f"These lines could NOT be proven to be in the audit log: {proof.problem}."
    if proof.tree_size is None or proof.verified == 0:
        return "No checkpoint of the audit log covers these lines yet, so they cannot be proven yet."
    if proof.witnesses:
        signed = (
            f"cosigned by the witnesses {join_words(list(proof.witnesses))}, who each keep their own "
            "record of the log and never cosign a rewritten one"
        )
        keys = "the log's and the witnesses' public keys"
    else:
        signed = "signed by this service (no independent witnesses are configured)"
        keys = "the log's public key"
    total = proof.verified + proof.pending
    if proof.pending:
        which = f"{proof.verified} of these {total} lines {'is' if proof.verified == 1 else 'are'}"
    elif total == 1:
        which = "This line is"
    else:
        which = f"Each of these {total} lines is"
    sentence = (
        f"{which} proven to be in the audit log: its inclusion proof was checked against the "
        f"checkpoint of {proof.tree_size} entries {signed}. This service checked every proof and "
        f"signature with the same code an outside verifier uses, and anyone with {keys} can check "
        "them again."
    )
    if proof.pending == 1:
        sentence += " The newest line is proven once a later checkpoint covers it."
    elif proof.pending:
        sentence += f" The {proof.pending} newest lines are proven once a later checkpoint covers them."
    return sentence
