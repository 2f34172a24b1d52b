from service.errors import Forbidden, Gone, NotFound, PreconditionFailed, ValidationFailed


class CitizenNotFound(NotFound):
    title = "Citizen not found"
    slug = "citizen-not-found"


class CitizenErased(Gone):
    title = "Citizen record erased"
    slug = "citizen-erased"


class NotPermitted(Forbidden):
    title = "Not permitted by any agreement"
    slug = "not-permitted"


class ConsentRequired(Forbidden):
    """Nothing released because the agreements that would release it need the citizen's
    active consent, and there is none."""

    title = "The citizen's consent is required"
    slug = "consent-required"


class StaleVersion(PreconditionFailed):
    title = "The record changed since you read it"
    slug = "stale-version"


class InvalidFieldValue(ValidationFailed):
    title = "Invalid field value"
    slug = "invalid-field-value"
