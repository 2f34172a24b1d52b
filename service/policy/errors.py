from service.errors import Conflict, Forbidden, NotFound, PreconditionFailed, PreconditionRequired


class AgreementNotFound(NotFound):
    title = "Agreement not found"
    slug = "agreement-not-found"


class AgreementExists(Conflict):
    title = "Agreement already exists"
    slug = "agreement-exists"


class AgreementRevoked(Conflict):
    title = "Agreement already revoked"
    slug = "agreement-revoked"


class NotFieldOwner(Forbidden):
    title = "Not the owner of these fields"
    slug = "not-field-owner"


class StaleAgreement(PreconditionFailed):
    title = "Agreement changed since it was read"
    slug = "stale-agreement"


class AgreementVersionRequired(PreconditionRequired):
    title = "If-Match required"
    slug = "if-match-required"
