"""The consent domain's refusals, each one problem type."""

from service.errors import Conflict, NotFound, ValidationFailed


class AgreementNotFound(ValidationFailed):
    title = "No such agreement"
    slug = "unknown-agreement"


class NotConsentBased(ValidationFailed):
    title = "The agreement is not consent-based"
    slug = "not-consent-based"


class NotObjectable(ValidationFailed):
    title = "The agreement cannot be objected to"
    slug = "not-objectable"


class ConsentNotFound(NotFound):
    title = "Consent not found"
    slug = "consent-not-found"


class ConsentExists(Conflict):
    title = "The citizen already holds a consent to this agreement"
    slug = "consent-exists"


class ConsentFinal(Conflict):
    title = "The consent can no longer change"
    slug = "consent-final"


class ConsentChanged(Conflict):
    title = "The consent changed while this request was made"
    slug = "consent-changed"


class ObjectionExists(Conflict):
    title = "The citizen has already objected to this agreement"
    slug = "objection-exists"


class ObjectionNotFound(NotFound):
    title = "No such objection"
    slug = "objection-not-found"
